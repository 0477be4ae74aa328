"""The FineTuneJob operator: a kopf operator.

    kopf handlers (handlers.py)     FineTuneJobs, the CRD; startup, liveness, shutdown
    informers (informer.py)         Jobs, pods, progress objects, nodes, children's metadata
        -> cache (cache.py)         what the passes read, no API reads
        -> work queue (workqueue.py)   each FineTuneJob to one worker at a time
    reconciler (controller.py)      one pass: observe, plan, write status, act, re-queue
    planner (planner.py)            every decision, pure (policy.py, failures.py)
    children (children/)            what a job's attempt creates, rendered purely

docs/operator.md has the architecture and why it is built so.
"""
