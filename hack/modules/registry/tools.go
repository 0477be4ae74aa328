//go:build tools

// Package tools pins the commands that hack/build.sh builds from github.com/distribution/distribution/v3.
package tools

import (
	_ "github.com/distribution/distribution/v3/cmd/registry"
	_ "golang.org/x/crypto/bcrypt"
)
