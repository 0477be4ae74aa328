// Command coredns is the local cluster's DNS server: CoreDNS with only the plugins a
// cluster's DNS needs (hack/node.sh writes its Corefile). CoreDNS's own binary compiles
// every plugin, the cloud DNS SDKs included; this is CoreDNS's documented way to build
// a smaller one (a main that sets dnsserver.Directives and imports the plugins it lists).
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

// The plugins' order in a query's chain (the same relative order as CoreDNS's plugin.cfg).
var directives = []string{"bind", "ready", "health", "errors", "log", "cache", "kubernetes"}

func init() { dnsserver.Directives = directives }

func main() { coremain.Run() }
