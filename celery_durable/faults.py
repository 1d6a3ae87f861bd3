"""Fault points for crash tests: ``CELERY_DURABLE_FAULT=<point>:<node>`` kills the worker there.

The whole process group gets SIGKILL (start the worker in a session of its own), which is
what a machine failure looks like to the broker and the database. Unset, each hit costs one
dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "CELERY_DURABLE_FAULT"
AFTER_COMMIT = "after_commit"
# A wait of <node> was woken (its wake checkpoint committed), before its visit is dispatched.
AFTER_WAKE = "after_wake"


def hit(point: str, node: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    want_point, _, want_node = spec.partition(":")
    if want_point == point and want_node in ("", node):
        os.killpg(os.getpgrp(), signal.SIGKILL)
