//go:build tools

// Package tools pins the commands that hack/build.sh builds from github.com/coredns/coredns.
package tools

import (
	_ "github.com/coredns/coredns/coremain"
)
