"""Shared pieces of cinelora: the typed config schema and loader, and the Wan model adapter.

Importing this package makes every hub lookup offline: weights come from local folders only
(a hub lookup without these would hang ~49 s before failing on a machine with no internet).
"""

import os

for _name, _value in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "WANDB_MODE": "offline",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}.items():
    os.environ.setdefault(_name, _value)
