//go:build tools

// Package tools pins the commands that hack/build.sh builds from github.com/minio/minio.
package tools

import (
	_ "github.com/minio/minio"
)
