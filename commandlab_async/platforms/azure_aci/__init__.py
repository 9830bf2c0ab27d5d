"""Azure Container Instances: one container group per sandbox, reached over pinned TLS."""
