"""The pieces of diffusers' Wan code mirrored in core/models/wan21 are pinned to the diffusers
source they copy: a changed diffusers fails here, naming its version and what to re-check."""

from __future__ import annotations

import diffusers
import pytest
from diffusers.models.transformers import transformer_wan

from core.models.wan21.mirrors import MIRRORED_VERSION, MIRRORS, changed_mirrors


def test_the_installed_diffusers_matches_every_mirrored_function():
    changed = changed_mirrors()
    assert not changed, "\n".join(changed)


def test_a_changed_diffusers_forward_is_named_with_the_version_and_the_mirror(monkeypatch):
    original = transformer_wan.WanRotaryPosEmbed.forward

    def forward(self, hidden_states):  # a stand-in for a future diffusers' edited forward
        return original(self, hidden_states)

    monkeypatch.setattr(transformer_wan.WanRotaryPosEmbed, "forward", forward)
    monkeypatch.setattr(diffusers, "__version__", "9.9.9")
    changed = changed_mirrors()
    assert len(changed) == 1
    assert "installed diffusers 9.9.9: " in changed[0] and "WanRotaryPosEmbed.forward differs" in changed[0]
    assert f"mirrored from diffusers {MIRRORED_VERSION}" in changed[0]
    assert "core/models/wan21/rope.py" in changed[0]


def test_a_removed_diffusers_function_is_reported_not_raised(monkeypatch):
    monkeypatch.delattr(transformer_wan.WanAttnProcessor, "__call__")
    changed = changed_mirrors()
    assert any("WanAttnProcessor.__call__" in line and "attention.py" in line for line in changed)


@pytest.mark.parametrize("mirror", MIRRORS, ids=lambda m: m.source.split(":")[1])
def test_every_mirror_names_an_existing_module(mirror):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / mirror.mirror.split(" ")[0]
    assert path.is_file(), path
