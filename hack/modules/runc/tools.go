//go:build tools

// Package tools pins the commands that hack/build.sh builds from github.com/opencontainers/runc.
package tools

import (
	_ "github.com/opencontainers/runc"
)
