"""No side effects on import: `import core` (and the package modules) leave os.environ alone; the
command-line entry points set the offline defaults, and a user's own value wins."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from core.offline import OFFLINE_DEFAULTS

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in OFFLINE_DEFAULTS}
    clean.update(env, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=clean, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_core_leaves_the_environment_unchanged():
    result = run_python(
        "import json, os; before = dict(os.environ); import core, core.config, core.schema; "
        "print(json.dumps({'same': before == dict(os.environ)}))"
    )
    assert result == {"same": True}


def test_entry_points_set_offline_defaults_and_keep_a_users_value():
    code = (
        "import json, os, huggingface_hub.constants as c; from core.config import run_cli; "
        "run_cli(lambda: None); "
        "print(json.dumps({k: os.environ.get(k) for k in ('HF_HUB_OFFLINE', 'WANDB_MODE', 'HF_DATASETS_OFFLINE')} "
        "| {'hub_offline': c.HF_HUB_OFFLINE}))"
    )
    result = run_python(code)  # huggingface_hub was imported before: its cached flag is refreshed too
    assert result == {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "HF_DATASETS_OFFLINE": "1", "hub_offline": True}
    result = run_python(code, HF_HUB_OFFLINE="0", WANDB_MODE="online")
    assert result["HF_HUB_OFFLINE"] == "0" and result["WANDB_MODE"] == "online" and result["hub_offline"] is False
