"""The daemon as a package: standard library only, one zipapp with its bytecode, and a
file agent that imports only what it needs.

Every sandbox runs the daemon under ``python3 -I -S`` with nothing but the standard
library, so a module of ``commandlab_async/daemon/`` that imports anything else breaks
every image; and each file operation as another user starts a new python (the file
agent), so what it imports is paid for on every such request.
"""

from __future__ import annotations

import _socket
import ast
import hashlib
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from commandlab_async.daemon import bundle, file_agent, protocol
from commandlab_async.daemon.errors import RequestError
from tests.daemon.daemon_bundle import daemon_zipapp

pytestmark = pytest.mark.unit

PACKAGE_DIR = Path(file_agent.__file__).parent
MODULES = sorted(PACKAGE_DIR.glob("*.py"))
STDLIB = sys.stdlib_module_names
# What the file agent may import of the daemon: nothing of the server, HTTP or commands.
AGENT_MODULES = {"", ".file_agent", ".fileops", ".errors", ".protocol"}
# Standard modules the agent leaves out because they cost milliseconds to import.
AGENT_AVOIDS = {"json", "re", "socket", "selectors", "enum", "subprocess", "threading"}


def absolute_imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level name) of every absolute import in ``path``, wherever it is."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            assert node.module is not None
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def test_every_daemon_module_imports_only_the_standard_library() -> None:
    assert len(MODULES) > 10, MODULES
    outside = [
        f"{path.name}:{line}: {name}"
        for path in MODULES
        for line, name in absolute_imports(path)
        if name not in STDLIB
    ]
    # Between daemon modules: relative imports (the zipapp names the package otherwise).
    assert outside == [], "daemon modules import outside the standard library"


def test_every_daemon_module_parses_as_python_3_9() -> None:
    """Images may have python3.9: its grammar, and annotations never evaluated (``X | Y``)."""
    for path in MODULES:
        tree = ast.parse(path.read_text(), str(path), feature_version=(3, 9))
        futures = [
            alias.name
            for node in tree.body
            if isinstance(node, ast.ImportFrom) and node.module == "__future__"
            for alias in node.names
        ]
        assert futures == ["annotations"] or path.name in ("__init__.py", "__main__.py"), path.name


def test_the_package_init_and_the_protocol_import_nothing() -> None:
    """The client imports ``commandlab_async.daemon.protocol``: it must cost nothing."""
    for name in ("__init__.py", "protocol.py"):
        imports = [
            node
            for node in ast.parse((PACKAGE_DIR / name).read_text()).body
            if isinstance(node, (ast.Import, ast.ImportFrom))
            and not (isinstance(node, ast.ImportFrom) and node.module == "__future__")
        ]
        assert imports == [], name


def test_error_codes_and_frames_are_the_protocols() -> None:
    assert all(400 <= status < 600 for status in protocol.ERROR_STATUS.values())
    assert RequestError(protocol.OUTPUT_EVICTED, "gone").status == 410
    head = protocol.frame_head(protocol.FRAME_STDOUT, 258)
    assert head == b"1\x00\x00\x01\x02"
    assert len(head) == protocol.FRAME_HEAD_SIZE
    assert protocol.parse_frame_head(head) == (b"1", 258)
    assert protocol.valid_process_id("p12")
    assert not any(map(protocol.valid_process_id, ["p", "p0", "p01", "q1", "p1x", "p\u00b2"]))


def test_the_zipapp_holds_every_module_with_its_bytecode(tmp_path: Path) -> None:
    path = Path(bundle.build(tmp_path / "daemon.pyz"))
    names = set(zipfile.ZipFile(path).namelist())
    expected = {f"{bundle.PACKAGE}/{p.name}" for p in MODULES if p.name != "bundle.py"}
    expected.add("__main__.py")
    assert names == expected | {name + "c" for name in expected}
    # Rebuilt from the same sources by the same interpreter: the same bytes.
    first = path.read_bytes()
    assert Path(bundle.build(path)).read_bytes() == first


# Runs in the zipapp's python: starts the daemon from the zip, sends it a few requests
# from a thread (so that what they import lazily is imported too), then prints what
# sys.modules holds and stops the daemon as a signal would.
STARTUP_PROBE = textwrap.dedent(
    r"""
    import os, signal, socket, sys, threading, time
    sys.path.insert(0, sys.argv[1])
    from commandlab_daemon import main

    def ask(request):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(os.environ["COMMANDLAB_SOCKET"])
            sock.sendall(request)
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 200 "), reply

    def probe():
        try:
            while not os.path.exists(os.environ["COMMANDLAB_SOCKET"]):
                time.sleep(0.01)
            head = b" HTTP/1.1\r\nX-CommandLab-Token: probe\r\nConnection: close\r\n"
            ask(b"GET /health" + head + b"\r\n")
            ask(b"POST /exec" + head + b"Content-Length: 18\r\n\r\n" + b'{"argv":["true"]}\n')
            ask(b"GET /files/stat?path=%2F" + head + b"\r\n")
            names = sorted(sys.modules)
            print(repr([names, {n: getattr(sys.modules[n], "__file__", None) for n in names}]))
            sys.stdout.flush()
        finally:  # stops the daemon as a signal would: exit status 0
            os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=probe, daemon=True).start()
    main.main()
    """
)


def test_the_zipapp_runs_on_the_standard_library_alone_from_its_bytecode(
    tmp_path: Path,
) -> None:
    zipapp = daemon_zipapp()
    env = {
        "PATH": os.environ["PATH"],
        protocol.TOKEN_SHA256_ENV: hashlib.sha256(b"probe").hexdigest(),  # the probe's token
        protocol.SOCKET_ENV: str(tmp_path / "daemon.sock"),
    }
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", STARTUP_PROBE, str(zipapp)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert protocol.LISTENING + "unix:" in done.stderr.decode()
    assert done.stdout, done.stderr.decode()  # the probe printed: its requests succeeded
    names, files = ast.literal_eval(done.stdout.decode())
    ours = [name for name in names if name.split(".")[0] == bundle.PACKAGE]
    outside = [
        name
        for name in names
        if name.split(".")[0] not in STDLIB and name not in ours and name != "__main__"
    ]
    assert outside == [], outside
    assert f"{bundle.PACKAGE}.server" in ours
    # Imported from the zip, from the bytecode compiled into it (nothing compiled here).
    for name in ours:
        assert files[name].startswith(f"{zipapp}/"), (name, files[name])
        assert files[name].endswith(".pyc"), (name, files[name])


class Agent:
    """A file agent started by this test as the daemon starts one, but as this user, with
    ``-X importtime`` so that its stderr lists every module it imports."""

    def __init__(self, where: str, package: str, *fields: str) -> None:
        self.package = package
        self.sock, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
        argv = file_agent.agent_argv(theirs.fileno())
        argv[3:3] = ["-X", "importtime"]  # after -I -S
        argv[-3:-1] = [where, package]
        try:
            self.proc = subprocess.Popen(
                argv,
                cwd="/",
                env={"PATH": "/usr/bin:/bin"},
                pass_fds=(theirs.fileno(),),
                stderr=subprocess.PIPE,
            )
        finally:
            theirs.close()
        self.sock.settimeout(10)
        self.sock.send(file_agent.encode(*fields))

    def reply(self) -> tuple[list[str], list[int]]:
        data, fds = file_agent.receive(self.sock)
        return file_agent.decode(data), fds

    def finish(self) -> list[str]:
        """Let the agent exit; the modules it imported, in order."""
        self.sock.close()
        _, stderr = self.proc.communicate(timeout=10)
        assert self.proc.returncode == 0, stderr.decode()
        return [
            line.split("|")[-1].strip()
            for line in stderr.decode().splitlines()
            if line.startswith("import time:") and not line.endswith("imported package")
        ]


@pytest.mark.parametrize("mode", ["zipapp", "source"])
def test_the_file_agent_imports_no_server_exec_or_http_code(tmp_path: Path, mode: str) -> None:
    if mode == "zipapp":
        where, package = str(daemon_zipapp()), bundle.PACKAGE
    else:  # as python -m commandlab_async.daemon runs it: never the client package around it
        where, package = file_agent.AGENT_PATH, file_agent.AGENT_PACKAGE
    target = tmp_path / "f.txt"
    target.write_bytes(b"hello")
    agent = Agent(where, package, "read", str(target), "")
    fields, fds = agent.reply()
    imported = agent.finish()
    assert fields == ["ok", "5"]
    assert len(fds) == 1
    with os.fdopen(fds[0], "rb") as opened:
        assert opened.read() == b"hello"
    daemon_modules = {name.removeprefix(package) for name in imported if name.startswith(package)}
    assert daemon_modules == AGENT_MODULES
    assert not [name for name in imported if name.split(".")[0] == "commandlab_async"]
    assert not AGENT_AVOIDS & set(imported)


def test_the_file_agent_writes_aborts_and_reports_errors(tmp_path: Path) -> None:
    where, package = str(daemon_zipapp()), bundle.PACKAGE
    target = tmp_path / "deep" / "new.txt"
    agent = Agent(where, package, "write", str(target), str(0o640), str(0o022))
    fields, fds = agent.reply()
    assert (fields, len(fds)) == (["ok"], 1)
    os.write(fds[0], b"written")
    os.close(fds[0])
    assert not target.exists()  # aside until committed
    agent.sock.send(file_agent.COMMIT)
    assert agent.reply() == (["ok"], [])
    agent.finish()
    assert target.read_bytes() == b"written"
    assert target.stat().st_mode & 0o777 == 0o640
    # Closing instead of committing aborts: the old file stays, nothing is left beside it.
    agent = Agent(where, package, "write", str(target), "", str(0o022))
    fields, fds = agent.reply()
    os.write(fds[0], b"half")
    os.close(fds[0])
    agent.finish()
    assert target.read_bytes() == b"written"
    assert os.listdir(target.parent) == ["new.txt"]
    # Errors come back as the daemon's typed errors.
    missing = str(tmp_path / "missing")
    agent = Agent(where, package, "read", missing, "")
    fields, fds = agent.reply()
    agent.finish()
    error = file_agent.decode_error(fields)
    assert fds == []
    assert (error.status, error.code, error.extra) == (404, "not_found", {"path": missing})
    big = tmp_path / "big"
    big.write_bytes(b"12345")
    agent = Agent(where, package, "read", str(big), "4")
    error = file_agent.decode_error(agent.reply()[0])
    agent.finish()
    assert (error.code, error.extra) == ("file_too_large", {"path": str(big), "size": 5})
    # A reply the daemon cannot make sense of is an io_error, never a crash.
    assert file_agent.decode_error(["error", "no_such_code", "x"]).code == "io_error"
    assert file_agent.decode_error(["error", "not_found", "x", "path", "?"]).code == "io_error"


def test_python_m_commandlab_async_daemon_runs_the_daemon() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMMANDLAB_")}
    done = subprocess.run(
        [sys.executable, "-m", "commandlab_async.daemon"],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert f"{protocol.TOKEN_SHA256_ENV} is not set" in done.stderr.decode()
