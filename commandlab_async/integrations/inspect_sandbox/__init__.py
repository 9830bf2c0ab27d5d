"""The ``commandlab`` sandbox for Inspect AI (install the ``inspect`` extra).

Inspect finds it through the ``inspect_ai`` entry point, so
``Task(..., sandbox=("commandlab", "commandlab.yaml"))`` or ``--sandbox commandlab``
works once this package is installed. The config is a :class:`CommandLabSandboxConfig`,
a dict of its fields, or a YAML/JSON file of them.
"""

from .config import CommandLabSandboxConfig
from .sandbox import CommandLabSandbox

__all__ = ["CommandLabSandbox", "CommandLabSandboxConfig"]
