"""A standby master: commit shipping, election by an existing engine, fencing by epoch.

See docs/standby.md. `journal` records the primary's SQL and applies it on the standby;
`shipper` sends each commit from the primary; `replica` is the standby until it takes over;
`election` says who is primary and hands out the epoch, by `etcd` or a Kubernetes Lease
(`kubelease` over `kubeapi`); `primary` is the master loop with a lease it must hold to act;
`serve` runs a master through those roles.
"""
