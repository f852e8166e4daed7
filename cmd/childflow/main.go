// Command childflow runs one command and every process it starts under
// per-command network tracing and control: a pcapng and a JSON Lines flow log
// of exactly that tree's traffic, egress policy, forced proxying and DNS
// overrides. See README.md.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/childflow/childflow/rootless"
	"github.com/childflow/childflow/sandbox"
	"github.com/childflow/childflow/trace"
)

var version = "0.9.0-dev"

// exitError carries an exit code out of a command's action.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &exitError{code: 2, msg: fmt.Sprintf(format, args...)}
}

func main() {
	// The rootless backend re-executes childflow as the namespace's init.
	rootless.MaybeInit()
	// The eBPF backend's sandbox re-executes childflow as the command's init.
	sandbox.MaybeInit()

	os.Exit(run(os.Args, os.Stderr))
}

func run(args []string, stderr io.Writer) int {
	trace.Version = version
	app := newApp(stderr)
	err := app.Run(args)
	if err == nil {
		return 0
	}

	var ee *exitError
	if errors.As(err, &ee) {
		if ee.msg != "" {
			fmt.Fprintf(stderr, "childflow: %s\n", ee.msg)
		}
		return ee.code
	}
	// Errors of flag parsing come from urfave/cli: usage errors.
	fmt.Fprintf(stderr, "childflow: %v (see childflow --help)\n", err)

	return 2
}

func newApp(stderr io.Writer) *cli.App {
	app := &cli.App{
		Name:  "childflow",
		Usage: "trace and police the network traffic of one command tree",
		UsageText: "childflow trace [flags] -- CMD ARGS...\n" +
			"childflow [flags] -- CMD ARGS...\n" +
			"childflow doctor | report FILE... | version",
		Version:                version,
		HideVersion:            true,
		ErrWriter:              stderr,
		Writer:                 os.Stdout,
		Flags:                  append(traceFlags(), legacyFlags()...),
		Action:                 rootAction,
		UseShortOptionHandling: false,
		Commands: []*cli.Command{
			{
				Name:      "trace",
				Usage:     "run a command under tracing and policy",
				UsageText: "childflow trace [flags] -- CMD ARGS...",
				Flags:     traceFlags(),
				Action:    traceAction,
			},
			doctorCommand(),
			reportCommand(),
			{
				Name:  "version",
				Usage: "print childflow's version",
				Action: func(c *cli.Context) error {
					fmt.Fprintf(c.App.Writer, "childflow %s\n", version)
					return nil
				},
			},
		},
		OnUsageError: func(c *cli.Context, err error, _ bool) error {
			return usagef("%v (see childflow --help)", err)
		},
	}
	for _, cmd := range app.Commands {
		cmd.OnUsageError = app.OnUsageError
	}

	return app
}

// rootAction serves `childflow [flags] -- CMD` and the older tool's root
// flags (--doctor, --report).
func rootAction(c *cli.Context) error {
	if c.Bool("doctor") {
		return runDoctor(c, c.String("doctor-format"), false)
	}
	if c.IsSet("report") {
		return runReport(c, []string{c.String("report")}, c.String("report-format"), false)
	}
	if c.NArg() == 0 && !c.IsSet("profile") {
		_ = cli.ShowAppHelp(c)
		return usagef("no command given (usage: childflow trace [flags] -- CMD ARGS...)")
	}

	return traceAction(c)
}
