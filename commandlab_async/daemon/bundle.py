"""Build the daemon's zipapp, the one file an image needs: ``python3 bundle.py OUT.pyz``
(or ``build(target)`` from Python).  Standard library only, Python >= 3.9, and runnable
as a script: it imports nothing of the package it bundles.

The zip holds this folder's modules (but this one) as the top-level package
``commandlab_daemon``, and a ``__main__.py`` that runs its ``main``:
``python3 -I -S -u OUT.pyz`` starts the daemon.  Beside each ``.py`` is its bytecode,
compiled here, as a ``.pyc`` in the legacy location where ``zipimport`` looks: an
unchecked hash-based pyc (PEP 552), used whenever its magic number matches the running
interpreter's, so neither the daemon nor the file agent compiles anything at start-up.
Build it with the python3 that will run it (the image's Dockerfile does); under any other
version ``zipimport`` falls back to the source beside it.  Entries are stored
uncompressed (importing ``zlib`` costs more than reading a few hundred KiB) with a fixed
date, so the same sources and interpreter make the same bytes.
"""

from __future__ import annotations

import importlib.util
import marshal
import os
import sys
import zipfile

PACKAGE = "commandlab_daemon"
MAIN = f"from {PACKAGE}.main import main\n\nmain()\n"
SOURCE_DIR = os.path.dirname(os.path.abspath(__file__))
LEFT_OUT = frozenset({"bundle.py"})  # what builds the zipapp is no part of it
DATE = (1980, 1, 1, 0, 0, 0)  # the earliest a zip can say: no build time in the bytes
UNCHECKED_HASH = 0b01  # PEP 552 flags: hash-based, never checked against the source


def sources() -> list[tuple[str, bytes]]:
    """(name in the zip, source) of every module the zipapp holds, ``__main__.py`` last."""
    found = []
    for name in sorted(os.listdir(SOURCE_DIR)):
        if name.endswith(".py") and name not in LEFT_OUT:
            with open(os.path.join(SOURCE_DIR, name), "rb") as file:
                found.append((f"{PACKAGE}/{name}", file.read()))
    found.append(("__main__.py", MAIN.encode()))
    return found


def bytecode(source: bytes, filename: str) -> bytes:
    """The ``.pyc`` of ``source`` for this interpreter: its header, then the code."""
    code = compile(source, filename, "exec", dont_inherit=True)
    header = importlib.util.MAGIC_NUMBER + UNCHECKED_HASH.to_bytes(4, "little")
    return header + importlib.util.source_hash(source) + marshal.dumps(code)


def add(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, DATE)
    info.external_attr = 0o644 << 16
    archive.writestr(info, data, zipfile.ZIP_STORED)


def build(target: str | os.PathLike[str]) -> str:
    """Write the zipapp to ``target`` (replaced whole, never half-written); its path."""
    path = os.path.abspath(os.fspath(target))
    partial = f"{path}.{os.getpid()}.partial"
    try:
        with zipfile.ZipFile(partial, "w") as archive:
            for name, source in sources():
                add(archive, name, source)
                # The name zipimport gives the module's file, so tracebacks say where.
                add(archive, name[:-3] + ".pyc", bytecode(source, os.path.join(path, name)))
        os.chmod(partial, 0o644)
        os.replace(partial, path)
    except BaseException:
        if os.path.exists(partial):
            os.unlink(partial)
        raise
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} OUT.pyz")
    build(sys.argv[1])
