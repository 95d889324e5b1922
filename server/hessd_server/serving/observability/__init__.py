"""Observability and process upkeep: Prometheus metrics, the rate-limited failure
log, garbage-collection freezing and pause timing, and the allocator setting."""
