//go:build tools

// Package tools pins the commands that hack/build.sh builds from github.com/kubeflow/trainer/v2.
package tools

import (
	_ "github.com/kubeflow/trainer/v2/cmd/trainer-controller-manager"
	_ "sigs.k8s.io/jobset"
)
