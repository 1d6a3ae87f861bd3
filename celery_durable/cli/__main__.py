"""``python -m celery_durable.cli``: the celery-durable script."""

from celery_durable.cli import main

main()
