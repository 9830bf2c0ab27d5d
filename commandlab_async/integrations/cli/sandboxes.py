"""``commandlab up / ls / rm / gc``: sandboxes on their backends."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from ... import (
    PLATFORMS,
    KubernetesPlatform,
    Reaped,
    SandboxInfo,
    SandboxNotFoundError,
    Spec,
    SpecError,
    Target,
    gc,
    labelled,
    list_sandboxes,
    provision_many,
    remove,
    spec_for,
    target_for,
)

__all__ = ["SCOPE_FLAGS", "gc_command", "ls", "rm", "targets", "up"]

# Scope flags -> the target field each names.
SCOPE_FLAGS = {
    "region": "region",
    "cluster": "cluster",
    "namespace": "namespace",
    "resource_group": "resource_group",
    "project": "project_id",
    "subscription": "subscription_id",
}


def _scope(args: argparse.Namespace) -> dict[str, str]:
    return {
        field: getattr(args, flag)
        for flag, field in SCOPE_FLAGS.items()
        if getattr(args, flag, None) is not None
    }


def targets(args: argparse.Namespace) -> list[Target]:
    """The targets the ``--platform`` flags and scope flags name (default: docker)."""
    names = args.platform if isinstance(args.platform, list) else [args.platform]
    return [target_for(name, **_scope(args)) for name in [n for n in names if n] or ["docker"]]


def pairs(items: Sequence[str] | None, flag: str) -> dict[str, str]:
    """``["k=v", ...]`` as a dict; SpecError naming ``flag`` for an item without ``=``."""
    result = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SpecError(flag, f"takes KEY=VALUE, got {item!r}")
        result[key] = value
    return result


def _up_spec(args: argparse.Namespace) -> Spec:
    """The spec of ``up``: flat scope flags where the spec has them, else options."""
    platform = PLATFORMS[args.platform]
    fields: dict[str, Any] = {
        "image": args.image,
        "ttl": args.ttl,
        "labels": pairs(args.label, "--label"),
        "env": pairs(args.env, "--env"),
        "run_as_root": args.root,
    }
    options: dict[str, Any] = pairs(args.option, "--option")
    for flag, field in SCOPE_FLAGS.items():
        value = getattr(args, flag)
        if value is None:
            continue
        if flag == "cluster":
            if isinstance(platform, KubernetesPlatform):
                fields["cluster_name"] = value
            else:
                options["cluster"] = value
        elif flag == "subscription":
            options[field] = value
        else:
            fields[field] = value
    return spec_for(platform, options=options or None, **fields)


async def up(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Bring sandboxes up and leave them running, detached, with handles saved."""
    spec = _up_spec(args)
    with labelled({}, owned=False):
        async with provision_many(spec, count=args.count) as fleet:
            return [
                {"name": c.name, "platform": c.platform, "url": c.url, "expires_at": c.expires_at}
                for c in fleet
            ]


def print_up(items: list[dict[str, Any]]) -> None:
    for item in items:
        expires = _when(item["expires_at"])
        print(f"{item['name']}  {item['platform']}  {item['url']}  until {expires}")
    if items:
        first = items[0]["name"]
        print(f"run a command:  commandlab exec {first} -- uname -a")
        print(f"remove:         commandlab rm {' '.join(i['name'] for i in items)}")


def _describe(info: SandboxInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "platform": info.platform,
        "target": str(info.target),
        "state": info.state,
        "created_at": info.created_at,
        "expires_at": info.expires_at,
        "owner": info.owner,
        "reapable": info.reapable,
        "handle": info.reachable,
        "labels": dict(info.labels),
    }


async def ls(args: argparse.Namespace) -> list[dict[str, Any]]:
    found = await list_sandboxes(targets(args), labels=pairs(args.label, "--label"))
    items = [_describe(info) for info in found]
    now = time.time()
    if args.older_than is not None:
        items = [i for i in items if i["created_at"] and now - i["created_at"] >= args.older_than]
    if args.newer_than is not None:
        items = [i for i in items if i["created_at"] and now - i["created_at"] < args.newer_than]
    return items


def print_ls(items: list[dict[str, Any]]) -> None:
    rows = [("NAME", "PLATFORM", "STATE", "AGE", "EXPIRES", "OWNER", "REACHABLE")]
    now = time.time()
    for i in items:
        age = _duration(now - i["created_at"]) if i["created_at"] else "?"
        expires = "never" if i["expires_at"] is None else _duration(i["expires_at"] - now)
        rows.append(
            (
                i["name"],
                i["platform"],
                i["state"],
                age,
                expires,
                i["owner"],
                "yes" if i["handle"] else "no",
            )
        )
    widths = [max(len(row[n]) for row in rows) for n in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


async def rm(args: argparse.Namespace) -> list[Reaped]:
    labels = pairs(args.label, "--label")
    if not args.names and not labels:
        raise SpecError("rm", "takes sandbox names or -l KEY=VALUE")
    where = targets(args)
    gone = await remove(where, names=args.names, labels=labels or None)
    missing = sorted(set(args.names) - {r.name for r in gone})  # their handles are gone too
    if missing:
        raise SandboxNotFoundError(
            f"no such sandbox on {', '.join(map(str, where))} ({len(gone)} other(s) deleted)",
            sandbox=", ".join(missing),
        )
    return gone


async def gc_command(args: argparse.Namespace) -> list[Reaped]:
    return await gc(targets(args), dry_run=args.dry_run, timeout=args.timeout)


def print_reaped(reaped: list[Reaped], verb: str) -> None:
    for item in reaped:
        print(f"{verb} {item.target} {item.name}: {item.reason}")
    print(f"{verb} {len(reaped)} sandbox(es)")


def reaped_json(reaped: list[Reaped]) -> str:
    return json.dumps([asdict(r) for r in reaped])


def _when(at: float | None) -> str:
    return "deleted by hand" if at is None else time.strftime("%H:%M:%S", time.localtime(at))


def _duration(seconds: float) -> str:
    seconds = max(seconds, 0)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"
