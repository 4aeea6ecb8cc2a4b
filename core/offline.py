"""Offline defaults for the command-line entry points: weights come from local folders only (a hub
lookup without these hangs ~49 s before failing on a machine with no internet).

Set where a user can see and override them: `run_cli` calls `use_offline_defaults()` at the start
of every `python -m ...` command, the Makefile exports the same variables, and a value already in
the environment (e.g. `HF_HUB_OFFLINE=0`) is kept. Importing the project sets nothing.
"""

from __future__ import annotations

import os
import sys

OFFLINE_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "WANDB_MODE": "offline",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}
_TRUE = {"1", "ON", "YES", "TRUE"}


def use_offline_defaults() -> None:
    """Set each variable the user has not set, and refresh the flags that Hugging Face libraries
    already imported by the entry module read once at import time."""
    for name, value in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(name, value)
    hub_value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    hub = hub_value.upper() in _TRUE  # huggingface_hub.constants' own rule
    datasets_value = os.environ.get("HF_DATASETS_OFFLINE")
    datasets = hub if datasets_value is None else datasets_value.upper() in _TRUE
    telemetry_off = os.environ.get("HF_HUB_DISABLE_TELEMETRY", "").upper() in _TRUE
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith(("huggingface_hub", "diffusers", "transformers", "datasets", "peft")):
            continue
        flags = vars(module)
        if isinstance(flags.get("HF_HUB_OFFLINE"), bool):
            module.HF_HUB_OFFLINE = datasets if name == "datasets.config" else hub
        if isinstance(flags.get("HF_DATASETS_OFFLINE"), bool):
            module.HF_DATASETS_OFFLINE = datasets
        if isinstance(flags.get("HF_HUB_DISABLE_TELEMETRY"), bool):
            module.HF_HUB_DISABLE_TELEMETRY = telemetry_off
