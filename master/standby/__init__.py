"""A standby master: commit shipping, election by an existing engine, fencing by epoch.

See docs/standby.md. `journal` records the primary's SQL and applies it on the standby;
`shipper` sends each commit from the primary; `replica` is the standby until it takes over;
`etcd` and `election` say who is primary and hand out the epoch; `primary` is the master loop
with a lease it must hold to act; `serve` runs a master through those roles.
"""
