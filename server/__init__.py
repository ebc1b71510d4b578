"""spikewatch server: collector, SQL store, rules, notifiers, Prometheus exporter, HTTP API."""
