"""Load a YAML config plus `key=value` overrides into a typed dataclass schema.

Every entry point calls :func:`load_config`. Mistakes (unknown key, wrong type, missing
required value, unreadable file) raise :class:`ConfigError`, which :func:`run_cli` turns into
one line on stderr and exit code 2: a typo must never start a multi-hour run.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import sys
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")


class ConfigError(Exception):
    """A user mistake in a config file, an override or a path; reported in one line."""


def _fields(schema: Any) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(schema)}


def _nested_schema(tp: Any) -> Any | None:
    """The dataclass behind a field type (unwrapping Optional), or None."""
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def _list_item_schema(tp: Any) -> Any | None:
    origin = typing.get_origin(tp)
    if origin in (list, Sequence, typing.List):  # noqa: UP006
        args = typing.get_args(tp)
        return args[0] if args and dataclasses.is_dataclass(args[0]) else None
    for arg in typing.get_args(tp):
        found = _list_item_schema(arg)
        if found is not None:
            return found
    return None


def valid_keys(schema: Any, prefix: str = "") -> list[str]:
    """All dotted keys a schema accepts (used for 'did you mean' and the README reference)."""
    hints = typing.get_type_hints(schema)
    keys: list[str] = []
    for name in _fields(schema):
        key = f"{prefix}{name}"
        keys.append(key)
        sub = _nested_schema(hints[name])
        if sub is not None:
            keys.extend(valid_keys(sub, key + "."))
    return keys


def _unused_reason(full: str, unused: Mapping[str, str]) -> str | None:
    """Why `full` is refused: it is, or lies under, one of the command's unused keys."""
    for key, why in unused.items():
        if full == key or full.startswith(key + "."):
            return why
    return None


def _check_keys(node: Any, schema: Any, source: str, prefix: str = "", command: str | None = None,
                unused: Mapping[str, str] | None = None) -> None:
    """Reject keys the schema does not declare (naming the closest valid one) and keys this command never reads."""
    if not isinstance(node, (dict, DictConfig)):
        return
    hints = typing.get_type_hints(schema)
    fields = _fields(schema)
    for key in node:
        full = f"{prefix}{key}"
        why = _unused_reason(full, unused or {})
        if why is not None:
            value = node[key]
            while isinstance(value, (dict, DictConfig)) and len(value):  # name the leaf that was set
                first = next(iter(value))
                full, value = f"{full}.{first}", value[first]
            raise ConfigError(f"config key '{full}' in {source} is not used by {command or 'this command'}: {why}; "
                              "remove it")
        if key not in fields:
            candidates = [f"{prefix}{name}" for name in fields]
            value = node[key]
            if isinstance(value, (dict, DictConfig)) and len(value):
                # 'modle.path' should suggest 'model.path', not just 'model'
                full = f"{full}.{next(iter(value))}"
                candidates = valid_keys(schema, prefix)
            near = difflib.get_close_matches(full, candidates, n=1, cutoff=0.5)
            hint = f"; did you mean '{near[0]}'?" if near else f"; valid keys here: {', '.join(candidates)}"
            raise ConfigError(f"unknown config key '{full}' in {source}{hint}")
        sub = _nested_schema(hints[key])
        if sub is not None:
            _check_keys(node[key], sub, source, full + ".", command, unused)
        item = _list_item_schema(hints[key])
        if item is not None and isinstance(node[key], (list, ListConfig)):
            for i, element in enumerate(node[key]):
                _check_keys(element, item, source, f"{full}[{i}].", command, unused)


def _field_type(schema: Any, dotted: str) -> Any:
    """The declared type of a dotted key, or None when the path leaves the schema."""
    tp: Any = schema
    for part in dotted.split("."):
        cls = _nested_schema(tp)
        if cls is None or part not in _fields(cls):
            return None
        tp = typing.get_type_hints(cls)[part]
    return tp


def _parse_overrides(overrides: Sequence[str], schema: Any) -> DictConfig:
    """Parse `key=value` items; an empty value (`prompt=`) of a plain string key is the empty string."""
    items = []
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"bad override '{item}': expected key=value (e.g. train.steps=100)")
        key, value = item.split("=", 1)
        if value == "" and _field_type(schema, key) is str:
            item = f"{key}=''"
        items.append(item)
    try:
        return OmegaConf.from_dotlist(items)
    except Exception as exc:  # a YAML value that does not parse, e.g. an unclosed list
        raise ConfigError(f"bad command-line override: {_yaml_error(exc)}") from exc


def _yaml_error(exc: Exception) -> str:
    """A YAML error in one line, with the line and column where the parser stopped."""
    text = " ".join(str(exc).split())
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if problem and mark is not None:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return text


def check_finite(obj: Any, prefix: str = "") -> None:
    """Refuse NaN and infinity anywhere in a loaded config: they pass every range check (nan < x is False)."""
    if dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            check_finite(getattr(obj, f.name), f"{_child(prefix)}{f.name}")
        return
    if isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            check_finite(item, f"{prefix}[{i}]")
        return
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ConfigError(f"config key '{prefix}' is {obj}; it must be a finite number")


def _child(prefix: str) -> str:
    return f"{prefix}." if prefix and not prefix.endswith(".") else prefix


def load_config(schema: type[T], config_file: str | Path | None, overrides: Sequence[str] = (), *,
                command: str | None = None, unused: Mapping[str, str] | None = None) -> T:
    """Merge schema defaults <- YAML file <- overrides; validate; return a typed object.

    `unused` maps keys (or sections) that `command` never reads to the reason; setting one is an error,
    so a key that would be silently ignored never is."""
    base = OmegaConf.structured(schema)
    layers: list[tuple[str, DictConfig]] = []
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file '{path}' not found; pass an existing YAML file to --config")
        try:
            loaded = OmegaConf.load(path)
        except Exception as exc:  # yaml syntax errors come in several types
            raise ConfigError(f"config file '{path}' is not valid YAML: {_yaml_error(exc)}") from exc
        if not isinstance(loaded, DictConfig):
            raise ConfigError(f"config file '{path}' must hold a mapping of keys, not a {type(loaded).__name__}")
        layers.append((str(path), loaded))
    if overrides:
        layers.append(("command-line overrides", _parse_overrides(overrides, schema)))
    merged = base
    for source, layer in layers:
        _check_keys(layer, schema, source, command=command, unused=unused)
        try:
            merged = OmegaConf.merge(merged, layer)
        except OmegaConfBaseException as exc:
            key = getattr(exc, "full_key", None) or "?"
            msg = str(exc).splitlines()[0]
            raise ConfigError(f"bad value for config key '{key}' in {source}: {msg}") from exc
    missing = sorted(OmegaConf.missing_keys(merged))
    if missing:
        raise ConfigError(
            f"missing required config key '{missing[0]}'"
            f"{' (and ' + str(len(missing) - 1) + ' more)' if len(missing) > 1 else ''}; "
            f"set it in the YAML file or pass {missing[0]}=VALUE"
        )
    obj = OmegaConf.to_object(merged)
    check_finite(obj)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj  # type: ignore[return-value]


def to_yaml(cfg: Any) -> str:
    """The resolved config as YAML (written into every run folder)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def parse_cli(schema: type[T], argv: Sequence[str] | None = None, default_config: str | None = None, *,
              command: str | None = None, unused: Mapping[str, str] | None = None) -> T:
    """Parse `--config FILE k=v ...` for an entry point (`command`/`unused`: see :func:`load_config`)."""
    args = list(sys.argv[1:] if argv is None else argv)
    config_file = default_config
    overrides: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("-h", "--help"):
            keys = [k for k in valid_keys(schema) if _unused_reason(k, unused or {}) is None]
            print(f"usage: --config FILE [key=value ...]\nkeys: {', '.join(keys)}")
            raise SystemExit(0)
        if arg == "--config":
            if i + 1 >= len(args):
                raise ConfigError("--config needs a file path")
            config_file = args[i + 1]
            i += 2
            continue
        if arg.startswith("--config="):
            config_file = arg.split("=", 1)[1]
        else:
            overrides.append(arg)
        i += 1
    return load_config(schema, config_file, overrides, command=command, unused=unused)


def run_cli(main: Callable[[], Any]) -> None:
    """Run an entry point (offline hub defaults first, see core.offline); user mistakes become one
    line on stderr and exit code 2."""
    from core.offline import use_offline_defaults

    use_offline_defaults()
    try:
        result = main()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C)", file=sys.stderr)
        raise SystemExit(130) from None
    if isinstance(result, int):
        raise SystemExit(result)


__all__ = ["MISSING", "ConfigError", "check_finite", "load_config", "parse_cli", "run_cli", "to_yaml", "valid_keys"]
