"""The admin side: sandboxes seen from outside the code that made them.

``sandboxes`` (list them on any platform, read their logs, specs from a platform name) ·
``handles`` (reach a kept sandbox by name from another process) · ``reaper`` (``gc`` and
``remove``: delete what expired or lost its owner, never a live sibling's).

Nothing here is API: the package root re-exports what is.
"""
