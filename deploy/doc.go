// Package deploy holds wsd's deployment files and their checks: Prometheus
// alerting rules with their promtool unit tests and a sample scrape
// configuration (prometheus/), and a Grafana dashboard (grafana/).
//
// It has no code. Its test validates the files with promtool (skipped when
// promtool, from the Debian package prometheus, is not installed) and checks
// that every metric name and label value the rules and the dashboard use is
// one a real wsd exposes on /metrics.
package deploy
