"""Every config key of a command is read by that command, or refused with exit code 2.

The schemas are walked leaf by leaf. Reads are recorded on the schema classes while the real
entry point runs on the tiny preset (reads by the loader, by `validate` and by whole-config
dumps such as `to_yaml` do not count: they happen for every key). A key a command never reads
must be in the command's refused set (`StageSpec.refused_keys`), and setting it must stop the
command with one line naming the key and the command.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import typing
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core import schema as schema_module
from core.config import ConfigError, _list_item_schema, _nested_schema, load_config, run_cli
from core.schema import GenerateConfig, TrainConfig
from tests.train_support import ROOT, run_args
from train import stage1, stage2

pytest_plugins = ("tests.train_fixtures",)  # fixtures: style_set, one_thread
pytestmark = pytest.mark.usefixtures("one_thread")

PROJECT = tuple(str(ROOT / d) for d in ("core", "cat", "data", "train", "infer"))
NOT_A_USE = (str(ROOT / "core" / "config.py"), str(ROOT / "core" / "reference.py"))
SCHEMA_CLASSES = [c for c in vars(schema_module).values() if dataclasses.is_dataclass(c) and isinstance(c, type)]


def leaf_keys(schema: type, prefix: str = "") -> Iterator[tuple[str, type, str]]:
    """(dotted key, dataclass, field name) of every leaf; list items as `key[].field`."""
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        sub = _nested_schema(hints[f.name])
        if sub is not None:
            yield from leaf_keys(sub, f"{prefix}{f.name}.")
            continue
        yield f"{prefix}{f.name}", schema, f.name
        item = _list_item_schema(hints[f.name])
        if item is not None:
            yield from leaf_keys(item, f"{prefix}{f.name}[].")


@contextlib.contextmanager
def record_reads() -> Iterator[set[tuple[str, str]]]:
    """Record (class, field) for every field read from project code outside the loader and `validate`."""
    reads: set[tuple[str, str]] = set()

    def recorder(cls: type):
        names = {f.name for f in dataclasses.fields(cls)}

        def getattribute(self, name):
            if name in names:
                code = sys._getframe(1).f_code
                if (
                    code.co_filename.startswith(PROJECT)
                    and code.co_filename not in NOT_A_USE
                    and code.co_name != "validate"
                ):
                    reads.add((cls.__name__, name))
            return object.__getattribute__(self, name)

        return getattribute

    for cls in SCHEMA_CLASSES:
        cls.__getattribute__ = recorder(cls)
    try:
        yield reads
    finally:
        for cls in SCHEMA_CLASSES:
            del cls.__getattribute__


def default_override(key: str) -> str:
    """`key=<its default>` (a valid value, so only the refusal can fail it)."""
    node: typing.Any = TrainConfig()
    for part in key.split("."):
        node = getattr(node, part)
    return f"{key}={json.dumps(node)}"


def assert_read_or_refused(
    command: str, schema: type, reads: set, refused: dict[str, str], config_file: str | None
) -> None:
    missing = []
    for key, cls, name in leaf_keys(schema):
        if any(key == k or key.startswith(k + ".") for k in refused):
            with pytest.raises(ConfigError, match=rf"config key '{key}' .* not used by {command}"):
                load_config(schema, config_file, [default_override(key)], command=command, unused=refused)
        elif (cls.__name__, name) not in reads:
            missing.append(key)
    assert not missing, f"{command} neither reads nor refuses: {missing}"


def png(path: Path) -> Path:
    Image.fromarray(np.full((32, 32, 3), 120, np.uint8)).save(path)
    return path


def probe_synthetic_data(cfg_data, model, tmp_path: Path, monkeypatch) -> None:
    """The synthetic-set keys are read only when no prepared folder exists: take that branch (stubs build nothing)."""
    import data.prepare
    import data.synth
    import train.data
    from train.data import ensure_prepared

    monkeypatch.setattr(data.synth, "make_style_set", lambda *a, **k: tmp_path)
    monkeypatch.setattr(data.prepare, "prepare", lambda *a, **k: None)
    monkeypatch.setattr(train.data, "check_has_windows", lambda root: None)  # the stubs prepare no window
    ensure_prepared(
        dataclasses.replace(cfg_data, prepared_dir=str(tmp_path / "none"), synthetic_if_missing=True), model
    )


def full_run(style_set: Path, tiny_cfg, out: Path, image: Path, *extra: str) -> list[str]:
    """Overrides that take every optional path of a run: checkpoints, samples, trackers, held-out loss."""
    return run_args(
        style_set,
        tiny_cfg,
        out,
        "max_steps=2",
        "checkpoint.every=1",
        "validation.every=2",
        "validation.steps=1",
        "validation.num_frames=5",
        "validation.height=32",
        "validation.width=32",
        f"validation.images=[{image}]",
        "tracking.report_to=[tensorboard]",
        "data.val_limit=2",
        "gradient_checkpointing=true",
        "cpu_threads=1",
        *extra,
    )


def short_run(style_set: Path, tiny_cfg, out: Path, *extra: str) -> list[str]:
    """The other branch of the objective and schedule (logit-normal noise levels, constant rate)."""
    return run_args(
        style_set,
        tiny_cfg,
        out,
        "max_steps=1",
        "heldout=false",
        "objective.timestep_sampling=logit_normal",
        "optim.schedule=constant",
        *extra,
    )


@pytest.fixture(scope="module")
def stage1_reads(style_set: Path, tiny_cfg, tmp_path_factory) -> tuple[set, Path]:
    tmp = tmp_path_factory.mktemp("keys1")
    with record_reads() as reads:
        assert stage1.main(full_run(style_set, tiny_cfg, tmp / "a", png(tmp / "v.png"))) == 0
        assert stage1.main(short_run(style_set, tiny_cfg, tmp / "b")) == 0
        with pytest.MonkeyPatch.context() as mp:
            probe_synthetic_data(
                load_config(TrainConfig, None, [f"data.prepared_dir={style_set}"]).data, tiny_cfg, tmp, mp
            )
    return reads, tmp / "a"


def test_stage1_reads_or_refuses_every_key(stage1_reads) -> None:
    reads, _ = stage1_reads
    assert_read_or_refused("train.stage1", TrainConfig, reads, stage1.STAGE.refused_keys(), stage1.STAGE.default_config)


def test_stage2_reads_or_refuses_every_key(
    stage1_reads, style_set: Path, tiny_cfg, tmp_path: Path, monkeypatch
) -> None:
    _, style_run = stage1_reads
    with record_reads() as reads:
        assert (
            stage2.main(
                full_run(style_set, tiny_cfg, tmp_path / "a", png(tmp_path / "v.png"), f"base_lora={style_run}")
            )
            == 0
        )
        assert (
            stage2.main(
                short_run(
                    style_set, tiny_cfg, tmp_path / "b", f"base_lora={style_run}", "tokenization.rho_range=[0.4,0.6]"
                )
            )
            == 0
        )
        probe_synthetic_data(
            load_config(TrainConfig, None, [f"data.prepared_dir={style_set}"]).data, tiny_cfg, tmp_path, monkeypatch
        )
    assert_read_or_refused("train.stage2", TrainConfig, reads, stage2.STAGE.refused_keys(), stage2.STAGE.default_config)


def test_generate_reads_every_key(stage1_reads, tiny_cfg, tmp_path: Path) -> None:
    from infer import generate

    _, style_run = stage1_reads
    lora = style_run / "lora" / "style.safetensors"
    argv = [
        f"model.cache_dir={tiny_cfg.cache_dir}",
        f"image={png(tmp_path / 'i.png')}",
        "steps=1",
        "height=32",
        "width=32",
        "num_frames=5",
        f"output_dir={tmp_path / 'out'}",
        f"loras=[{{path: {lora}, weight: 0.5, name: s}}]",
        "scheduler=euler",
        "cat.rho=0.5",
    ]
    with record_reads() as reads:
        generate.main(argv)
    assert_read_or_refused("infer.generate", GenerateConfig, reads, {}, None)


def test_refused_key_exits_2_with_one_line(style_set: Path, tiny_cfg, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: stage1.main(run_args(style_set, tiny_cfg, tmp_path, "tokenization.rho=0.5")))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'tokenization.rho'" in err[0] and "train.stage1" in err[0], err
    assert not (tmp_path / "config.yaml").exists()  # refused before anything ran
