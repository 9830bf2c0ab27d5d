"""The daemon as an image runs it: its zipapp (``commandlab_async/daemon/bundle.py``), built
once per test session, for the tests that run the daemon as a host subprocess.

``COMMANDLAB_TEST_DAEMON_PYTHON`` (e.g. a python3.9) runs it under another interpreter:
the zipapp's bytecode is this interpreter's, so that one runs it from source.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import sys
import tempfile
from pathlib import Path

from commandlab_async.daemon import bundle

DAEMON_PYTHON = os.environ.get("COMMANDLAB_TEST_DAEMON_PYTHON", sys.executable)


@functools.cache
def daemon_zipapp() -> Path:
    """The zipapp, built on first use into a temporary directory removed at exit."""
    directory = Path(tempfile.mkdtemp(prefix="commandlab-daemon-"))
    directory.chmod(0o755)  # a root daemon's file agents run as other users
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return Path(bundle.build(directory / "daemon.pyz"))


def daemon_argv() -> list[str]:
    """The command line of a daemon, as the image's: ``python3 -I -S <zipapp>``."""
    return [DAEMON_PYTHON, "-I", "-S", str(daemon_zipapp())]
