"""Run the sandbox daemon: ``python -m commandlab_async.daemon``."""

from .main import main

main()
