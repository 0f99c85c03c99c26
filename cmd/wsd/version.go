package main

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// wantsVersion reports whether the command line asks for --version (or
// -version). It is looked for on the command line alone, by the flag
// package's rules (so "--echo-path --version" sets the echo path), and is
// not a setting: a WSD_VERSION variable, a name deploy scripts like to use
// for what they deploy, must not turn wsd into a version printer.
func wantsVersion(args []string) bool {
	fs := newFlagSet(&config{})
	v := fs.Bool("version", false, "")
	return fs.Parse(args) == nil && *v
}

// versionLine describes the binary from what the Go toolchain recorded in
// it: the main module's version, and the commit, its time and whether the
// tree had uncommitted changes when it was built from a checkout. Any of
// these may be missing (go build -buildvcs=false, a test binary): they are
// then "unknown".
func versionLine(bi *debug.BuildInfo, ok bool) string {
	version, commit, when, modified := "unknown", "unknown", "time unknown", ""
	goVersion := runtime.Version()
	if ok {
		if bi.Main.Version != "" {
			version = bi.Main.Version
		}
		if bi.GoVersion != "" {
			goVersion = bi.GoVersion
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				commit = s.Value[:min(len(s.Value), 7)]
			case "vcs.time":
				when = s.Value
			case "vcs.modified":
				if s.Value == "true" {
					modified = ", modified"
				}
			}
		}
	}
	return fmt.Sprintf("wsd %s (commit %s, %s%s) %s %s/%s", version, commit, when, modified, goVersion, runtime.GOOS, runtime.GOARCH)
}
