"""core.io: a write that fails leaves the old file (or folder) as it was and no temporary behind."""

from __future__ import annotations

import json

import pytest

from core.io import atomic_path, write_json_atomic, write_text_atomic


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "report.json"
    write_json_atomic(target, {"a": 1})
    with pytest.raises(ValueError):
        write_json_atomic(target, {"a": float("nan")}, allow_nan=False)
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_temporary_keeps_the_suffix_and_replaces_the_target(tmp_path):
    target = tmp_path / "sub" / "video.mp4"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".mp4" and tmp != target
        tmp.write_bytes(b"new")
    write_text_atomic(target, "newer")
    assert target.read_text() == "newer" and len(list(target.parent.iterdir())) == 1


def test_folder_is_swapped_whole(tmp_path):
    folder = tmp_path / "manifest"
    for content in ("old", "new"):
        with atomic_path(folder) as tmp:
            tmp.mkdir()
            (tmp / "data.txt").write_text(content)
    assert (folder / "data.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest"]
    with pytest.raises(OSError), atomic_path(folder) as tmp:
        tmp.mkdir()
        raise OSError("disk full")
    assert (folder / "data.txt").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["manifest"]
