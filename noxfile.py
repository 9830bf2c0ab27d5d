"""Sessions: unit (no engine, no emulator; seconds), integration (a Docker Engine, the images
from scripts/build-images.sh, moto and the Cloud Run emulator started by the tests), lint,
typecheck.
``scripts/test.sh`` runs all of it in one venv, as CI does."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "unit", "integration"]


def _pytest(session: nox.Session, marker: str) -> None:
    session.install("-e", ".[dev]")
    session.run("pytest", "-m", marker, *session.posargs)


@nox.session(python="3.11")
def unit(session: nox.Session) -> None:
    _pytest(session, "unit")


@nox.session(python="3.11")
def integration(session: nox.Session) -> None:
    _pytest(session, "integration")


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python="3.11")
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("mypy")
