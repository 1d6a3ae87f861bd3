"""Policies users set on nodes: retries, rate limits, concurrency limits, circuit breakers."""
