package trace

import (
	"context"
	"errors"

	"github.com/childflow/childflow/flows"
)

func runRootless(ctx context.Context, o *Options) (*Result, error) {
	return nil, &Failure{Phase: flows.PhasePreflight, Reason: "rootless_unavailable",
		Err: errors.New("the rootless backend is not wired yet"), Hint: "run with sudo"}
}
