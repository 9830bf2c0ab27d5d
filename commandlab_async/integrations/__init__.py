"""What people and other tools use the library through: the command line (and, later, the
pytest plugin and the Inspect AI provider)."""
