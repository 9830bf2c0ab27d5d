"""Azure Container Instances: one container group per sandbox (no driver yet)."""
