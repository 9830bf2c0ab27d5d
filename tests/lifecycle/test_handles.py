"""Saved handles are untrusted input: the state directory must be this user's alone, and a
handle file is read only if it is a small regular file of ours whose every field checks
out. Anything else is a prompt, typed error naming the file — never a hang, a crash or a
token sent somewhere else."""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytest

from commandlab_async import SandboxNotFoundError, UnsupportedOperationError, connect
from commandlab_async._admin.handles import Handle, load, load_all, save, target_of
from commandlab_async.platforms.docker import socket_dirs

pytestmark = pytest.mark.unit

NAME = "commandlab-0123456789ab"
PEM = "-----BEGIN CERTIFICATE-----\n" + "QUJD" * 40 + "\n-----END CERTIFICATE-----\n"


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A state directory of this test's (not yet made) and a runtime directory."""
    monkeypatch.setenv("COMMANDLAB_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("COMMANDLAB_RUNTIME_DIR", str(tmp_path / "run"))
    return tmp_path / "state"


def a_handle(name: str = NAME) -> Handle:
    socket = socket_dirs.base_dir() / "0123abcd" / f"{name}.sock"
    return Handle(
        name=name,
        platform="docker",
        url=f"unix:{socket}",
        expires_at=4102444800.0,
        labels={"commandlab.detached": "true"},
        token=secrets.token_urlsafe(32),
    )


def within(call: Callable[[], Any], seconds: float = 10.0) -> Any:
    """What ``call()`` returns or raises, from a daemon thread: a call that blocks (on a
    FIFO, say) fails the test instead of hanging it."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:
            outcome.append(exc)

    threading.Thread(target=run, daemon=True).start()
    for _ in range(int(seconds * 100)):
        if outcome:
            return outcome[0]
        time.sleep(0.01)
    pytest.fail(f"still blocked after {seconds:g}s")


def refused(name: str, *words: str) -> SandboxNotFoundError:
    """load(name) fails at once with a SandboxNotFoundError saying ``words``."""
    error = within(lambda: load(name))
    assert isinstance(error, SandboxNotFoundError), f"{name}: {error!r}"
    for word in words:
        assert word in str(error), (name, str(error))
    return error


def test_a_saved_handle_is_private_and_reads_back(state: Path) -> None:
    handle = a_handle()
    path = save(handle)
    assert path == state / "sandboxes" / f"{NAME}.json"
    assert load(NAME) == handle
    assert (path.stat().st_mode & 0o777, path.parent.stat().st_mode & 0o777) == (0o600, 0o700)
    assert state.stat().st_mode & 0o777 == 0o700
    assert os.listdir(path.parent) == [path.name]  # no temporary file left behind
    assert load_all() == [handle]
    for url in ("http://127.0.0.1:32769", "https://example.com/api/v1/x:8000/proxy"):
        other = replace(a_handle("commandlab-tcp"), url=url, expires_at=None)
        save(other)
        assert load(other.name) == other


def test_what_is_not_a_regular_file_of_ours_is_refused_at_once(state: Path, tmp_path: Path) -> None:
    save(a_handle())
    directory = state / "sandboxes"
    # A FIFO hung exec and ls forever (nothing ever writes to it).
    os.mkfifo(directory / "fifo.json")
    refused("fifo", str(directory / "fifo.json"), "a FIFO")
    # A link is not followed: not to a device, not to a handle kept elsewhere.
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps(asdict(a_handle("linked"))))
    (directory / "linked.json").symlink_to(elsewhere)
    refused("linked", str(directory / "linked.json"), "symbolic link")
    (directory / "zero.json").symlink_to("/dev/zero")
    refused("zero", str(directory / "zero.json"), "symbolic link")
    # Bigger than any handle: refused unread.
    big = asdict(a_handle("big"))
    big["labels"] = {"padding": "x" * 100_000}
    (directory / "big.json").write_text(json.dumps(big))
    refused("big", str(directory / "big.json"), "more than")
    # One that others may have written.
    (directory / "open.json").write_text(json.dumps(asdict(a_handle("open"))))
    (directory / "open.json").chmod(0o666)
    refused("open", str(directory / "open.json"), "writable by other users")
    if os.getuid() == 0:  # only root can give a file away
        (directory / "theirs.json").write_text(json.dumps(asdict(a_handle("theirs"))))
        os.chown(directory / "theirs.json", 4242, 4242)
        refused("theirs", str(directory / "theirs.json"), "uid 4242")


def _malformed() -> list[Any]:
    """(case, what it does to a good handle's JSON object, what the error says)."""

    def setting(key: str, value: Any) -> Callable[[dict[str, Any]], Any]:
        return lambda obj: {**obj, key: value}

    def cloud(changes: dict[str, Any]) -> Callable[[dict[str, Any]], Any]:
        """An ACI handle, as saved, with ``changes``."""
        scope = {"subscription_id": "s", "resource_group": "g", "region": "r"}
        aci = {"platform": "azure-aci", "url": "https://127.0.0.1:1", "scope": scope}
        return lambda obj: {**obj, **aci, "pin": PEM, **changes}

    def socket(path: Callable[[Path], str]) -> Callable[[dict[str, Any]], Any]:
        """A unix: URL to ``path(this user's runtime directory)``."""
        return lambda obj: {**obj, "url": f"unix:{path(socket_dirs.base_dir())}"}

    cases = [
        ("not-json", lambda obj: b"{not json", "not JSON"),
        ("a-list", lambda obj: [], "not a JSON object"),
        ("null", lambda obj: None, "not a JSON object"),
        ("nested", lambda obj: b"[" * 200_000 + b"]" * 200_000, "more than"),
        ("deep", lambda obj: b"[" * 30_000 + b"]" * 30_000, "not JSON"),
        ("no-token", lambda obj: {k: v for k, v in obj.items() if k != "token"}, "lacks token"),
        ("extra", setting("proxy", "http://evil"), "does not: proxy"),
        ("other-name", setting("name", "commandlab-ffffffffffff"), "another sandbox"),
        ("platform", setting("platform", "docker-swarm"), "no known platform"),
        ("url-number", setting("url", 5), "not a string"),
        ("url-ftp", setting("url", "ftp://127.0.0.1/"), "scheme"),
        ("url-engine", setting("url", "unix:/var/run/docker.sock"), "outside"),
        ("url-dotdot", socket(lambda base: f"{base}/../docker.sock"), "outside"),
        ("url-base", socket(str), "outside"),
        ("url-relative", setting("url", "unix:run/x.sock"), "outside"),
        ("url-userinfo", setting("url", "http://user:pw@127.0.0.1:8000"), "credentials"),
        ("url-port", setting("url", "http://127.0.0.1:99999"), "does not parse"),
        ("url-newline", setting("url", "http://127.0.0.1:1/\r\nX: y"), "not printable"),
        ("expires", setting("expires_at", "soon"), "expires_at"),
        ("expires-nan", setting("expires_at", float("nan")), "expires_at"),
        ("saved-bool", setting("saved_at", True), "saved_at"),
        ("labels-list", setting("labels", ["a"]), "labels"),
        ("labels-int", setting("labels", {"a": 1}), "labels"),
        ("token-header", setting("token", "a" * 43 + "\r\nX-Evil: 1"), "token"),
        ("token-short", setting("token", "abc"), "token"),
        ("token-number", setting("token", 12345), "token"),
        ("scope-list", setting("scope", ["region"]), "scope that is not a map"),
        ("scope-field", setting("scope", {"proxy": "http://evil"}), "does not take: 'proxy'"),
        ("scope-int", setting("scope", {"host": 5}), "scope field host"),
        ("scope-newline", setting("scope", {"host": "unix:///x\n"}), "not printable"),
        ("scope-required", cloud({"scope": {"region": "r"}}), "without subscription_id"),
        ("pin-text", cloud({"pin": "not a certificate"}), "not one PEM certificate"),
        ("pin-key", cloud({"pin": PEM.replace("CERTIFICATE", "PRIVATE KEY")}), "PEM"),
        ("pin-http", cloud({"pin": PEM, "url": "http://127.0.0.1:1"}), "not https"),
    ]
    return [pytest.param(*case, id=case[0]) for case in cases]


@pytest.mark.parametrize(("case", "change", "words"), _malformed())
def test_a_malformed_handle_is_a_typed_error_naming_the_file(
    state: Path, case: str, change: Callable[[dict[str, Any]], Any], words: str
) -> None:
    save(a_handle())  # the directory, as a real one
    name = f"commandlab-{case}"
    good = asdict(a_handle(name))
    bad = change(good)
    path = state / "sandboxes" / f"{name}.json"
    path.write_bytes(bad if isinstance(bad, bytes) else json.dumps(bad).encode())
    path.chmod(0o600)
    error = refused(name, str(path), words)
    assert good["token"] not in str(error)
    assert [h.name for h in within(load_all)] == [NAME]  # the good one still loads


def test_a_state_directory_others_can_write_is_not_trusted(state: Path, tmp_path: Path) -> None:
    handle = a_handle()
    # Another user planted a handle (its URL, their own) in a directory open to them.
    (state / "sandboxes").mkdir(parents=True)
    planted = state / "sandboxes" / f"{NAME}.json"
    planted.write_text(json.dumps(asdict(handle)))
    planted.chmod(0o600)
    for directory in (state, state / "sandboxes"):
        directory.chmod(0o777)
        refused(NAME, str(directory), "writable by other users")
        assert load_all() == []
        with pytest.raises(PermissionError, match="writable by other users"):
            save(a_handle())  # nor is anything written there
        assert json.loads(planted.read_text()) == asdict(handle)
        directory.chmod(0o700)
    assert load(NAME) == handle
    # A state directory that is a link is not followed, whoever made it.
    private = tmp_path / "private"
    state.rename(private)
    state.symlink_to(private)
    refused(NAME, str(state), "symbolic link")
    with pytest.raises(PermissionError, match="symbolic link"):
        save(a_handle())


def test_a_planted_temporary_file_never_receives_the_token(state: Path, tmp_path: Path) -> None:
    save(a_handle())
    directory = state / "sandboxes"
    target = tmp_path / "stolen"
    target.write_text("")
    # Where a save used to write before renaming: a name anyone could predict.
    (directory / f"{NAME}.{os.getpid()}.tmp").symlink_to(target)
    handle = a_handle()
    save(handle)
    assert target.read_text() == ""
    assert load(NAME) == handle


def test_a_cloud_handle_reads_back_with_its_scope_and_pin(state: Path) -> None:
    scope = {"subscription_id": "s", "resource_group": "g", "region": "r"}
    handle = replace(
        a_handle(), platform="azure-aci", url="https://127.0.0.1:1", scope=scope, pin=PEM
    )
    save(handle)
    assert load(NAME) == handle


def test_a_handle_saved_before_scopes_still_loads_and_reaches_docker(state: Path) -> None:
    old = {k: v for k, v in asdict(a_handle()).items() if k not in ("scope", "pin", "kept")}
    save(a_handle())  # the directory, as a real one
    path = state / "sandboxes" / f"{NAME}.json"
    path.write_text(json.dumps(old))
    loaded = load(NAME)
    assert (loaded.scope, loaded.pin, loaded.url) == (None, None, old["url"])
    assert str(target_of(loaded)) == "docker"


async def test_an_old_handle_off_local_docker_says_it_cannot_be_reached(state: Path) -> None:
    save(replace(a_handle(), platform="aws-ecs", url="http://127.0.0.1:1"))
    with pytest.raises(UnsupportedOperationError, match="saved by an older commandlab"):
        async with connect(NAME):
            pass
