//go:build tools

// Package tools pins the commands that hack/build.sh builds from github.com/rhysd/actionlint.
package tools

import (
	_ "github.com/rhysd/actionlint/cmd/actionlint"
)
