"""Typed experiment configs: frozen dataclasses, command-line overrides, JSON round trips.

A config is a frozen dataclass whose fields are `int`, `float`, `bool`, `str`, `tuple[int, ...]`,
`tuple[float, ...]`, `tuple[str, ...]` or another config dataclass (nested, addressed with dotted keys):

    python experiments/vae_digits.py --train.steps 500 --model.latent_dim 8 --workdir /tmp/vae

Every override is checked against the field's type before anything is built or compiled; an unknown
key is rejected with the list of valid keys.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import types
import typing
from typing import Any, Sequence


class ConfigError(ValueError):
    """A config key or value that cannot be used; the message names the key and the fix."""


# ----------------------------------------------------------------------------- field introspection


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def flatten(cfg, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value for every leaf field of a (nested) config."""
    out = {}
    for name, typ in _field_types(type(cfg)).items():
        value = getattr(cfg, name)
        if dataclasses.is_dataclass(typ):
            out.update(flatten(value, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = value
    return out


def _leaf_types(cls, prefix: str = "") -> dict[str, Any]:
    out = {}
    for name, typ in _field_types(cls).items():
        if dataclasses.is_dataclass(typ):
            out.update(_leaf_types(typ, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = typ
    return out


def _type_name(typ) -> str:
    if typing.get_origin(typ) is tuple:
        return f"tuple[{typing.get_args(typ)[0].__name__}, ...]"
    if typing.get_origin(typ) is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(typ))
    return getattr(typ, "__name__", str(typ))


def _convert(key: str, typ, value):
    """Converts a string (from the command line) or a JSON value to `typ`, or raises ConfigError."""
    origin = typing.get_origin(typ)
    if origin is typing.Literal:
        choices = typing.get_args(typ)
        if value not in choices:
            raise ConfigError(f"{key}={value!r} is not one of {list(choices)}")
        return value
    if origin is tuple:
        (elem,) = [a for a in typing.get_args(typ) if a is not Ellipsis]
        if isinstance(value, str):
            value = [v for v in value.replace(" ", "").split(",") if v] if value else []
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r}: expected a comma-separated list of {elem.__name__}")
        return tuple(_convert(key, elem, v) for v in value)
    if origin in (typing.Union, types.UnionType):  # Optional[X]
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("", "none")):
            return None
        return _convert(key, args[0], value)
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}={value!r}: expected a bool (true/false)")
    if typ is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{key}={value!r}: expected an int")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}={value!r}: expected an int") from None
    if typ is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}={value!r}: expected a float") from None
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r}: expected a string")
        return value
    raise ConfigError(f"{key}: unsupported config type {typ}")


# ----------------------------------------------------------------------------- overrides


def override(cfg, overrides: dict[str, Any]):
    """Returns a copy of `cfg` with dotted-key overrides applied, each converted to its field's type."""
    leaf_types = _leaf_types(type(cfg))
    unknown = sorted(set(overrides) - set(leaf_types))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {unknown}; valid keys are: {', '.join(sorted(leaf_types))}"
        )
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        node = nested
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = _convert(key, leaf_types[key], value)
    return _replace_nested(cfg, nested)


def _replace_nested(cfg, nested: dict[str, Any]):
    changes = {}
    for name, value in nested.items():
        if isinstance(value, dict):
            changes[name] = _replace_nested(getattr(cfg, name), value)
        else:
            changes[name] = value
    out = dataclasses.replace(cfg, **changes)
    validate = getattr(out, "validate", None)
    if validate is not None:
        validate()
    return out


def to_dict(cfg) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(cls, d: dict[str, Any]):
    """Rebuilds a config from `to_dict` output (e.g. a workdir's config.json), type-checked."""
    kwargs = {}
    types_ = _field_types(cls)
    for name, value in d.items():
        if name not in types_:
            raise ConfigError(f"unknown config key {name!r} for {cls.__name__}; valid: {sorted(types_)}")
        typ = types_[name]
        kwargs[name] = from_dict(typ, value) if dataclasses.is_dataclass(typ) else _convert(name, typ, value)
    return cls(**kwargs)


# ----------------------------------------------------------------------------- command line


def parse_args(cfg, argv: Sequence[str] | None = None, description: str = "", extra=None):
    """Parses `--key value` / `--key=value` overrides of `cfg` plus `--workdir`.

    Returns (cfg, args) where args holds --workdir and any options added by `extra(parser)`.
    `--help` lists every key with its type and default. Errors exit with status 2 and name the valid keys.
    """
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--workdir", required=True, help="where checkpoints, logs and samples go")
    if extra is not None:
        extra(parser)
    group = parser.add_argument_group("config overrides (type, default)")
    for key, value in flatten(cfg).items():
        typ = _leaf_types(type(cfg))[key]
        shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
        group.add_argument(f"--{key}", metavar=_type_name(typ).upper().replace(" ", ""),
                           default=None, help=f"{_type_name(typ)}, default: {shown}")
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.error(
            f"unknown option(s) {unknown}; valid config keys are: "
            + ", ".join(f"--{k}" for k in flatten(cfg))
        )
    overrides = {k: v for k, v in vars(args).items() if k in flatten(cfg) and v is not None}
    try:
        cfg = override(cfg, overrides)
    except ConfigError as e:
        parser.error(str(e))
    return cfg, args


# ----------------------------------------------------------------------------- workdir record


def save(cfg, workdir: str, *, experiment: str, family: str) -> None:
    """Writes workdir/config.json: the resolved config plus which experiment and model family made it."""
    os.makedirs(workdir, exist_ok=True)
    record = {"experiment": experiment, "family": family, "config": to_dict(cfg)}
    tmp = os.path.join(workdir, "config.json.tmp")
    with open(tmp, "w") as f:
        json.dump(record, f, indent=2, sort_keys=True)
    os.replace(tmp, os.path.join(workdir, "config.json"))


def load(workdir: str) -> dict[str, Any]:
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{workdir!r} holds no config.json: it is not a genjax workdir "
            "(train an experiment with --workdir first)"
        )
    with open(path) as f:
        return json.load(f)
