"""Shared fixtures: the tiny Wan preset, built from nothing once per test session (per xdist worker)."""

from __future__ import annotations

import pytest

import core  # noqa: F401  (offline environment first)
from core.schema import ModelConfig


@pytest.fixture(scope="session")
def tiny_cfg(tmp_path_factory: pytest.TempPathFactory) -> ModelConfig:
    """Tiny preset config whose cache starts empty, so the build-then-load path is exercised."""
    return ModelConfig(preset="tiny", cache_dir=str(tmp_path_factory.mktemp("model-cache")), device="cpu")


@pytest.fixture(scope="session")
def tiny(tiny_cfg: ModelConfig):
    """Loaded tiny Wan components (shared, read-only: tests must not mutate them)."""
    from core.wan import load_components

    return load_components(tiny_cfg)
