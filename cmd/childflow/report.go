package main

import (
	"fmt"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/childflow/childflow/flows"
	"github.com/childflow/childflow/report"
)

func reportCommand() *cli.Command {
	return &cli.Command{
		Name:      "report",
		Usage:     "summarise one or more flow logs (also those of childflow 0.8)",
		UsageText: "childflow report [--format text|markdown|json] [--suggest-policy] FILE...",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "format", Aliases: []string{"f"}, Value: "text",
				Usage: "text, markdown or json"},
			&cli.BoolFlag{Name: "suggest-policy",
				Usage: "print a profile that allows exactly what the logs show"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() == 0 {
				return usagef("report needs a flow log (usage: childflow report FILE...)")
			}
			return runReport(c, c.Args().Slice(), c.String("format"), c.Bool("suggest-policy"))
		},
	}
}

// runReport reads the logs into one report and prints it.
func runReport(c *cli.Context, files []string, format string, suggest bool) error {
	f, err := report.ParseFormat(format)
	if err != nil {
		return usagef("invalid report format %q: use text, markdown or json", format)
	}

	agg := report.NewAggregator()
	for _, name := range files {
		fh, err := os.Open(name)
		if err != nil {
			return usagef("cannot read flow log %s: %v", name, err)
		}
		bad, err := flows.ReadLog(fh, func(_ int, rec flows.Record) error {
			agg.Add(rec)
			return nil
		})
		fh.Close()
		if err != nil {
			return &exitError{code: 1, msg: fmt.Sprintf("read flow log %s: %v", name, err)}
		}
		for _, e := range bad {
			agg.AddMalformed(e)
		}
	}

	rep := agg.Report()
	if suggest {
		_, err := fmt.Fprint(c.App.Writer, report.SuggestPolicy(rep))
		return err
	}

	return rep.Write(c.App.Writer, f)
}
