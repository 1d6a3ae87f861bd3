"""Runnable examples for celery-durable."""
