"""Deterministic H.264 writing with PyAV, with the knobs synthetic benchmark clips need.

`core.media.write_mp4` is the project's everyday writer; synthetic SI/TI clips need a low CRF
(compression smooths texture and would pull SI out of its band), a fixed x264 thread count (the
output then does not depend on the machine's core count) and optional per-frame timestamps
(variable-frame-rate test clips).
"""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import numpy as np

from core.io import atomic_path

X264_THREADS = 4


def write_video(
    frames: np.ndarray | Iterable[np.ndarray],
    path: str | Path,
    fps: float = 16,
    crf: int = 18,
    preset: str = "medium",
    pix_fmt: str = "yuv420p",
    timestamps_ms: list[int] | None = None,
) -> Path:
    """(T, H, W, 3) uint8 (or an iterable of (H, W, 3) frames, streamed) -> H.264 mp4, atomically.
    `timestamps_ms` gives each frame's presentation time (variable frame rate); yuv420p needs even
    sizes, use pix_fmt="yuv444p" for odd ones."""
    import av

    path = Path(path)
    rate = Fraction(fps).limit_denominator(1001)
    stream = None
    with atomic_path(path) as tmp, av.open(str(tmp), "w", format="mp4") as container:
        time_base = Fraction(1, 1000) if timestamps_ms is not None else 1 / rate
        for i, frame in enumerate(frames):
            if stream is None:
                stream = container.add_stream("libx264", rate=rate)
                stream.width, stream.height, stream.pix_fmt = frame.shape[1], frame.shape[0], pix_fmt
                stream.thread_count = X264_THREADS
                stream.options = {"crf": str(crf), "preset": preset}
                stream.codec_context.time_base = time_base
                stream.time_base = time_base
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            video_frame.pts = int(timestamps_ms[i]) if timestamps_ms is not None else i
            video_frame.time_base = time_base
            for packet in stream.encode(video_frame):
                container.mux(packet)
        if stream is None:
            raise ValueError("write_video needs at least one frame")
        for packet in stream.encode():
            container.mux(packet)
    return path


def decode_all(path: str | Path) -> np.ndarray:
    """Every frame of a clip as (T, H, W, 3) uint8, for checks and hashes, through the project's reader
    (decord, or PyAV where decord fails: it cannot decode some small sizes, e.g. 48 px or 96x96)."""
    from data.video import read_clip

    return read_clip(path)
