// Package deploy holds wsd's deployment files and their checks: Prometheus
// alerting rules with their promtool unit tests and a sample scrape
// configuration (prometheus/), a Grafana dashboard (grafana/), edge TLS
// configurations for HAProxy and nginx (haproxy/, nginx/), a container image
// and a compose file (docker/), Kubernetes manifests (k8s/) and a systemd
// unit (systemd/); the tests also cover the kernel profile and its apply
// script in the top-level sysctl/ directory.
//
// It has no code. Its tests validate the Prometheus files with promtool,
// check that every metric name and label value the rules and the dashboard
// use is one a real wsd exposes on /metrics, run HAProxy and nginx in
// front of a real wsd, speaking wss:// through them, verify the systemd
// unit with systemd-analyze, replay the Dockerfile's build and check the
// binary is static, decode the Kubernetes manifests strictly into their API
// types, run every configuration through the real wsd's --print-config, and
// run sysctl/apply against a fake /proc/sys. Each test that needs a tool
// (promtool from the Debian package prometheus, haproxy, nginx,
// systemd-analyze, nft from nftables, shellcheck) is skipped, naming the package, when
// it is not installed.
package deploy
