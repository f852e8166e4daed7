package main

import (
	"github.com/urfave/cli/v2"
)

func doctorCommand() *cli.Command {
	return &cli.Command{
		Name:  "doctor",
		Usage: "check what this host can run, per backend, and remove stale run cgroups",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "format", Aliases: []string{"f"}, Value: "text", Usage: "text or json"},
			&cli.BoolFlag{Name: "no-clean", Usage: "report stale run cgroups without removing them"},
		},
		Action: func(c *cli.Context) error {
			return runDoctor(c, c.String("format"), c.Bool("no-clean"))
		},
	}
}

func runDoctor(c *cli.Context, format string, noClean bool) error {
	return usagef("doctor is not wired yet")
}
