"""An answer still on its way: what a write returns when the caller has work to do before it
needs the answer (arq's pipeline futures, not a callback handed down)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Answer(ABC, Generic[T]):
    """``result()`` collects the answer once; a second call returns it again, or raises the
    same error again, and never touches the database twice."""

    _settled = False
    _value: T
    _error: BaseException | None = None

    def result(self) -> T:
        """The answer, waiting for it if it is not in yet; raises what the write raised."""
        self.settle()
        if self._error is not None:
            raise self._error
        return self._value

    def settle(self) -> None:
        """Collect the answer and keep it for ``result()``: so a connection is free for its
        next statement even if this answer's owner never asks. Raises only an interruption
        (KeyboardInterrupt, SystemExit), which is not the write's to keep."""
        if self._settled:
            return
        try:
            self._value = self._collect()
        except BaseException as exc:
            self._error = exc
            if not isinstance(exc, Exception):
                raise
        finally:
            self._settled = True

    @abstractmethod
    def _collect(self) -> T:
        """Wait for the answer; called once."""


class Deferred(Answer[T]):
    """A write made when its answer is asked for (SQLite: no server works while the caller
    does, so the caller's work between send and result comes first, as it would while a
    server answered), its answer or error kept for ``result()``."""

    def __init__(self, write: Callable[[], T]) -> None:
        self._write = write

    def _collect(self) -> T:
        return self._write()
