"""Shared fixtures: the tiny Wan preset, built from nothing once per test session (per xdist worker)."""

from __future__ import annotations

import os

import pytest

from core.offline import OFFLINE_DEFAULTS

for _name, _value in OFFLINE_DEFAULTS.items():  # tests never reach the hub (importing core sets nothing)
    os.environ.setdefault(_name, _value)

from core.schema import ModelConfig  # noqa: E402


@pytest.fixture(scope="session")
def tiny_cfg(tmp_path_factory: pytest.TempPathFactory) -> ModelConfig:
    """Tiny preset config whose cache starts empty, so the build-then-load path is exercised."""
    return ModelConfig(preset="tiny", cache_dir=str(tmp_path_factory.mktemp("model-cache")), device="cpu")


@pytest.fixture(scope="session")
def tiny(tiny_cfg: ModelConfig):
    """Loaded tiny Wan components (shared, read-only: tests must not mutate them)."""
    from core.models import load_components

    return load_components(tiny_cfg)
