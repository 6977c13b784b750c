"""Typed, frozen experiment configs: command-line overrides and validation with clear errors."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing


class ConfigError(ValueError):
    """A config field has a value outside its allowed set; the message names both."""


def require(ok: bool, field: str, value, allowed: str) -> None:
    """Raise ConfigError naming ``field``, its ``value`` and the ``allowed`` values unless ``ok``."""
    if not ok:
        raise ConfigError(f"{field}={value!r} is not allowed: {field} must be {allowed}")


def require_choice(field: str, value, choices) -> None:
    require(value in choices, field, value, "one of " + ", ".join(map(repr, choices)))


def normalise(cfg) -> None:
    """Coerce fields to their annotated types in place (1 -> 1.0, [16] -> (16,)): one config, one run id."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value, annotation = getattr(cfg, f.name), hints[f.name]
        if annotation is float and isinstance(value, int) and not isinstance(value, bool):
            object.__setattr__(cfg, f.name, float(value))
        elif typing.get_origin(annotation) is tuple and isinstance(value, list):
            object.__setattr__(cfg, f.name, tuple(value))


def _parse(text: str, annotation, field: str):
    """Turn a command-line string into a value of the field's annotated type."""
    origin = typing.get_origin(annotation)
    try:
        if annotation is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if annotation in (int, float, str):
            return annotation(text)
        if origin is tuple:
            (item, *_) = typing.get_args(annotation)
            parts = [p for p in text.replace("x", ",").split(",") if p.strip()] if item is int else text.split(",")
            return tuple(_parse(p.strip(), item, field) for p in parts)
    except ValueError:
        raise ConfigError(f"{field}={text!r} is not allowed: {field} must be a {_type_name(annotation)}") from None
    raise ConfigError(f"{field} cannot be set from the command line")


def _type_name(annotation) -> str:
    if typing.get_origin(annotation) is tuple:
        return f"comma-separated list of {typing.get_args(annotation)[0].__name__}"
    return getattr(annotation, "__name__", str(annotation))


def override(cfg, overrides: dict[str, str]):
    """A copy of ``cfg`` with string ``overrides`` parsed to each field's type, then validated."""
    hints = typing.get_type_hints(type(cfg))
    fields = {f.name for f in dataclasses.fields(cfg)}
    values = {}
    for name, text in overrides.items():
        key = name.replace("-", "_")
        if key not in fields:
            raise ConfigError(f"unknown field {name!r}: allowed fields are {', '.join(sorted(fields))}")
        values[key] = _parse(text, hints[key], key)
    return dataclasses.replace(cfg, **values)


LATE = "minisub_late"  # field metadata key: see ``late``


def late(default):
    """A config field added after results were stored under the config's run ids.

    While it holds its default it is left out of ``to_dict`` (so of ``digest``): every stored run
    keeps its id, and a run that sets it gets a new one.
    """
    return dataclasses.field(default=default, metadata={LATE: True})


def _plain(obj):
    """``dataclasses.asdict``, leaving out late fields that hold their defaults."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not (f.metadata.get(LATE) and getattr(obj, f.name) == f.default)}
    if isinstance(obj, (list, tuple)):
        return [_plain(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


def to_dict(cfg) -> dict:
    return json.loads(json.dumps(_plain(cfg)))


def digest(cfg) -> str:
    """A short, stable hash of every field of the config (late fields only when set): the run id."""
    blob = json.dumps({"type": type(cfg).__name__, **to_dict(cfg)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
