"""Typed, frozen experiment configs: command-line overrides and validation with clear errors."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import math
import re
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
    """Coerce fields to their annotated types in place (1 -> 1.0, [16] -> (16,)): one config, one run id.

    Then refuse what no field may hold: a non-finite number, or a value outside a field's declared
    ``choices`` (see ``choice``).
    """
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value, annotation = getattr(cfg, f.name), hints[f.name]
        if annotation is float and isinstance(value, int) and not isinstance(value, bool):
            object.__setattr__(cfg, f.name, float(value))
        elif typing.get_origin(annotation) is tuple and isinstance(value, list):
            object.__setattr__(cfg, f.name, tuple(value))
    check_fields(cfg)


CHOICES = "minisub_choices"  # field metadata key: the closed set of values a field allows


def choice(default, choices, **kw):
    """A field whose value must be one of ``choices``: checked on construction, listed by ``--help``."""
    return dataclasses.field(default=default, metadata={CHOICES: tuple(choices), **kw.pop("metadata", {})}, **kw)


def check_fields(cfg) -> None:
    """ConfigError for a non-finite number (NaN, inf) in any field, or a value outside its ``choices``."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        items = value if isinstance(value, tuple) else (value,)
        for x in items:
            if isinstance(x, float) and not math.isfinite(x):
                also = _probe_allowed(cfg, (f.name,), float) if x is value else None  # what validation asks too
                require(False, f.name, value, ("a finite number" if x is value else "finite numbers")
                        + (f" ({also})" if also else ""))
        if CHOICES in f.metadata:
            require_choice(f.name, value, f.metadata[CHOICES])


def split_top(text: str, sep: str = ",") -> list[str]:
    """``text`` split at each ``sep`` outside parentheses: ``'a(x=1,y=2),b'`` -> ``['a(x=1,y=2)', 'b']``."""
    parts, depth, start = [], 0, 0
    for k, ch in enumerate(text):
        depth += (ch == "(") - (ch == ")")
        if ch == sep and depth == 0:
            parts.append(text[start:k])
            start = k + 1
    return [*parts, text[start:]]


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
            if dataclasses.is_dataclass(item) and hasattr(item, "parse"):  # e.g. --arms (pipeline.Arm.parse)
                return tuple(item.parse(p.strip()) for p in split_top(text) if p.strip())
            parts = [p for p in text.replace("x", ",").split(",") if p.strip()] if item is int else text.split(",")
            return tuple(_parse(p.strip(), item, field) for p in parts)
    except ConfigError:
        raise
    except ValueError:
        raise ConfigError(f"{field}={text!r} is not allowed: {field} must be a {_type_name(annotation)}") from None
    raise ConfigError(f"{field} cannot be set from the command line")


def _type_name(annotation) -> str:
    if typing.get_origin(annotation) is tuple:
        item = typing.get_args(annotation)[0]
        form = f" {item.FORMAT}" if hasattr(item, "FORMAT") else ""
        return f"comma-separated list of {getattr(item, '__name__', item)}{form}"
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


# --- what the command line shows: every field, its type, default and allowed values ------------
@dataclasses.dataclass(frozen=True)
class FieldInfo:
    """One settable field of a config, nested configs flattened: what ``--help`` lists."""

    name: str  # the command-line name (the field's own name; dotted only where two would clash)
    path: tuple[str, ...]  # attribute path from the top config
    annotation: object
    default: object  # the value in the config described (a preset)
    allowed: str | None  # from the validation itself (``choices`` or a probe of ``validate``)
    note: str  # the comment beside the field in its class, if any
    settable: bool  # whether the command line can give it a value
    codec: "Codec | None" = None  # a ``nested`` field read and written through a codec

    @property
    def type_name(self) -> str:
        return _type_name(self.annotation)

    @property
    def text(self) -> str:
        """The default as the command line writes it: ``256,256``, ``true``, ``a=shared:aux,...``."""
        return show(self.default)


def show(value) -> str:
    """A field's value in its command-line form (the inverse of ``override``'s parsing)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(show(v) for v in value)
    return str(value)


def describe(cfg) -> list[FieldInfo]:
    """Every field of ``cfg`` (nested dataclass configs flattened by field name), for ``--help``.

    Generated from the dataclass, so it never goes stale. Allowed values come from the same place
    as validation: a field's declared ``choices``, else the message the config's own validation
    gives for a value no field allows (an unknown word, a huge negative number).
    """
    return _flat_fields(cfg, probe=True)


def _flat_fields(cfg, probe: bool) -> list[FieldInfo]:
    found: list[FieldInfo] = []
    _describe(cfg, cfg, (), found, probe)
    seen: dict[str, int] = {}
    for info in found:
        seen[info.name] = seen.get(info.name, 0) + 1
    return [dataclasses.replace(i, name=".".join(i.path)) if seen[i.name] > 1 else i for i in found]


def _describe(top, cfg, prefix: tuple[str, ...], out: list, probe: bool, spec: dict | None = None,
              dotted: str = "") -> None:
    """``spec``: the ``nested`` metadata of the field being walked (renamed names, codecs), if any."""
    hints, notes = typing.get_type_hints(type(cfg)), _comments(type(cfg))
    for f in dataclasses.fields(cfg):
        value, annotation, path = getattr(cfg, f.name), hints[f.name], (*prefix, f.name)
        where, codec = f"{dotted}{f.name}", (spec or {}).get("codecs", {}).get(f"{dotted}{f.name}")
        if dataclasses.is_dataclass(annotation) and dataclasses.is_dataclass(value) and codec is None:
            inner = f.metadata.get(NESTED, spec)
            _describe(top, value, path, out, probe, inner, "" if NESTED in f.metadata else where + ".")
            continue
        name = (spec or {}).get("rename", {}).get(where, f.name)
        if codec is not None:
            annotation, value = codec.annotation, codec.encode(value)
        allowed = ("one of " + ", ".join(map(repr, f.metadata[CHOICES]))) if CHOICES in f.metadata else \
            _probe_allowed(top, path, annotation, codec) if probe else None
        out.append(FieldInfo(name, path, annotation, value, allowed, notes.get(f.name, ""), _settable(annotation),
                             codec))


def _settable(annotation) -> bool:
    if annotation in (bool, int, float, str):
        return True
    if typing.get_origin(annotation) is tuple:
        item = typing.get_args(annotation)[0]
        return item in (int, float, str) or (dataclasses.is_dataclass(item) and hasattr(item, "parse"))
    return False


_PROBES = {str: "\x00?", int: -(10**9), float: -1e300}


def _probe_allowed(top, path: tuple[str, ...], annotation, codec=None) -> str | None:
    """What the config's validation says ``path`` must be, asked with a value no field allows."""
    if annotation is bool:
        return "true or false"
    item = typing.get_args(annotation)[0] if typing.get_origin(annotation) is tuple else annotation
    if item not in _PROBES:
        return None
    probe = (_PROBES[item],) if item is not annotation else _PROBES[item]
    try:
        _replace_path(top, path, codec.decode(probe) if codec else probe)
    except ConfigError as e:
        name = re.escape(path[-1])
        m = re.match(rf"^{name}=.* is not allowed: {name} must be (.*)$", str(e))
        return m.group(1) if m else None
    except Exception:  # noqa: BLE001 -- a probe that breaks something else tells nothing
        return None
    return None


def _replace_path(cfg, path: tuple[str, ...], value):
    if len(path) == 1:
        return dataclasses.replace(cfg, **{path[0]: value})
    return dataclasses.replace(cfg, **{path[0]: _replace_path(getattr(cfg, path[0]), path[1:], value)})


@functools.lru_cache(maxsize=None)
def _comments(cls) -> dict[str, str]:
    """``{field: comment}`` from the ``# ...`` beside each field in ``cls``'s source (none if unreadable)."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^\s+(\w+)\s*:[^#\n]*#\s*(.+)$", source, re.M)}


def override_fields(cfg, overrides: dict[str, str]):
    """``override`` that also reaches inside nested dataclass configs, by the names ``describe`` lists.

    ``{'s': '0.5'}`` sets ``cfg.world.s`` when only the nested world has an ``s``; a name two
    levels share is written as its dotted path (``recipe.seeds``). Each level is replaced once, so
    fields that are only valid together can be set together.
    """
    infos = _flat_fields(cfg, probe=False)
    values = {}
    for name, text in overrides.items():
        key = name.replace("-", "_")
        info = _find(infos, key, name)
        values[info.name] = _parse(text, info.annotation, info.name)
    return replace(cfg, **values)


def _find(infos: list[FieldInfo], key: str, name: str | None = None) -> FieldInfo:
    """The field ``describe`` lists as ``key`` (its name, or its dotted path)."""
    by_name = {i.name: i for i in infos} | {".".join(i.path): i for i in infos}
    if key not in by_name:
        nested = [i.name for i in infos if key in i.path[:-1]]
        if nested:
            raise ConfigError(f"{key} cannot be set from the command line: set its fields by name "
                              f"({', '.join('--' + n for n in nested[:4])}, ...)")
        raise ConfigError(f"unknown field {name or key!r}: allowed fields are {', '.join(sorted(i.name for i in infos))}")
    return by_name[key]


def replace(cfg, **values):
    """``dataclasses.replace`` by the names ``describe`` lists (typed values, not text): each value goes to
    the (nested) config that owns it, through its codec; every config is rebuilt and validated once,
    innermost first. An error names the field as the command line does (a renamed field by its name)."""
    infos = _flat_fields(cfg, probe=False)
    tree: dict = {}
    for key, value in values.items():
        info = _find(infos, key)
        node = tree
        for part in info.path[:-1]:
            node = node.setdefault(part, {})
        node[info.path[-1]] = info.codec.decode(value) if info.codec else value
    try:
        return _replace_tree(cfg, tree)
    except ConfigError as e:
        message = str(e)
        for info in infos:
            leaf = info.path[-1]
            if leaf != info.name and message.startswith(f"{leaf}="):
                message = f"{info.name}=" + message[len(leaf) + 1:].replace(f": {leaf} must", f": {info.name} must", 1)
        raise ConfigError(message) from None


def flat_value(cfg, name: str):
    """The value of the field ``describe`` lists as ``name`` (a codec's field encoded, as ``to_dict`` stores it)."""
    return _find(_flat_fields(cfg, probe=False), name).default


def _replace_tree(cfg, tree: dict):
    return dataclasses.replace(cfg, **{k: _replace_tree(getattr(cfg, k), v) if isinstance(v, dict) else v
                                       for k, v in tree.items()})


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
    """A config field holding another config, shown flat: its fields (and theirs, recursively) enter
    ``to_dict`` (so the run id), ``describe`` and the command line under their own names, as if they
    were the parent's. ``rename``: dotted paths inside the nested config to the flat names they take
    (``{"world.kind": "world"}``); ``codecs``: dotted path -> ``Codec``. Flat names must not collide.
    """
    return dataclasses.field(default=default, metadata={NESTED: {"rename": dict(rename or {}),
                                                                  "codecs": dict(codecs or {})}})


def _flat_values(obj, spec: dict, dotted: str = ""):
    """(flat name, value) of a nested config's fields for ``to_dict`` (late fields at defaults left out)."""
    for f in dataclasses.fields(obj):
        value, where = getattr(obj, f.name), f"{dotted}{f.name}"
        codec = spec["codecs"].get(where)
        if dataclasses.is_dataclass(value) and codec is None:
            yield from _flat_values(value, spec, where + ".")
        elif not (f.metadata.get(LATE) and value == f.default):
            yield spec["rename"].get(where, f.name), codec.encode(value) if codec else value
