"""What the sandbox daemon costs: memory under heavy transfers, and its start time.

Sandboxes come up via ``provision(DockerSpec(memory=2048))``, a fresh one per row:

* **Memory.** Each transfer runs, then the daemon's peak resident memory (``VmHWM`` of
  its process, read inside the sandbox) and the client's peak Python allocations
  (``tracemalloc``) during the transfer are reported: 2 GB to stdout through ``run()``
  (16 MiB kept), 200 MiB of stdin, a 1 GiB upload and download. Bytes per second of
  each transfer too.
* **Start cost.** Inside the sandbox (same image, same limits), a small probe starts a
  server process and times, with a monotonic clock, from spawn until that server
  answered one HTTP request on 127.0.0.1 (polled every millisecond), ``--starts`` times
  per server, alternating: the daemon as shipped (``python3 -I -S -u``), the daemon
  under plain ``python3 -u``, and a trivial stdlib ``http.server`` (``python3 -u``).
  Median and p90 in milliseconds; the target is the shipped daemon within 10 ms of the
  trivial server.
* **Files as another user.** In a ``run_as_root=True`` sandbox (a root daemon), a small
  file is read and written ``--file-ops`` times each way, alternating: as the daemon's
  own user, and with ``user="computer"`` (a short-lived agent process running as that
  user does the path work). Medians in milliseconds, and what the agent adds.

The command round trip against ``docker exec`` is ``benchmarks/exec_latency.py``.

Run:  .venv/bin/python benchmarks/daemon_costs.py [--starts 30] [--file-ops 50]
      [--only memory|starts|files ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

from _report import table  # benchmarks/ is on sys.path when a script runs

from commandlab_async import Computer, DockerSpec, provision

MIB = 1024 * 1024
SPEC = DockerSpec(memory=2048)

# Runs inside the sandbox: start each server in turn and time spawn -> first answer.
PROBE = r"""
import hashlib, json, os, socket, subprocess, sys, time
token = "probe-token"
DAEMON = "/opt/commandlab/daemon.pyz"
servers = {
    "daemon (python3 -I -S -u, as shipped)": ["python3", "-I", "-S", "-u", DAEMON],
    "daemon (python3 -u)": ["python3", "-u", DAEMON],
    "trivial http.server (python3 -u)": ["python3", "-u", "-c",
        "import http.server as h, os\n"
        "class H(h.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        self.send_response(200); self.send_header('Content-Length', '0')\n"
        "        self.end_headers()\n"
        "h.HTTPServer(('127.0.0.1', int(os.environ['COMMANDLAB_PORT'])), H).serve_forever()"],
}
request = ("GET /health HTTP/1.1\r\nHost: x\r\nX-CommandLab-Token: %s\r\n\r\n" % token).encode()
results = {name: [] for name in servers}
port = 20000
for _ in range(int(sys.argv[1])):
    for name, argv in servers.items():
        port += 1
        env = dict(os.environ, COMMANDLAB_PORT=str(port), COMMANDLAB_HOST="127.0.0.1",
                   COMMANDLAB_TOKEN_SHA256=hashlib.sha256(token.encode()).hexdigest())
        env.pop("COMMANDLAB_SOCKET", None)  # the sandbox's own daemon's: these listen on TCP
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, env=env, stderr=subprocess.DEVNULL)
        while True:
            if time.monotonic() - t0 > 10:
                sys.exit(name + " did not answer within 10 s")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.sendall(request)
                    if s.recv(64).split(b" ")[1:2] == [b"200"]:  # HTTP/1.0 or 1.1
                        break
            except OSError:
                pass
            time.sleep(0.001)
        results[name].append(time.monotonic() - t0)
        proc.kill()
        proc.wait()
print(json.dumps(results))
"""


async def daemon_peak_rss_mib(computer: Computer) -> float:
    pid = (await computer.health())["pid"]
    r = await computer.run(["grep", "VmHWM", f"/proc/{pid}/status"])
    return int(r.stdout.split()[1]) / 1024


async def measure(
    what: str, nbytes: int, action: Callable[[Computer], Awaitable[object]]
) -> list[str]:
    """One transfer in a fresh sandbox, so each row's peak is its own."""
    async with provision(SPEC) as computer:
        return await measure_in(computer, what, nbytes, action)


async def measure_in(
    computer: Computer, what: str, nbytes: int, action: Callable[[Computer], Awaitable[object]]
) -> list[str]:
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        await action(computer)
        elapsed = time.perf_counter() - t0
        client_peak = tracemalloc.get_traced_memory()[1] / MIB
    finally:
        tracemalloc.stop()
    daemon_peak = await daemon_peak_rss_mib(computer)
    return [
        what,
        f"{nbytes / MIB:.0f}",
        f"{daemon_peak:.1f}",
        f"{client_peak:.1f}",
        f"{nbytes / MIB / elapsed:.0f}",
    ]


async def two_gb(computer: Computer) -> None:
    r = await computer.run("yes | head -c 2000000000")
    assert r.truncated
    assert len(r.stdout_bytes) == 16 * MIB


async def stdin_200mib(computer: Computer) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        block = os.urandom(MIB)
        for _ in range(200):
            yield block

    r = await computer.run(["wc", "-c"], stdin=chunks())
    assert r.stdout.strip() == str(200 * MIB)


async def memory_rows(scratch: Path) -> list[list[str]]:
    source = scratch / "up.bin"
    with source.open("wb") as f:
        f.truncate(1024 * MIB)
    rows = [
        await measure("run(): 2 GB to stdout", 2_000_000_000, two_gb),
        await measure("run(): 200 MiB of stdin", 200 * MIB, stdin_200mib),
        await measure("upload(): 1 GiB", 1024 * MIB, lambda c: c.upload(source, "up.bin")),
    ]

    async def down(computer: Computer) -> None:
        await computer.download("up.bin", scratch / "down.bin")

    async with provision(SPEC) as computer:
        await computer.run("truncate -s 1G up.bin")
        rows.append(await measure_in(computer, "download(): 1 GiB", 1024 * MIB, down))
    return rows


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return (ordered[middle] + ordered[~middle]) / 2


async def file_op_rows(rounds: int) -> list[list[str]]:
    """A small file read and written by a root daemon: as itself, then as another user."""
    times: dict[tuple[str, str], list[float]] = {}
    async with provision(DockerSpec(run_as_root=True)) as computer:
        await computer.write_file("/tmp/bench/f.txt", "x" * 100, user="computer")
        ops: dict[str, Callable[[str | None], Awaitable[object]]] = {
            "read_file": lambda user: computer.read_file("/tmp/bench/f.txt", user=user),
            "write_file": lambda user: computer.write_file(
                "/tmp/bench/f.txt", "y" * 100, user=user
            ),
        }
        for op in ops.values():  # warm up both paths once
            await op(None)
            await op("computer")
        for _ in range(rounds):
            for name, op in ops.items():
                for who, user in (("daemon's user (root)", None), ('user="computer"', "computer")):
                    t0 = time.perf_counter()
                    await op(user)
                    times.setdefault((name, who), []).append(time.perf_counter() - t0)
    rows = []
    for name in ("read_file", "write_file"):
        own = median(times[name, "daemon's user (root)"]) * 1000
        other = median(times[name, 'user="computer"']) * 1000
        rows.append([name, f"{own:.2f}", f"{other:.2f}", f"{other - own:+.2f}"])
    return rows


async def amain(args: argparse.Namespace) -> int:
    only = set(args.only or ("memory", "starts", "files"))
    if "memory" in only:
        with tempfile.TemporaryDirectory() as scratch:
            memory = await memory_rows(Path(scratch))
        print()
        print("Peak memory during one transfer (MiB) and throughput")
        print()
        print(table(["transfer", "MiB moved", "daemon peak RSS", "client peak", "MiB/s"], memory))
    if "starts" in only:
        async with provision(SPEC) as computer:
            probe = await computer.run(["python3", "-c", PROBE, str(args.starts)], timeout=600)
            if not probe.ok:
                print(probe.stderr, file=sys.stderr)
                return 1
            starts: dict[str, list[float]] = json.loads(probe.stdout)
        print()
        print(
            f"Spawn to first answer inside the sandbox, {args.starts} alternating starts each (ms)"
        )
        print()
        rows = [
            [name, f"{median(v) * 1000:.1f}", f"{sorted(v)[int(len(v) * 0.9)] * 1000:.1f}"]
            for name, v in starts.items()
        ]
        print(table(["server", "median", "p90"], rows))
        medians = [median(v) * 1000 for v in starts.values()]
        print()
        print(
            f"shipped daemon - trivial server: {medians[0] - medians[2]:+.1f} ms (target ≤ +10 ms)"
        )
    if "files" in only:
        files = await file_op_rows(args.file_ops)
        print()
        print(f"A 100-byte file through a root daemon, {args.file_ops} alternating calls each (ms)")
        print()
        print(table(["call", "as root", 'user="computer"', "agent adds"], files))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--starts", type=int, default=30, help="starts of each server (default 30)")
    parser.add_argument(
        "--file-ops", type=int, default=50, help="calls of each file operation (default 50)"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=("memory", "starts", "files"),
        help="run only this part (repeatable; default: all)",
    )
    args = parser.parse_args(argv)
    if args.starts < 1 or args.file_ops < 1:
        parser.error("--starts and --file-ops must be at least 1")
    try:
        return asyncio.run(amain(args))
    except KeyboardInterrupt:
        print("interrupted; the sandbox was deleted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
