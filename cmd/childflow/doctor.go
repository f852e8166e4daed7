package main

import (
	"github.com/urfave/cli/v2"

	"github.com/childflow/childflow/doctor"
)

func doctorCommand() *cli.Command {
	return &cli.Command{
		Name:  "doctor",
		Usage: "check what this host can run, per backend, and remove stale run cgroups",
		Description: "Probes each backend's requirements (it loads and attaches a test program; it does\n" +
			"not guess from kernel versions) and says which backend --backend auto picks.\n" +
			"Exit status: 0 when the picked backend is ready (with or without warnings), 1 when blocked.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "format", Aliases: []string{"f"}, Value: "text", Usage: "text or json"},
			&cli.BoolFlag{Name: "no-clean", Usage: "report stale run cgroups without removing them"},
		},
		Action: func(c *cli.Context) error {
			return runDoctor(c, c.String("format"), c.Bool("no-clean"))
		},
	}
}

// runDoctor probes the host and prints the result.
func runDoctor(c *cli.Context, format string, noClean bool) error {
	if format != "text" && format != "json" {
		return usagef("invalid doctor format %q: use text or json", format)
	}
	res := doctor.Run(doctor.Options{Clean: !noClean})
	if err := res.Write(c.App.Writer, format); err != nil {
		return err
	}
	if res.Verdict == doctor.Blocked {
		return &exitError{code: 1}
	}

	return nil
}
