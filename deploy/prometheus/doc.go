// Package prometheus holds AnsFlow's Prometheus alerting rules
// (alerts.yaml) and the test that checks them against pkg/metrics: every
// metric a rule selects exists, and each rule fires on bad series and stays
// quiet on good ones. It is a module of its own so that the Prometheus
// server's dependencies stay out of the services.
package prometheus
