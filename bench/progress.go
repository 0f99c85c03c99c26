package bench

import (
	"fmt"
	"io"
)

// progressLine writes a run's progress; the slow and broadcast runs share
// it so that both look the same on a terminal and in a log.
type progressLine struct {
	w        io.Writer // nil: no progress
	terminal bool      // w is a terminal: rewrite one line in place
}

// progress shows one line: rewritten in place on a terminal, appended
// otherwise.
func (p progressLine) progress(line string) {
	if p.w == nil {
		return
	}
	if p.terminal {
		fmt.Fprintf(p.w, "\r%s\x1b[K", line)
	} else {
		fmt.Fprintln(p.w, line)
	}
}

// endProgress ends a line rewritten in place, so that what is written next
// does not overwrite it.
func (p progressLine) endProgress() {
	if p.w != nil && p.terminal {
		fmt.Fprintln(p.w)
	}
}
