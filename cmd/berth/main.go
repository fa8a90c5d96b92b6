// Command berth is the berth command line: deploy Compose apps to robots,
// watch and roll them back, and run the quickstart.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/berth-robotics/berth/internal/cli"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, version, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
