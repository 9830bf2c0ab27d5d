"""The daemon inside the sandbox: its wire protocol, limits, TLS, the file agent, the package."""
