"""The engine, free of Celery: the runtime the parts share, run handles, control operations,
the recovery sweep, retention, leases and state merging. The Celery side (tasks/) builds on it.
"""
