"""The FineTuneJob operator.

kopf starts the process, runs its lifecycle (startup, liveness, shutdown) and watches the
CRD. The operator's own informers (informer.py) watch FineTuneJobs, their
FineTuneJobProgress objects, Jobs, pods and nodes into the cache (cache.py) and queue the
FineTuneJob each event belongs to (workqueue.py); a worker runs one reconcile pass for it
(controller.py): read the cache, decide (planner.py, policy.py), write the status, then
create what children/ builds.
docs/operator.md has the architecture and why it is built so.
"""
