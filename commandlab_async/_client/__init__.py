"""The client side: a :class:`~.computer.Computer` and what it stands on.

``computer`` (the client of one daemon) · ``processes`` and ``process_io`` (commands,
streaming processes, stdin) · ``files`` (stat, listings, local sources and sinks) ·
``transport`` (one connection pool per loop, Unix sockets) · ``replies`` (every bound on
what a daemon may send) · ``tls`` (per-sandbox certificates, pinned) · ``liveness``
(a slow command or a frozen daemon) · ``history`` (the last commands run).

Nothing here is API: the package root re-exports what is.
"""
