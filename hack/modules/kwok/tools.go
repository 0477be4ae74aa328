//go:build tools

// Package tools pins the commands that hack/build.sh builds from sigs.k8s.io/kwok.
package tools

import (
	_ "sigs.k8s.io/kwok/cmd/kwok"
)
