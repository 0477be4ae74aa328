//go:build tools

// Package tools pins the commands that hack/build.sh builds from github.com/moby/buildkit.
package tools

import (
	_ "github.com/moby/buildkit/cmd/buildkitd"
	_ "github.com/moby/buildkit/cmd/buildctl"
)
