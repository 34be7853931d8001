"""Load, validate, override and dump the typed config tree.

YAML files may say ``extends: base.yaml`` (a path relative to the file) and then state only what
differs; mappings merge key by key, everything else replaces. Validation is generic over the
dataclasses in ``trainer.config.schema``: unknown keys (with the closest valid one suggested),
types, ``Literal`` choices and numeric ranges from field metadata. Every failure is a
``ConfigError`` whose message names the full key path.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from trainer.config.errors import ConfigError
from trainer.config.schema import Config

# ---------------------------------------------------------------------------------------------
# Reading YAML with `extends:`


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (check the path; recipes live in configs/)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"YAML syntax error in {path}{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (model:, data:, ...), got {type(data).__name__}")
    return data


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``: nested mappings merge, anything else replaces."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_with_extends(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The raw mapping of ``path`` with its ``extends:`` chain applied."""
    path = Path(path).resolve()
    if path in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, path))
        raise ConfigError(f"`extends:` cycle: {cycle} (remove one of these extends)")
    data = _read_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: `extends:` must be one file path, got {parent!r}")
    base = read_with_extends(path.parent / parent, (*_chain, path))
    return deep_merge(base, data)


# ---------------------------------------------------------------------------------------------
# Type conversion and validation


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "mapping"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """``value`` as type ``tp`` or a ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, key)
            except ConfigError as err:
                errors.append(err)
        raise errors[0] if len(errors) == 1 else ConfigError(
            f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(repr(c) for c in choices)}{hint}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # YAML 1.1 reads "1e-3" (no dot) as a string; accept what Python reads as a number.
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _check_range(value: Any, meta: typing.Mapping[str, Any], key: str) -> None:
    if value is None or isinstance(value, bool):
        return
    items = value if isinstance(value, list) else [value]
    for v in items:
        if not isinstance(v, (int, float)):
            return
        if meta.get("ge") is not None and v < meta["ge"]:
            raise ConfigError(f"{key}: {value} is out of range, must be >= {meta['ge']}")
        if meta.get("gt") is not None and v <= meta["gt"]:
            raise ConfigError(f"{key}: {value} is out of range, must be > {meta['gt']}")
        if meta.get("le") is not None and v > meta["le"]:
            raise ConfigError(f"{key}: {value} is out of range, must be <= {meta['le']}")


def build_dataclass(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Instantiate dataclass ``cls`` from ``data``, validating every key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
        full = f"{prefix}{key}"
        hint = f"; did you mean {prefix}{close[0]}?" if close else f"; valid keys here: {', '.join(fields)}"
        raise ConfigError(f"unknown config key {full!r}{hint}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        tp = hints[name]
        key = f"{prefix}{name}"
        if dataclasses.is_dataclass(tp):
            kwargs[name] = build_dataclass(tp, value if value is not None else {}, f"{key}.")
            continue
        converted = _convert(value, tp, key)
        _check_range(converted, fields[name].metadata, key)
        kwargs[name] = converted
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(str(err)) from None


# ---------------------------------------------------------------------------------------------
# Overrides


def _field_type(path: list[str]) -> Any:
    """The declared type at a dotted path, or None inside a free-form mapping."""
    cls: Any = Config
    for i, part in enumerate(path):
        if not dataclasses.is_dataclass(cls):
            return None  # inside dict[str, Any]: anything goes
        hints = typing.get_type_hints(cls)
        if part not in hints:
            names = list(hints)
            prefix = ".".join(path[:i])
            prefix = f"{prefix}." if prefix else ""
            # the closest whole key first ("trian.max_steps" -> "train.max_steps"), then the closest name here
            whole = difflib.get_close_matches(".".join(path), _all_keys(), n=1, cutoff=0.75)
            close = whole or [f"{prefix}{c}" for c in difflib.get_close_matches(part, names, n=1,
                                                                                           cutoff=0.5)]
            hint = f"; did you mean {close[0]}?" if close else f"; valid keys here: {', '.join(names)}"
            raise ConfigError(f"unknown config key {'.'.join(path)!r}{hint}")
        cls = hints[part]
    return cls


def _all_keys(cls: Any = Config, prefix: str = "") -> list[str]:
    """Every dotted key path of the schema (``train.max_steps``, ``deq.precision.state``, ...)."""
    out: list[str] = []
    for name, tp in typing.get_type_hints(cls).items():
        out += _all_keys(tp, f"{prefix}{name}.") if dataclasses.is_dataclass(tp) else [f"{prefix}{name}"]
    return out


def apply_override(data: dict[str, Any], assignment: str) -> dict[str, Any]:
    """Apply one ``a.b.c=value`` to the raw mapping (the value is parsed as YAML, then typed)."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. --set train.max_steps=5")
    key, raw = assignment.split("=", 1)
    path = key.strip().split(".")
    if not all(path):
        raise ConfigError(f"--set {assignment!r}: empty key segment in {key!r}")
    tp = _field_type(path)
    if tp is str:
        value: Any = raw  # a string field takes the text as written ("1e-3" stays a string)
    else:
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
    out = dict(data)
    node = out
    for part in path[:-1]:
        child = node.get(part)
        node[part] = dict(child) if isinstance(child, dict) else {}
        node = node[part]
    node[path[-1]] = value
    return out


# ---------------------------------------------------------------------------------------------
# Public API


def config_from_dict(data: dict[str, Any]) -> Config:
    return build_dataclass(Config, data)


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """The validated config of ``path`` (defaults when None) with ``--set`` overrides applied."""
    data = read_with_extends(path) if path is not None else {}
    for assignment in overrides:
        data = apply_override(data, assignment)
    return config_from_dict(data)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML (loadable again by ``load_config``)."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)


def flatten_config(cfg: Config | dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model.name": "tiny", ...}``: the form MLflow params and hashes use."""
    data = config_to_dict(cfg) if not isinstance(cfg, dict) else cfg
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(flatten_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
