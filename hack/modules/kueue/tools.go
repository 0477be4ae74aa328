//go:build tools

// Package tools pins the commands that hack/build.sh builds from sigs.k8s.io/kueue.
package tools

import (
	_ "sigs.k8s.io/kueue/cmd/kueue"
)
