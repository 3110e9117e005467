"""Typed dataclass configs: YAML file -> explicit CLI flags -> ``--set a.b=value`` overrides.

Every mistake names the key, the file it came from and the type that was expected.
"""
from __future__ import annotations

import copy
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from .errors import UserError

_MISSING = dataclasses.MISSING


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Return ``value`` as type ``tp`` or raise a UserError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, where)
            except UserError as err:
                errors.append(err)
        raise UserError(f"bad value {value!r} for key '{key}'", where, f"expected {_type_name(tp)}")
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        raise UserError(f"bad value {value!r} for key '{key}'", where, f"expected one of {list(choices)}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"bad value {value!r} for key '{key}'", where, f"expected a list ({_type_name(tp)})")
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{key}[{i}]", where) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"bad value {value!r} for key '{key}'", where, "expected a mapping")
        return dict(value)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise UserError(f"bad value {value!r} for key '{key}'", where, f"expected a mapping for section {tp.__name__}")
        return _build(tp, value, where, prefix=f"{key}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0", "on", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise UserError(f"bad value {value!r} for key '{key}'", where, "expected bool")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, str):
                try:
                    return int(value)
                except ValueError:
                    pass
            raise UserError(f"bad value {value!r} for key '{key}'", where, "expected int")
        return value
    if tp is float:
        if isinstance(value, bool):
            raise UserError(f"bad value {value!r} for key '{key}'", where, "expected float")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise UserError(f"bad value {value!r} for key '{key}'", where, "expected float")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise UserError(f"bad value {value!r} for key '{key}'", where, "expected str")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise UserError(f"bad value {value!r} for key '{key}'", where, f"expected {_type_name(tp)}")
    return value


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _build(cls, data: Mapping[str, Any], where: str, prefix: str = ""):
    types_ = _field_types(cls)
    unknown = [k for k in data if k not in types_]
    if unknown:
        raise UserError(
            f"unknown config key '{prefix}{unknown[0]}'", where, f"expected one of {sorted(prefix + k for k in types_)}"
        )
    kwargs = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.name in data:
            kwargs[f.name] = _coerce(data[f.name], types_[f.name], prefix + f.name, where)
        elif f.default is _MISSING and f.default_factory is _MISSING:
            raise UserError(f"missing required config key '{prefix}{f.name}'", where, f"expected {_type_name(types_[f.name])}")
    return cls(**kwargs)


def _merge(base: dict, update: Mapping) -> dict:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _apply_aliases(cls, loaded: dict, where: str) -> dict:
    """Move keys a guide writes elsewhere to where the config keeps them.

    A config dataclass may declare ``KEY_ALIASES = {"T_0": "training.T_0", ...}`` (dotted old -> new); a YAML
    file or ``--set`` using the old spelling then means the new key. Both spellings at once is an error.
    """
    aliases = getattr(cls, "KEY_ALIASES", {})
    if not aliases:
        return loaded
    out = copy.deepcopy(loaded)
    for old, new in aliases.items():
        parts, node = old.split("."), out
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or parts[-1] not in node:
            continue
        value = node.pop(parts[-1])
        target, present = out, True
        for part in new.split("."):
            if not isinstance(target, dict) or part not in target:
                present = False
                break
            target = target[part]
        if present:
            raise UserError(f"both '{old}' and '{new}' are set", where, f"one of them ('{old}' means '{new}')")
        _set_dotted(out, new, value)
    return out


def _set_dotted(target: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = target
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"cannot set '{dotted}'", "--set", f"'{part}' is not a section")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``'train.lr=2e-4'`` -> ``('train.lr', 2e-4)``; the value is parsed as YAML."""
    if "=" not in text:
        raise UserError(f"bad override '{text}'", "--set",
                        "expected key=value with key a dotted config key as in config.yaml, e.g. section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise UserError(f"bad override '{text}'", "--set", "expected key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    # YAML reads "2e-4" as a string (it needs a dot); let the field's type decide.
    return key, value


def _check_key_path(cls, dotted: str, where: str) -> None:
    node = cls
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        types_ = _field_types(node) if dataclasses.is_dataclass(node) else {}
        if part not in types_:
            prefix = ".".join(parts[:i])
            valid = sorted((prefix + "." if prefix else "") + k for k in types_)
            raise UserError(f"unknown config key '{dotted}'", where, f"expected one of {valid}")
        node = types_[part]


def load_config(cls, path: str | Path | None = None, overrides: Iterable[str] = (), cli_values: Mapping[str, Any] | None = None,
                base: Mapping[str, Any] | None = None):
    """Build ``cls`` from its defaults, a YAML file, explicit CLI flags and ``--set`` overrides (in that order).

    ``base`` (e.g. a checkpoint's saved config dict) replaces the dataclass defaults as the bottom layer.
    """
    data: dict = copy.deepcopy(dict(base)) if base else {}  # never mutate the caller's (checkpoint's) dict
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError("config file not found", str(path), "expected a YAML file")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise UserError("config file is not valid YAML", str(path), str(err).splitlines()[0])
        if not isinstance(loaded, dict):
            raise UserError("config file must hold a mapping", str(path), "expected key: value pairs")
        loaded = _apply_aliases(cls, loaded, str(path))
        _build(cls, loaded, str(path))  # validate the file alone first so its errors name the file
        data = _merge(data, loaded)
    where = str(path) if path is not None else ("base config" if base else "defaults")
    _build(cls, data, where)
    for key, value in (cli_values or {}).items():
        _check_key_path(cls, key, "command line")
        _set_dotted(data, key, value)
    aliases = getattr(cls, "KEY_ALIASES", {})
    for text in overrides:
        key, value = parse_override(text)
        key = aliases.get(key, key)
        _check_key_path(cls, key, f"--set {text}")
        _set_dotted(data, key, value)
        _build(cls, data, f"--set {text}")
    return _build(cls, data, where)


def config_to_dict(cfg) -> dict:
    """Plain nested dict (str/int/float/bool/None/list/dict): YAML- and ``weights_only``-safe."""

    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        if hasattr(v, "item") and callable(v.item):  # numpy / torch scalars
            return v.item()
        return v

    return plain(cfg)


def config_from_dict(cls, data: Mapping[str, Any], where: str = "checkpoint"):
    """Inverse of :func:`config_to_dict`, with the same key/type checks."""
    if not isinstance(data, Mapping):
        raise UserError("config is not a mapping", where, f"expected a dict for {cls.__name__}")
    return _build(cls, data, where)


def save_config(cfg, run_dir: str | Path, filename: str = "config.yaml") -> Path:
    path = Path(run_dir) / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    return path


def explicit_cli_values(ctx, mapping: Mapping[str, str]) -> dict[str, Any]:
    """``{dotted_key: value}`` for the click params in ``mapping`` that the user typed on the command line."""
    import click.core

    out = {}
    for param, dotted in mapping.items():
        source = ctx.get_parameter_source(param)
        if source in (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT):
            out[dotted] = ctx.params[param]
    return out


def flatten_config(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_config(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def _matches(key: str, patterns: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in patterns)


def _same_value(a: Any, b: Any) -> bool:
    if a == b:
        return True
    if isinstance(a, str) and isinstance(b, str) and a and b:  # the same path spelled differently
        try:
            return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
        except (OSError, RuntimeError):
            return False
    return False


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``[(dotted_key, old_value, new_value), ...]`` for every leaf that differs between two config dicts."""
    a, b = flatten_config(old), flatten_config(new)
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if not _same_value(a.get(k), b.get(k))]


def resolve_resume_config(cls, saved: Mapping[str, Any] | None, *, path: str | Path | None = None,
                          overrides: Iterable[str] = (), cli_values: Mapping[str, Any] | None = None,
                          run_defining: Iterable[str] = (), may_change: Iterable[str] = (),
                          allow_changes: bool = False, override_flag: str = "--allow_config_change",
                          where: str = "checkpoint"):
    """The config of a resumed run: the checkpoint's config, with only the settings the user gave on top.

    * ``saved`` (the checkpoint's config dict, ``training_state(config=config_to_dict(cfg))``) is the base:
      every setting the user did not give comes from it, not from the dataclass defaults or a YAML file's
      defaults. (Keys added to the dataclass since the checkpoint was written take their defaults.)
    * What the user gave (``path`` YAML file, ``cli_values`` from :func:`explicit_cli_values`, ``overrides``
      from ``--set``) is applied on top, in that order, with the usual key/type checks.
    * A given value that changes a *run-defining* key (``run_defining``: dotted keys or section prefixes,
      e.g. ``("data", "model", "train.batch_size", "train.warmup_steps")``; ``may_change`` lists exceptions
      inside those sections, e.g. ``("data.num_workers",)``) raises a one-line UserError naming the key, its
      saved and its new value, unless ``allow_changes`` (the package's explicit override flag, named in the
      message by ``override_flag``). Strings naming the same path spelled differently count as equal.
    * Anything else (more epochs, logging intervals, device, precision, progress bars...) passes.

    Returns the resolved config: save *it* as the run's ``config.yaml`` and in the next checkpoint, so both
    say what the run uses. Nothing is written here, so a refused flag leaves the run directory untouched.
    ``saved=None`` (a checkpoint without a config) resolves like :func:`load_config` and checks nothing.

    Example (a package's ``train`` command)::

        state = load_checkpoint(resume_path)
        cfg = resolve_resume_config(Config, state["config"], path=config_path, overrides=overrides,
                                    cli_values=explicit_cli_values(ctx, TRAIN_FLAGS),
                                    run_defining=RUN_DEFINING, may_change=("data.num_workers",),
                                    allow_changes=allow_config_change)
        for key, old, new in config_changes(state["config"], config_to_dict(cfg)):
            print(f"resume: {key} {old!r} -> {new!r}")
    """
    if saved is None:
        return load_config(cls, path, overrides, cli_values)
    old_cfg = config_from_dict(cls, saved, where)
    old = config_to_dict(old_cfg)
    overrides = list(overrides)
    new_cfg = load_config(cls, path, overrides, cli_values, base=old)
    if allow_changes:
        return new_cfg
    run_defining, may_change = list(run_defining), list(may_change)
    for key, before, after in config_changes(old, config_to_dict(new_cfg)):
        if not _matches(key, run_defining) or _matches(key, may_change):
            continue
        source = next((f"--set {t}" for t in reversed(overrides) if t.split("=", 1)[0].strip() == key), None)
        if source is None:
            source = "command line" if cli_values and key in cli_values else (str(path) if path else "config")
        if path is not None and source == str(path):
            # the file the run was started with re-applies its own values (e.g. data.root a flag replaced):
            # dropping --config is the fix; --allow_config_change would switch the run's data/model (amt audit M2)
            hint = (f"resume without --config (the checkpoint holds the run's config), or pass {override_flag} "
                    "only to change it on purpose")
        else:
            hint = f"drop it to keep the checkpoint's value, or pass {override_flag} to change it"
        raise UserError(f"resuming would change '{key}' from {before!r} to {after!r}, which changes what the run is",
                        source, hint)
    return new_cfg
