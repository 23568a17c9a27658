"""Health checks: probes, what their results mean, and the worker that runs them."""
