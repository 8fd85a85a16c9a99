"""kubellm's monitoring kit: the Grafana dashboards (generated here into deploy/components/monitoring/dashboards),
the PromQL reading that checks dashboards and alert rules against the metrics the code emits, a local Prometheus
for tests and pictures, and `kubellm monitoring`."""
