// Command leviathan is the one binary of Leviathan: the laptop stack
// (dev, demo), each service of a deployment (run <service>), and the
// client commands (submit, version).
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "leviathan:", err)
		os.Exit(exitCode(err))
	}
}
