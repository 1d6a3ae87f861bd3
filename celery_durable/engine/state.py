"""State models: validation, JSON dumping, and how parallel writes to a field combine."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError

from celery_durable.errors import (
    InvalidInput,
    NotJSONSerializable,
    StateSchemaMismatch,
    UnknownStateFields,
)
from celery_durable.saga.shape import GraphShape


@dataclass(frozen=True, slots=True)
class Reduce:
    """Field annotation: ``items: Annotated[list[str], Reduce(operator.add)] = []``.

    Every update to the field is combined with the current value by ``fn(current, update)``,
    so parallel branches may write it without a merge conflict.
    """

    fn: Callable[[Any, Any], Any]


def reducers(model: type[BaseModel]) -> dict[str, Callable[[Any, Any], Any]]:
    found = {}
    for name, field in model.model_fields.items():
        for marker in field.metadata:
            if isinstance(marker, Reduce):
                found[name] = marker.fn
    return found


def validate(
    graph: str, model: type[BaseModel], values: Mapping[str, Any], node: str | None = None
) -> BaseModel:
    """``values`` as the model; ``node``: they are the state after that node's update."""
    try:
        return model.model_validate(dict(values))
    except ValidationError as exc:
        detail = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors(include_url=False)
        )
        raise InvalidInput(graph, detail, node) from exc


def fit(graph: GraphShape, values: Mapping[str, Any]) -> tuple[BaseModel, Mapping[str, Any]]:
    """A stored state as the model deployed now, and the dict updates merge onto.

    A state that does not validate, or that holds fields the model no longer has, was written
    under an older model: the graph's upgrade hook (old dict in, new dict out) migrates it, so
    a run in flight survives a deploy. Without a hook, or if its result does not validate
    either, StateSchemaMismatch names the fields, and the run stops for an operator.
    """
    model, upgrade = graph.state, graph.upgrader
    # Fields the model dropped go to the hook; without one, validation ignores them.
    if upgrade is None or not unknown_fields(model, values):
        try:
            return model.model_validate(dict(values)), values
        except ValidationError as exc:
            if upgrade is None:
                raise _mismatch(graph.name, exc, upgraded=False) from exc
    assert upgrade is not None
    upgraded = upgrade(dict(values))
    try:
        return model.model_validate(upgraded), upgraded
    except ValidationError as exc:
        raise _mismatch(graph.name, exc, upgraded=True) from exc


def _mismatch(graph: str, exc: ValidationError, upgraded: bool) -> StateSchemaMismatch:
    errors = exc.errors(include_url=False)
    fields = [".".join(str(p) for p in err["loc"]) for err in errors]
    detail = "; ".join(
        f"{f or '<root>'}: {err['msg']}" for f, err in zip(fields, errors, strict=True)
    )
    return StateSchemaMismatch(graph, [f for f in fields if f], detail, upgraded)


def apply_update(
    state: Mapping[str, Any],
    update: Mapping[str, Any],
    combine: Mapping[str, Callable[[Any, Any], Any]],
) -> dict[str, Any]:
    merged = dict(state)
    for key, value in update.items():
        merged[key] = combine[key](merged.get(key), value) if key in combine else value
    return merged


def unknown_fields(model: type[BaseModel], keys: Iterable[str]) -> list[str]:
    """Keys the model has no field for, which validation would drop without a word (none, if
    the model allows extra fields)."""
    if model.model_config.get("extra") == "allow":
        return []
    return sorted(set(keys) - set(model.model_fields))


def refuse_unknown(graph: GraphShape, node: str, update: Mapping[str, Any]) -> None:
    """A node's update: keys the state model does not have would be dropped by validation."""
    unknown = unknown_fields(graph.state, update)
    if unknown:
        raise UnknownStateFields(graph.name, node, unknown)


def check_fields(graph: GraphShape, values: object) -> None:
    """Input or a patch: a mapping of fields the state model has (validation would drop the
    others without a word), unless the model allows extra fields."""
    if not isinstance(values, Mapping):
        raise InvalidInput(
            graph.name, f"expected a mapping of field names to values, got {type(values).__name__}"
        )
    unknown = unknown_fields(graph.state, values)
    if unknown:
        raise InvalidInput(
            graph.name,
            f"the state model {graph.state.__name__} has no field(s) {', '.join(unknown)}",
        )


def dump(graph: str, model: BaseModel) -> dict[str, Any]:
    """The state as JSON values, or NotJSONSerializable naming what could not be dumped."""
    try:
        return model.model_dump(mode="json")
    except PydanticSerializationError as exc:
        raise NotJSONSerializable(f"The state of graph {graph!r}", str(exc)) from exc
