"""Sandboxes up and down: provision, fleets, warm pools, quotas, specs, handles, crashes."""
