"""7 record: decision records and logging set-up (audit), Prometheus metrics."""
