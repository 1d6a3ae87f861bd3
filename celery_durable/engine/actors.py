"""Who did it: every operation and every event sent is kept with its actor."""

from __future__ import annotations

import getpass
import socket


def actor(by: str | None) -> str:
    """``by``, or the user and host the call came from."""
    return by or f"{getpass.getuser()}@{socket.gethostname()}"
