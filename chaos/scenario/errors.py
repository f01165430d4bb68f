"""Scenario errors: every problem names the file, the line and the field, one problem per line.

Pydantic reports where a value is wrong as a location tuple; this module turns those into
`Problem`s with a readable field path (`faults[2].ports[0]`) and a plain message. The YAML loader
adds file and line; `Scenario.from_dict` has no lines, so its problems carry the source only.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, get_args, get_origin

from pydantic import BaseModel, ValidationError

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a scenario. `line` is 1-based; `field` is a dotted path, None for the file."""

    file: str
    line: int | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class ScenarioError(ValueError):
    """An invalid scenario file or dict. `str()`: `file:line: field.path: what is wrong`, one per line."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class LocatedErrors(ValueError):
    """Raised by model validators to report several problems at precise locations (relative to the model).

    Pydantic puts a validator's `ValueError` at the model's own location; carrying the relative
    locations in the exception lets `problems_from_validation` point at the exact field instead.
    """

    def __init__(self, problems: Iterable[tuple[Loc, str]]) -> None:
        self.problems: list[tuple[Loc, str]] = list(problems)
        super().__init__("; ".join(f"{format_loc(loc) or '(root)'}: {msg}" for loc, msg in self.problems))


def format_loc(loc: Loc) -> str:
    """`("faults", 2, "ports", 0)` -> `faults[2].ports[0]`."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def line_for(lines: dict[Loc, int], loc: Loc) -> int | None:
    """The line of `loc`, or of its nearest ancestor that appears in the file (a defaulted field's parent)."""
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


def _unwrap(tp: Any) -> Any:
    """Strip `Annotated[...]` and `| None` until a list, a model or a union of models is left."""
    while True:
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
        elif get_origin(tp) in (typing.Union, types.UnionType) and type(None) in get_args(tp):
            rest = [a for a in get_args(tp) if a is not type(None)]
            tp = rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]  # noqa: UP007
        else:
            return tp


def _walk(model: type[BaseModel], loc: Loc) -> tuple[Loc, type[BaseModel] | None]:
    """Follow a pydantic location through the model types: (location without union tags, model there).

    Pydantic puts the discriminator value into locations inside tagged unions:
    `("faults", 0, "reset", "phase")` is the field `faults[0].phase` of a `ResetFault`.
    """
    tp: Any = model
    out: list[str | int] = []
    for n, part in enumerate(loc):
        tp = _unwrap(tp)
        if isinstance(part, int) and get_origin(tp) is list:
            tp = get_args(tp)[0]
        elif isinstance(tp, type) and issubclass(tp, BaseModel) and part in tp.model_fields:
            tp = tp.model_fields[part].annotation
        elif get_origin(tp) in (typing.Union, types.UnionType) and (member := _tagged(tp, part)):
            tp = member
            continue  # the tag is not part of the field path
        else:
            return (*out, *loc[n:]), None
        out.append(part)
    tp = _unwrap(tp)
    return tuple(out), tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _tagged(union: Any, tag: str | int) -> type[BaseModel] | None:
    """The member of a tagged union whose `kind` / `type` literal is `tag`."""
    for member in get_args(union):
        if isinstance(member, type) and issubclass(member, BaseModel):
            for name in ("kind", "type"):
                field = member.model_fields.get(name)
                if field is not None and tag in get_args(field.annotation):
                    return member
    return None


def _unknown_field(model: type[BaseModel], loc: Loc) -> str:
    owner = _walk(model, loc[:-1])[1]
    if owner is None:
        return "unknown field"
    fields = ", ".join(owner.model_fields)
    kind = owner.model_fields.get("kind")
    if kind is not None and get_args(kind.annotation):
        return f"not a field of kind {get_args(kind.annotation)[0]!r}; its fields are: {fields}"
    return f"unknown field; expected one of: {fields}"


def _message(error: Any, model: type[BaseModel]) -> str:
    """Pydantic's message, reworded where its wording is about Python rather than the file."""
    kind, msg, ctx = error["type"], error["msg"], error.get("ctx") or {}
    if kind == "extra_forbidden":
        return _unknown_field(model, tuple(error["loc"]))
    if kind == "missing":
        return "required field is missing"
    if kind in ("model_attributes_type", "model_type", "dict_type"):
        return f"expected a mapping, got {_describe(error.get('input'))}"
    if kind == "union_tag_invalid":
        field = ctx["discriminator"].strip("'")
        return f"unknown {field} {ctx['tag']!r}; expected one of {ctx['expected_tags']}"
    if kind == "union_tag_not_found":
        return f"required field {ctx['discriminator']} is missing"
    if kind == "value_error":
        return msg.removeprefix("Value error, ")
    text = f"{msg[0].lower()}{msg[1:]}"
    value = error.get("input")
    if kind.endswith("_type") or kind == "literal_error" or not isinstance(value, dict | list):
        return f"{text}, got {_describe(value)}"
    return text


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def problems_from_validation(exc: ValidationError, model: type[BaseModel]) -> list[tuple[Loc, str]]:
    """(location in the input, message) for every error, `LocatedErrors` expanded to their own fields."""
    out: list[tuple[Loc, str]] = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        located = (error.get("ctx") or {}).get("error")
        if isinstance(located, LocatedErrors):
            out.extend((_walk(model, loc + rel)[0], msg) for rel, msg in located.problems)
        else:
            out.append((_walk(model, loc)[0], _message(error, model)))
    return out
