"""Config loading: typed values, overrides, and one-line errors with exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from core.config import ConfigError, load_config
from core.schema import GenerateConfig


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_file_then_overrides_are_typed(tmp_path):
    cfg = load_config(GenerateConfig, write(tmp_path, "steps: 7\nmodel:\n  dtype: bf16\n"), ["seed=3", "model.seed=5"])
    assert (cfg.steps, cfg.seed, cfg.model.dtype, cfg.model.seed) == (7, 3, "bf16", 5)
    assert isinstance(cfg.steps, int)


def test_unknown_key_names_file_and_nearest_key(tmp_path):
    path = write(tmp_path, "modle:\n  path: x\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'modle.path' in .*cfg.yaml; did you mean 'model.path'"):
        load_config(GenerateConfig, path)
    with pytest.raises(ConfigError, match=r"'model.dtpye' in command-line overrides; did you mean 'model.dtype'"):
        load_config(GenerateConfig, None, ["model.dtpye=bf16"])


def test_wrong_type_and_bad_value(tmp_path):
    with pytest.raises(ConfigError, match=r"bad value for config key 'steps' in .*cfg.yaml"):
        load_config(GenerateConfig, write(tmp_path, "steps: many\n"))
    with pytest.raises(ConfigError, match=r"num_frames=10 is not of the form 4k\+1.*use 9 or 13"):
        load_config(GenerateConfig, None, ["num_frames=10"])
    with pytest.raises(ConfigError, match=r"model.dtype 'int8'"):
        load_config(GenerateConfig, None, ["model.dtype=int8"])


def test_missing_required_value(tmp_path):
    path = write(tmp_path, "loras:\n  - weight: 0.5\n")
    with pytest.raises(ConfigError, match=r"missing required config key 'loras.0.path'|missing required config key"):
        load_config(GenerateConfig, path)


def run_generate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "infer.generate", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["modle.path=/x"], "did you mean 'model.path'"),
        (["steps=abc"], "bad value for config key 'steps'"),
        (["model.path=/no/such/folder"], "model.path '/no/such/folder' is not a folder"),
        (["--config", "/no/such.yaml"], "config file '/no/such.yaml' not found"),
    ],
)
def test_cli_errors_are_one_line_with_exit_code_2(args, expected):
    result = run_generate(*args)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and expected in lines[0], result.stderr


def test_non_finite_numbers_are_refused_everywhere():
    from core.schema import ABConfig, TrainConfig

    with pytest.raises(ConfigError, match=r"'cat.thresholds\[0\]' is nan; it must be a finite number"):
        load_config(ABConfig, None, ["cat.thresholds=[nan, 1]"])
    with pytest.raises(ConfigError, match=r"'optim.lr' is inf"):
        load_config(TrainConfig, "configs/stage1_style.yaml", ["optim.lr=.inf"])
    with pytest.raises(ConfigError, match=r"'guidance_scale' is nan"):
        load_config(GenerateConfig, None, ["guidance_scale=nan"])


def test_yaml_error_names_line_and_column(tmp_path):
    path = write(tmp_path, "seed: 1\nsteps: [1, 2\nheight: 64\n")
    with pytest.raises(ConfigError, match=r"cfg.yaml' is not valid YAML: line 3, column \d+: did not find expected"):
        load_config(GenerateConfig, path)


def test_empty_prompt_is_the_empty_string_and_steps_zero_is_refused():
    assert load_config(GenerateConfig, None, ["prompt=", "negative_prompt="]).prompt == ""
    assert load_config(GenerateConfig, None, ["image="]).image is None  # optional keys: empty = unset
    with pytest.raises(ConfigError, match=r"steps=0 .* must be >= 1"):
        load_config(GenerateConfig, None, ["steps=0"])


def test_generate_checks_inputs_before_the_model_loads(tmp_path, monkeypatch):
    import infer.generate as gen

    monkeypatch.setattr(gen, "load_components", lambda *a: pytest.fail("the model loaded before the inputs were checked"))
    with pytest.raises(ConfigError, match=r"image '.*missing.png' not found"):
        gen.generate(GenerateConfig(image=str(tmp_path / "missing.png")))
    with pytest.raises(ConfigError, match=r"loras\[0\].path '.*none.safetensors' does not exist"):
        gen.generate(load_config(GenerateConfig, None, [f"loras=[{{path: {tmp_path / 'none.safetensors'}}}]"]))
