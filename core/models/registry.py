"""Which model families exist: `model.family` name -> the module holding its `FAMILY` object.

Kept free of heavy imports so the config schema can validate `model.family` cheaply; the family
module is imported on first use."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.models.base import ModelFamily

DEFAULT_FAMILY = "wan2.1-i2v"
FAMILIES: dict[str, str] = {
    "wan2.1-i2v": "core.models.wan21",
    "wan2.2-ti2v": "core.models.wan22",
}


def family_names() -> tuple[str, ...]:
    return tuple(FAMILIES)


def get_family(name: str | None = None) -> ModelFamily:
    """The family object registered as `name` (None = the default family)."""
    name = DEFAULT_FAMILY if name is None else name
    if name not in FAMILIES:
        from core.config import ConfigError

        raise ConfigError(f"model.family '{name}' is unknown; choose one of {', '.join(FAMILIES)}")
    return importlib.import_module(FAMILIES[name]).FAMILY


def family_of(transformer: Any) -> ModelFamily:
    """The family of a transformer: the one it was loaded by, else the first registered family
    whose `accepts` recognises it (its config's channels); a clear error otherwise."""
    name = getattr(transformer, "cinelora_family", None)
    if name is not None:
        return get_family(name)
    for candidate in FAMILIES:
        family = get_family(candidate)
        if family.accepts(transformer):
            return family
    conf = getattr(transformer, "config", None)
    raise ValueError(
        f"no model family recognises {type(transformer).__name__} (in_channels="
        f"{getattr(conf, 'in_channels', None)}, out_channels={getattr(conf, 'out_channels', None)}); "
        f"load it with core.models.load_components or pass family= explicitly"
    )
