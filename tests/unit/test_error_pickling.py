"""Every error pickles to itself: Celery's prefork pool hands a task's exception to the worker
through pickle, and an error that does not come back whole is reported, in the log and in
Flower, as its nearest base class that does."""

from __future__ import annotations

import inspect
import pickle
from datetime import UTC, datetime
from typing import Any

import pytest
from celery.utils.serialization import get_pickleable_exception

import celery_durable.errors as errors

SAMPLES: dict[str, Any] = {
    "str": "x",
    "str | None": "x",
    "int": 3,
    "float": 1.5,
    "bool": True,
    "object": "value",
    "Any": "value",
    "datetime": datetime(2026, 1, 1, tzinfo=UTC),
    "BaseException": ValueError("cause"),
    "Iterable[str]": ["a", "b"],
    "list[str]": ["a", "b"],
    "Mapping[str, Any]": {"type": "ValueError", "message": "boom", "node": "n"},
    "Mapping[str, Any] | None": {"type": "ValueError", "message": "boom", "node": "n"},
    "Mapping[str, str]": {"o-1": "running"},
}


def _errors() -> list[type[errors.DurableError]]:
    found = [
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.DurableError)
    ]
    assert len(found) > 40
    return found


def _made(cls: type[errors.DurableError]) -> errors.DurableError:
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    if params and params[0].kind == inspect.Parameter.VAR_POSITIONAL:
        return cls("something went wrong")
    values = [SAMPLES[str(p.annotation)] for p in params if p.default is inspect.Parameter.empty]
    return cls(*values)


@pytest.mark.parametrize("cls", _errors(), ids=lambda c: c.__name__)
def test_every_error_pickles_to_itself(cls: type[errors.DurableError]) -> None:
    error = _made(cls)
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is cls
    assert str(back) == str(error) and back.args == error.args
    assert back.__dict__ == error.__dict__ or _same_except_exceptions(back, error)
    assert type(get_pickleable_exception(error)) is cls  # what Celery reports


def _same_except_exceptions(a: Any, b: Any) -> bool:
    """Exceptions kept as attributes compare by type and message."""
    if a.__dict__.keys() != b.__dict__.keys():
        return False
    for key, value in a.__dict__.items():
        other = b.__dict__[key]
        if isinstance(value, BaseException):
            if (type(value), str(value)) != (type(other), str(other)):
                return False
        elif value != other:
            return False
    return True
