"""Tags: string pairs a run is started with and found by (``customer`` = ``c-42``).

The one place that says what a tag may be. Starting a run, ``Durable.list(tags=)``, the
CLI's ``--tag KEY=VALUE`` and the web view's ``tag=KEY=VALUE`` all check here, so a tag that
could never be stored is refused the same way everywhere, before anything is stored or read.

The limits keep a run's tags a handful of short index entries: a tag is for finding runs
(a customer, a tenant, an environment), not for data, which belongs in the state.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from celery_durable.errors import InvalidTags

MAX_TAGS: Final = 16
KEY_LENGTH: Final = 64
VALUE_LENGTH: Final = 200
RULE: Final = (
    f"A run takes at most {MAX_TAGS} tags, each a string key of 1 to {KEY_LENGTH} characters "
    f"(no '=') and a string value of at most {VALUE_LENGTH} characters, like "
    "{'customer': 'c-42'}."
)
# How the CLI and the web view spell one tag.
SPELLING: Final = "KEY=VALUE, like customer=c-42"


def checked(tags: object) -> dict[str, str]:
    """``tags`` as stored, a plain dict; raises InvalidTags saying what is wrong with them."""
    if not isinstance(tags, Mapping):
        raise InvalidTags(f"{_cut(tags)} is not a dict of strings", RULE)
    if len(tags) > MAX_TAGS:
        raise InvalidTags(f"{len(tags)} tags given, at most {MAX_TAGS} are kept", RULE)
    for key, value in tags.items():
        _check(key, value)
    return {str(key): str(value) for key, value in tags.items()}


def parsed(spelled: Iterable[str]) -> dict[str, str]:
    """Tags spelled ``KEY=VALUE`` (``--tag``, ``tag=``), several meaning all of them: the same
    key twice with two values is refused, since a run has one value per key."""
    tags: dict[str, str] = {}
    for text in spelled:
        key, equals, value = text.partition("=")
        if not equals or not key:
            raise InvalidTags(f"{_cut(text)} is not a tag: write {SPELLING}", RULE)
        if tags.get(key, value) != value:
            raise InvalidTags(
                f"{key}={tags[key]} and {key}={value} together match no run (a run has one "
                f"value per key): give {key} once",
                RULE,
            )
        tags[key] = value
    return checked(tags)


def spelled(tags: Mapping[str, str]) -> list[str]:
    """``["customer=c-42", "env=prod"]``: tags as the CLI takes them, in key order."""
    return [f"{key}={value}" for key, value in sorted(tags.items())]


def _check(key: object, value: object) -> None:
    if not isinstance(key, str) or not isinstance(value, str):
        raise InvalidTags(f"{_cut(key)}: {_cut(value)} is not a pair of strings", RULE)
    if not 0 < len(key) <= KEY_LENGTH or "=" in key:
        raise InvalidTags(f"key {_cut(key)} is not 1 to {KEY_LENGTH} characters without '='", RULE)
    if len(value) > VALUE_LENGTH:
        raise InvalidTags(
            f"the value of {key!r} has {len(value)} characters, at most {VALUE_LENGTH} are kept",
            RULE,
        )
    if "\x00" in key or "\x00" in value:
        raise InvalidTags(f"tag {key!r} holds a NUL character, which no database stores", RULE)


def _cut(value: object, limit: int = 60) -> str:
    """``value``'s repr, cut short: a bad tag can be any length."""
    shown = repr(value)
    return shown if len(shown) <= limit else f"{shown[: limit - 5]}...{shown[-1]}"
