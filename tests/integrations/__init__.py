"""What users drive the library through: the CLI, the pytest plugin, Inspect, the public API."""
