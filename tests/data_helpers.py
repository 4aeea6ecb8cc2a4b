"""Real media files for the data tests: good clips and every kind of bad input, made on the spot."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from data.writer import write_video


def moving_clip(frames: int, height: int, width: int, seed: int = 0, cut_at: int | None = None) -> np.ndarray:
    """(T, H, W, 3) uint8: a textured gradient with a bright square moving right; an optional hard cut
    (different colours and layout) at frame `cut_at`."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 200 // max(width, 1), y * 200 // max(height, 1), np.full_like(x, 90)], -1).astype(np.int16)
    base += rng.integers(-20, 20, base.shape, dtype=np.int16)
    other = 255 - base
    out = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        frame = (other if cut_at is not None and t >= cut_at else base).copy()
        size = max(2, height // 4)
        left = (t * 2) % max(1, width - size)
        frame[height // 3 : height // 3 + size, left : left + size] = 250
        out[t] = np.clip(frame, 0, 255)
    return out


def write_clip(
    path: Path,
    frames: int = 20,
    height: int = 64,
    width: int = 112,
    fps: float = 16,
    caption: str | None = "a man walks",
    **kwargs,
) -> Path:
    write_video(
        moving_clip(frames, height, width, seed=zlib.crc32(path.name.encode()), cut_at=kwargs.pop("cut_at", None)),
        path,
        fps=fps,
        **kwargs,
    )
    if caption is not None:
        path.with_suffix(".txt").write_text(caption)
    return path


def write_vfr_clip(path: Path, frames: int = 40, caption: str = "a vfr shot") -> Path:
    """Frame durations of 20/40/80 ms in a fixed seeded pattern (variable frame rate)."""
    rng = np.random.default_rng(1)
    steps = rng.choice([20, 40, 80], size=frames)
    stamps = np.concatenate([[0], np.cumsum(steps[:-1])]).tolist()
    write_video(moving_clip(frames, 64, 112), path, timestamps_ms=stamps)
    path.with_suffix(".txt").write_text(caption)
    return path


def write_truncated(path: Path, faststart: bool = False) -> Path:
    """A real mp4 cut in half (the index at the end is lost unless faststart moved it to the front)."""
    import av

    frames = moving_clip(40, 64, 112)
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as container:
        stream = container.add_stream("libx264", rate=16)
        stream.width, stream.height, stream.pix_fmt = 112, 64, "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    path.with_suffix(".txt").write_text("a truncated shot")
    return path


def write_zero_frames(path: Path) -> Path:
    """An mp4 header with a video stream declared but no frame written."""
    import av

    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=16)
    stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
    container.start_encoding()
    container.close()
    path.with_suffix(".txt").write_text("nothing")
    return path


def write_audio_only(path: Path) -> Path:
    """An mp4 holding one AAC audio stream and no video."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        stream.layout = "mono"
        for i in range(20):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    path.with_suffix(".txt").write_text("only sound")
    return path
