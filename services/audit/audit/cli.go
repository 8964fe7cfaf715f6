package audit

import (
	"flag"
	"fmt"
	"time"

	"github.com/ansflow/ansflow/services/audit/store"
)

// FilterFlags registers the query flags of "ansflow audit query" on fs:
// --run, --pipeline, --step, --actor, --type, --since, --until (the forms
// of [ParseTime]), --limit and --cursor. After fs.Parse, the returned
// function builds the filter; its errors wrap [ErrBadParameter].
func FilterFlags(fs *flag.FlagSet) func(now time.Time) (store.Filter, error) {
	var f store.Filter
	var since, until string
	fs.StringVar(&f.RunID, "run", "", "only records of this run id")
	fs.StringVar(&f.Pipeline, "pipeline", "", "only records of this pipeline (and of its runs)")
	fs.StringVar(&f.StepID, "step", "", "only records of this step id")
	fs.StringVar(&f.Actor, "actor", "", "only actions of this actor")
	fs.StringVar(&f.Type, "type", "", "only events of this type, e.g. io.ansflow.step.completed.v1")
	fs.StringVar(&since, "since", "", "events at or after this time: RFC 3339, a date, or a duration ago (24h, 7d)")
	fs.StringVar(&until, "until", "", "events before this time (same forms as --since)")
	fs.IntVar(&f.Limit, "limit", store.DefaultLimit, fmt.Sprintf("records per page (at most %d)", store.MaxLimit))
	fs.StringVar(&f.Cursor, "cursor", "", "continue after the page that printed this next cursor")
	return func(now time.Time) (store.Filter, error) {
		out := f
		var err error
		if out.Since, err = ParseTime(since, now); err != nil {
			return out, fmt.Errorf("--since: %w", err)
		}
		if out.Until, err = ParseTime(until, now); err != nil {
			return out, fmt.Errorf("--until: %w", err)
		}
		if out.Limit < 0 {
			return out, fmt.Errorf("%w: --limit %d is negative", ErrBadParameter, out.Limit)
		}
		return out, nil
	}
}
