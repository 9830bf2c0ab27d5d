"""Google Cloud Run: one single-instance service per sandbox (no driver yet)."""
