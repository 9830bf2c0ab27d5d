"""Another user to run a command (or do file work) as: only a root daemon can switch."""

from __future__ import annotations

import os

from .errors import RequestError
from .protocol import BAD_REQUEST, NO_SUCH_USER, USER_UNSUPPORTED, decimal


class RunAs:
    """Another user to run a command as (only a root daemon can switch)."""

    def __init__(self, name: str, uid: int, gid: int, groups: list[int], home: str) -> None:
        self.name = name
        self.uid = uid
        self.gid = gid
        self.groups = groups
        self.home = home


def resolve_user(value: object) -> RunAs | None:
    """The user ``value`` names; None when it is the daemon's own user (or not given)."""
    if value is None:
        return None
    import pwd  # lazy

    uid: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        uid = value
    elif isinstance(value, str) and decimal(value) is not None:
        uid = decimal(value)
    elif not isinstance(value, str) or not value:
        raise RequestError(BAD_REQUEST, "'user' must be a user name or uid")
    if uid == os.geteuid():
        return None
    try:
        entry = pwd.getpwuid(uid) if uid is not None else pwd.getpwnam(str(value))
    except (KeyError, OverflowError, ValueError):  # ValueError: a NUL in the name
        if uid is None or not 0 <= uid < 2**32:
            raise RequestError(NO_SUCH_USER, f"no such user in the sandbox: {value}") from None
        entry = None
    if entry is not None and entry.pw_uid == os.geteuid():
        return None
    if os.geteuid() != 0:
        raise RequestError(
            USER_UNSUPPORTED,
            f"cannot run as {value}: the daemon runs as uid {os.geteuid()}, not root"
            " (create the sandbox with run_as_root=True to switch users)",
        )
    if entry is None:  # a bare uid with no account: its own group, no home
        assert uid is not None
        return RunAs(str(uid), uid, uid, [], "/")
    import grp  # lazy

    groups = [g.gr_gid for g in grp.getgrall() if entry.pw_name in g.gr_mem]
    return RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir)
