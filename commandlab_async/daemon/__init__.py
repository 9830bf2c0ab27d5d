"""The daemon that runs inside each sandbox (stdlib only)."""
