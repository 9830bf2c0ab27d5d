"""AWS ECS/Fargate: one task per sandbox (``options`` here, ``driver`` on aioboto3)."""
