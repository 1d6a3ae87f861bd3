"""Pure decisions: what runs next, which compensation is due, when to retry. No Celery, no SQL."""
