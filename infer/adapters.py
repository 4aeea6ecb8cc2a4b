"""Stack exported LoRA files on a Wan pipeline, each with its own weight."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.config import ConfigError
from core.schema import LoraFile


def apply_loras(pipe: Any, loras: list[LoraFile]) -> list[str]:
    """Load each LoRA as a named adapter and activate them all with their weights."""
    names: list[str] = []
    for i, lora in enumerate(loras):
        path = Path(lora.path).expanduser()
        if not path.exists():
            raise ConfigError(f"loras[{i}].path '{path}' does not exist; point it at a file from train.export")
        name = lora.name or f"{path.stem}_{i}"
        kwargs = {"weight_name": path.name} if path.is_file() else {}
        source = path.parent if path.is_file() else path
        pipe.load_lora_weights(str(source), adapter_name=name, **kwargs)
        names.append(name)
    if names:
        pipe.set_adapters(names, [lora.weight for lora in loras])
    return names
