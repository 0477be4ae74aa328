#!/usr/bin/env bash
# Restart only kube-apiserver of the hack/cluster-up.sh cluster (etcd keeps the objects).
exec "$(dirname "${BASH_SOURCE[0]}")/cluster-up.sh" restart-apiserver "$@"
