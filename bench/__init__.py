"""Baton's benchmarks: `make bench` (or `python -m bench`) runs every scenario; each one also runs
alone as `python -m bench.<scenario>`. Figures from the local stack describe the local stack and
Baton's own code, not AWS throughput (see ../shared/facts.md: moto slows with deep queues)."""
