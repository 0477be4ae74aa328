"""The kit every test tier and benchmark shares (never shipped in an image).

paths.py        where the repository's parts are (REPO, HACK, the CRDs)
ports.py        a free loopback port
process.py      ManagedProcess: spawn, readiness, log, stop (SIGTERM, then SIGKILL)
cluster.py      the local cluster (hack/cluster-up.sh): Cluster, namespaces, eventually()
kubeconfig.py   a kubeconfig holding a ServiceAccount's token (rights as granted, not admin)
chart.py        the Helm chart: the pinned helm, `helm template` as objects, RBAC grants
operator.py     the operator as a process with the chart's rights
controllers.py  a Go manager binary as a process, with certificates and webhooks
kueue.py        Kueue's manager, for the queueing tests
kubeflow.py     Kubeflow Trainer's managers, for the benchmark's peer
builders.py     fluent FineTuneJob, Job and pod builders (make_job(...).obj())
finetunejobs.py FineTuneJobs on a cluster: create, read, wait for a phase
plugin.py       the pytest fixtures (tests/conftest.py loads it through pytest_plugins)
"""
