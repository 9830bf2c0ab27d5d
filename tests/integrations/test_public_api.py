"""The integrations (CLI, pytest plugin, Inspect provider) stand on the public API only.

What they need is what any framework built on us needs; a private import here is a
missing public name, so this test fails until the name is public.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import commandlab_async

pytestmark = pytest.mark.unit

PACKAGE = Path(commandlab_async.__file__).parent
INTEGRATIONS = PACKAGE / "integrations"
# Public modules besides the root: their names are API as they stand.
PUBLIC_MODULES = {"commandlab_async.errors", "commandlab_async.specs", "commandlab_async.labels"}


def _module_of(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, absolute module, names) of every ``from X import ...`` in ``path``."""
    here = _module_of(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names]
    return found


def _violations(path: Path) -> list[str]:
    bad = []
    for line, module, names in _imports(path):
        where = f"{path.relative_to(PACKAGE.parent)}:{line}"
        if not module.startswith("commandlab_async"):
            continue
        if module.startswith("commandlab_async.integrations"):
            continue
        if module == "commandlab_async":
            private = [n for n in names if n not in commandlab_async.__all__]
            if private:
                bad.append(f"{where}: {', '.join(private)} not in commandlab_async.__all__")
        elif module not in PUBLIC_MODULES:
            bad.append(f"{where}: imports {module}, which is not public")
    return bad


def test_integrations_import_only_the_public_api() -> None:
    files = sorted(INTEGRATIONS.rglob("*.py"))
    assert len(files) > 10
    problems = [problem for path in files for problem in _violations(path)]
    assert problems == []


def test_the_check_sees_a_private_import(tmp_path: Path) -> None:
    """The rule above can fail: a private import in an integration is reported."""
    sneaky = INTEGRATIONS / "cli" / "_sneaky_for_test.py"
    sneaky.write_text(
        "from ..._lifecycle.leases import open_backend\nfrom ... import Computer, lease\n"
    )
    try:
        problems = _violations(sneaky)
    finally:
        sneaky.unlink()
    assert len(problems) == 2
    assert "commandlab_async._lifecycle.leases" in problems[0]
    assert "lease not in commandlab_async.__all__" in problems[1]


def test_the_root_shows_the_architecture() -> None:
    """Public modules and the private folders of each side; nothing else at the root."""
    entries = {p.name for p in PACKAGE.iterdir() if p.name != "__pycache__"}
    assert entries == {
        "__init__.py",
        "py.typed",
        "errors.py",
        "specs.py",
        "labels.py",
        "_validation.py",
        "_client",
        "_lifecycle",
        "_admin",
        "platforms",
        "daemon",
        "emulators",
        "integrations",
        "image",
    }
