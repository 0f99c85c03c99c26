// Package deploy holds wsd's deployment files and their checks: Prometheus
// alerting rules with their promtool unit tests and a sample scrape
// configuration (prometheus/), a Grafana dashboard (grafana/), and edge
// TLS configurations for HAProxy and nginx (haproxy/, nginx/).
//
// It has no code. Its tests validate the Prometheus files with promtool,
// check that every metric name and label value the rules and the dashboard
// use is one a real wsd exposes on /metrics, and run HAProxy and nginx in
// front of a real wsd, speaking wss:// through them. Each test that needs a
// tool (promtool from the Debian package prometheus, haproxy, nginx) is
// skipped, naming the package, when it is not installed.
package deploy
