"""Typed experiment configs: frozen dataclasses, command-line overrides, JSON round trips.

A config is a frozen dataclass whose fields are `int`, `float`, `bool`, `str`, `tuple[int, ...]`,
`tuple[float, ...]`, `tuple[str, ...]` or another config dataclass (nested, addressed with dotted keys):

    python experiments/vae_digits.py --train.steps 500 --model.latent_dim 8 --workdir /tmp/vae

Every override is checked against the field's type (floats must be finite; choices match in any case)
before anything is built or compiled; an unknown key is rejected with the closest valid one.
`--config FILE` (JSON or YAML, e.g. a run's own config.json) gives a base that the command line overrides.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import inspect
import json
import math
import os
import sys
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
        matches = [c for c in choices if isinstance(value, str) and c.lower() == value.lower()]
        if not matches:
            raise ConfigError(f"{key}={value!r} is not one of {list(choices)}")
        return matches[0]
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
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}={value!r}: expected a float") from None
        if not math.isfinite(number):
            raise ConfigError(f"{key}={value!r}: expected a finite number")
        return number
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r}: expected a string")
        return value
    raise ConfigError(f"{key}: unsupported config type {typ}")


def check_at_least(cfg, prefix: str, names, minimum=1, hint: str = "") -> None:
    """Refuses any field of `names` below `minimum`, naming it (`prefix.name=value must be >= minimum`)."""
    for name in names:
        if getattr(cfg, name) < minimum:
            raise ConfigError(f"{prefix}.{name}={getattr(cfg, name)} must be >= {minimum}{hint}")


def check_choices(cfg, prefix: str) -> None:
    """Refuses a choice (Literal) field outside its choices: configs built in Python skip the parser's check."""
    values = flatten(cfg)
    for key, typ in _leaf_types(type(cfg)).items():
        if typing.get_origin(typ) is typing.Literal and values[key] not in typing.get_args(typ):
            raise ConfigError(f"{prefix}.{key}={values[key]!r} is not one of {list(typing.get_args(typ))}")


# ----------------------------------------------------------------------------- overrides


def override(cfg, overrides: dict[str, Any]):
    """Returns a copy of `cfg` with dotted-key overrides applied, each converted to its field's type."""
    leaf_types = _leaf_types(type(cfg))
    unknown = sorted(set(overrides) - set(leaf_types))
    if unknown:
        raise ConfigError(f"unknown config key {unknown[0]!r}{suggest(unknown[0], leaf_types)}")
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
    if validate is not None and not inspect.signature(validate).parameters:  # options validate against a model
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


def suggest(name: str, known) -> str:
    """'; did you mean X?' for the closest known name (compared with '-' and '_' alike), or ''."""
    norm = {k.replace("-", "_"): k for k in known}
    close = difflib.get_close_matches(name.replace("-", "_"), list(norm), n=1, cutoff=0.6)
    return f"; did you mean {norm[close[0]]}?" if close else ""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block), exit status 2, and '-'/'_' alike in option names."""

    def __init__(self, **kw):
        super().__init__(formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False, **kw)

    def error(self, message: str):
        print(f"error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args([self._canonical(a) for a in args], namespace)

    def _canonical(self, arg: str) -> str:
        """`--top-k` -> `--top_k` where only the underscore spelling exists (and vice versa)."""
        if not arg.startswith("--"):
            return arg
        name, eq, value = arg.partition("=")
        if name not in self._option_string_actions:
            for other in ("--" + name[2:].replace("-", "_"), "--" + name[2:].replace("_", "-")):
                if other in self._option_string_actions:
                    return other + eq + value
        return arg

    def refuse_unknown(self, unknown: list[str]):
        if unknown:
            option = unknown[0].partition("=")[0]
            known = [o for o in self._option_string_actions if o.startswith("--")]
            self.error(f"unknown option {option}{suggest(option, known)}")


def add_options(parser: argparse.ArgumentParser, cfg, title: str, prefix: str = "") -> None:
    """One `--<prefix><key> VALUE` option per leaf field of `cfg`, typed and checked when parsed."""
    group = parser.add_argument_group(title)
    for key, value in flatten(cfg).items():
        typ = _leaf_types(type(cfg))[key]
        shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
        metavar = "BOOL" if typ is bool else _type_name(typ).replace(" ", "")
        group.add_argument(f"--{prefix}{key}", dest=f"{prefix}{key}", metavar=metavar, default=None,
                           help=f"{_type_name(typ)}, default: {shown}")


def chosen(args: argparse.Namespace, cfg, prefix: str = "") -> dict[str, Any]:
    """The {key: string} overrides of `cfg` given on the command line."""
    return {k: v for k in flatten(cfg) if (v := getattr(args, f"{prefix}{k}", None)) is not None}


def read_file(path: str) -> dict[str, Any]:
    """A config file (JSON, or YAML by its suffix) as nested dicts; a workdir's config.json record gives
    its 'config'."""
    try:
        with open(path) as f:
            if path.endswith((".yaml", ".yml")):
                import yaml  # a dependency of flax

                data = yaml.safe_load(f)
            else:
                data = json.load(f)
    except OSError as e:
        raise ConfigError(f"--config {path}: cannot read it ({e.strerror})") from None
    except ValueError as e:
        raise ConfigError(f"--config {path}: not valid {'YAML' if path.endswith(('.yaml', '.yml')) else 'JSON'} "
                          f"({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of config keys, got {type(data).__name__}")
    return data["config"] if isinstance(data.get("config"), dict) and "experiment" in data else data


def _flatten_dict(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten_dict(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def parse_args(cfg, argv: Sequence[str] | None = None, description: str = "", extra=None,
               derived: Sequence[str] = ()):
    """Parses `--key value` / `--key=value` overrides of `cfg`, `--config FILE` and `--workdir`.

    Returns (cfg, args) where args holds --workdir and any options added by `extra(parser)`. Values
    come from the defaults, then the --config file (JSON or YAML; a workdir's config.json repeats its
    run), then the command line. `derived` keys are set from the data by the experiment: the command
    line refuses them, a config file's values are ignored. `--print_config` prints the resolved config
    as JSON and exits. Errors are one line naming the key and the fix, exit status 2.
    """
    parser = ArgumentParser(description=description)
    parser.add_argument("--workdir", help="where checkpoints, logs and samples go (required to run)")
    parser.add_argument("--config", metavar="FILE", help="JSON or YAML config (e.g. a run's config.json); "
                        "command-line options override it")
    parser.add_argument("--print_config", action="store_true", help="print the resolved config and exit")
    if extra is not None:
        extra(parser)
    add_options(parser, cfg, "config overrides (type, default)")
    args, unknown = parser.parse_known_args(argv)
    parser.refuse_unknown(unknown)
    overrides = chosen(args, cfg)
    try:
        for key in derived:
            if key in overrides:
                raise ConfigError(f"{key} is taken from the data (--data), not set by hand; drop --{key}")
        if args.config:
            from_file = {k: v for k, v in _flatten_dict(read_file(args.config)).items() if k not in derived}
            cfg = override(cfg, from_file)
        cfg = override(cfg, overrides)
    except ConfigError as e:
        parser.error(str(e))
    if args.print_config:
        print(json.dumps(to_dict(cfg), indent=2, sort_keys=True))
        raise SystemExit(0)
    if not args.workdir:
        parser.error("--workdir is required: the folder where this run's checkpoints, logs and samples go")
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
