"""Local Docker Engine: one container per sandbox (``options`` here, ``driver`` on aiodocker)."""
