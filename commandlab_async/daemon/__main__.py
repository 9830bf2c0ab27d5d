"""Run the sandbox daemon: ``python -m commandlab_async.daemon``."""

from .server import main

main()
