"""The lifecycle side: bringing sandboxes up and guaranteeing they go away.

``provision`` (provision, provision_many, Fleet) · ``member`` (one sandbox's life:
identity → create → ready → shielded destroy) · ``identity`` (names and labels chosen
before the create) · ``readiness`` (until the daemon answers) · ``warm_pools`` ·
``leases`` (the per-target driver and limiter every fleet of a loop shares) · ``limits``
and ``machine_quota`` (concurrency and rate quotas per target, per process and per
machine) · ``signals`` (SIGTERM waits for cleanup) · ``shielding`` (cleanup that
survives cancellation) · ``events`` (what happens to each sandbox, for progress).

Nothing here is API: the package root re-exports what is.
"""
