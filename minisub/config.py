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
    """A copy of ``cfg`` with string ``overrides`` parsed to each field's type, then validated.

    Fields of a ``nested`` config are set by their flat names (see ``flat_fields``).
    """
    fields = flat_fields(cfg)
    values = {}
    for name, text in overrides.items():
        key = name.replace("-", "_")
        if key not in fields:
            raise ConfigError(f"unknown field {name!r}: allowed fields are {', '.join(sorted(fields))}")
        values[key] = _parse(text, fields[key].annotation, key)
    return replace(cfg, **values)


LATE = "minisub_late"  # field metadata key: see ``late``


def late(default):
    """A config field added after results were stored under the config's run ids.

    While it holds its default it is left out of ``to_dict`` (so of ``digest``): every stored run
    keeps its id, and a run that sets it gets a new one.
    """
    return dataclasses.field(default=default, metadata={LATE: True})


def _plain(obj):
    """``dataclasses.asdict``, leaving out late fields that hold their defaults; ``nested`` fields flat."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if f.metadata.get(LATE) and value == f.default:
                continue
            if NESTED in f.metadata:
                out.update({name: _plain(v) for name, v in _flat_values(value, f.metadata[NESTED])})
            else:
                out[f.name] = _plain(value)
        return out
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


# --- nested configs, shown flat -----------------------------------------------------------------
NESTED = "minisub_nested"  # field metadata key: see ``nested``


@dataclasses.dataclass(frozen=True)
class Codec:
    """How a nested field that is not a plain value reads and writes flat: ``encode(value)`` is what
    ``to_dict`` stores and the command line sets (of type ``annotation``), ``decode`` its inverse
    (raising ConfigError for a value it cannot read)."""

    annotation: object
    encode: typing.Callable
    decode: typing.Callable


def nested(default, *, rename: dict[str, str] | None = None, codecs: dict[str, Codec] | None = None):
    """A config field holding another config, shown flat: its fields (and theirs, recursively)
    enter ``to_dict`` (so the run id) and the command line under their own names, as if they were
    the parent's. ``rename``: dotted paths inside the nested config to the flat names they take
    (``{"world.kind": "world"}``); ``codecs``: dotted path -> ``Codec``. Flat names must not collide.
    """
    return dataclasses.field(default=default, metadata={NESTED: {"rename": dict(rename or {}),
                                                                  "codecs": dict(codecs or {})}})


@dataclasses.dataclass(frozen=True)
class FlatField:
    path: tuple[str, ...]  # attribute names from the top config to the field
    annotation: object
    codec: Codec | None = None


def _walk(obj, spec: dict, prefix: tuple[str, ...], dotted: str = ""):
    """(flat name, FlatField, value) of every leaf field of a nested config, depth first."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, where = getattr(obj, f.name), f"{dotted}{f.name}"
        if dataclasses.is_dataclass(value) and where not in spec["codecs"]:
            yield from _walk(value, spec, (*prefix, f.name), where + ".")
            continue
        codec = spec["codecs"].get(where)
        yield (spec["rename"].get(where, f.name), FlatField((*prefix, f.name), codec.annotation if codec
                                                            else hints[f.name], codec), value, f)


def _flat_values(obj, spec: dict):
    """(flat name, value) of a nested config's fields for ``to_dict`` (late fields at defaults left out)."""
    for name, field, value, f in _walk(obj, spec, ()):
        if not (f.metadata.get(LATE) and value == f.default):
            yield name, field.codec.encode(value) if field.codec else value


def flat_fields(cfg) -> dict[str, FlatField]:
    """Every field settable on ``cfg`` by name: its own, and its ``nested`` configs' under their flat names."""
    hints = typing.get_type_hints(type(cfg))
    out = {}
    for f in dataclasses.fields(cfg):
        leaves = ([(n, field) for n, field, _, _ in _walk(getattr(cfg, f.name), f.metadata[NESTED], (f.name,))]
                  if NESTED in f.metadata else [(f.name, FlatField((f.name,), hints[f.name]))])
        for name, field in leaves:
            if name in out:
                raise TypeError(f"{type(cfg).__name__}: the flat name {name!r} is taken twice "
                                f"({'.'.join(out[name].path)} and {'.'.join(field.path)})")
            out[name] = field
    return out


def flat_value(cfg, name: str):
    """The value of the flat field ``name`` of ``cfg`` (encoded as ``to_dict`` stores it)."""
    field = flat_fields(cfg)[name]
    value = cfg
    for part in field.path:
        value = getattr(value, part)
    return field.codec.encode(value) if field.codec else value


def replace(cfg, **values):
    """``dataclasses.replace`` by flat names: each value goes to the (nested) config that owns it, every
    config is rebuilt (and validated) once, innermost first. Errors name the flat field."""
    fields = flat_fields(cfg)
    changes = {}
    for name, value in values.items():
        if name not in fields:
            raise ConfigError(f"unknown field {name!r}: allowed fields are {', '.join(sorted(fields))}")
        field = fields[name]
        changes[field.path] = field.codec.decode(value) if field.codec else value
    try:
        return _rebuild(cfg, changes)
    except ConfigError as e:  # a renamed field's error, told by the name the user knows
        message = str(e)
        for name, field in fields.items():
            leaf = field.path[-1]
            if leaf != name and message.startswith(f"{leaf}="):
                message = f"{name}=" + message[len(leaf) + 1:].replace(f": {leaf} must", f": {name} must", 1)
        raise ConfigError(message) from None


def _rebuild(obj, changes: dict[tuple[str, ...], object]):
    own = {path[0]: v for path, v in changes.items() if len(path) == 1}
    for name in dict.fromkeys(path[0] for path in changes if len(path) > 1):
        inner = {path[1:]: v for path, v in changes.items() if len(path) > 1 and path[0] == name}
        own[name] = _rebuild(getattr(obj, name), inner)
    return dataclasses.replace(obj, **own)
