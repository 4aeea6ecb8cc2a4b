"""Reading clips: probe (with a precise reason when a file is unusable), resample by timestamps, decode.

PyAV classifies a file first because decord's own errors ("Error reading x.mp4...") do not say
whether the file is a text file, an audio-only file or a truncated mp4; decord then does the
frame-accurate decoding. Resampling to the target fps uses each frame's presentation time, so
variable-frame-rate clips are resampled correctly instead of being sped up or slowed down.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm")
VFR_TOLERANCE = 0.05  # relative spread of frame durations above which a clip counts as variable-frame-rate


class VideoError(Exception):
    """A clip (or part of it) cannot be used; the message is the reason written to rejects.jsonl."""


@dataclass
class VideoInfo:
    path: Path
    num_frames: int
    fps: float  # average frame rate
    height: int
    width: int
    duration: float  # seconds, from the first frame's start to the last frame's end
    timestamps: np.ndarray  # (num_frames,) presentation start time of each frame, seconds
    variable_fps: bool


def _classify_with_pyav(path: Path) -> None:
    """Raise VideoError with a human reason if the container has no usable video stream."""
    import av

    if path.stat().st_size == 0:
        raise VideoError("empty file (0 bytes): zero frames")
    try:
        with av.open(str(path)) as container:
            videos, audios = len(container.streams.video), len(container.streams.audio)
    except av.error.InvalidDataError:
        raise VideoError("not a readable video: invalid data (corrupt, truncated, or not a video file)") from None
    except (av.error.FFmpegError, OSError) as exc:
        raise VideoError(f"not a readable video: {exc}") from None
    if videos == 0 and audios > 0:
        raise VideoError(f"audio-only file: {audios} audio stream(s), no video stream")
    if videos == 0:
        raise VideoError("zero frames: the container has no video stream")


def open_reader(path: Path, width: int = -1, height: int = -1):
    """A decord VideoReader (optionally decoding straight to a smaller size)."""
    import decord

    return decord.VideoReader(str(path), ctx=decord.cpu(0), width=width, height=height)


def probe(path: str | Path) -> VideoInfo:
    """Frame count, size, rate and timestamps of a clip; VideoError with the reason if unusable."""
    path = Path(path)
    _classify_with_pyav(path)
    try:
        reader = open_reader(path)
        n = len(reader)
    except Exception as exc:  # decord raises RuntimeError / DECORDError with C++ traces
        raise VideoError(f"decoder cannot open the video stream (corrupt or truncated data?): {_short(exc)}") from None
    if n == 0:
        raise VideoError("zero frames: the video stream holds no decodable frame")
    height, width = reader[0].shape[:2] if n else (0, 0)
    spans = reader.get_frame_timestamp(range(n))
    starts = spans[:, 0].astype(np.float64)
    fps = float(reader.get_avg_fps()) or 1.0
    if n > 1:
        durations = np.diff(starts)
        last = float(np.median(durations))
        median = float(np.median(durations))
        variable = bool(median > 0 and (durations.max() - durations.min()) / median > VFR_TOLERANCE)
        fps = (n - 1) / max(starts[-1] - starts[0], 1e-9)
    else:
        last, variable = 1.0 / fps, False
    duration = float(starts[-1] - starts[0] + last)
    return VideoInfo(path, n, fps, int(height), int(width), duration, starts - starts[0], variable)


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "] " in text:  # drop decord's "[time] /project/src/...cc:123:" prefixes
        text = text.rsplit("] ", 1)[-1]
    text = re.sub(r"/project/src/\S+:\d+: ", "", text)  # and its source locations
    return text[:160]


def resample_indices(timestamps: np.ndarray, duration: float, fps: float) -> np.ndarray:
    """Source frame index shown at each tick of a `fps` clock (sample-and-hold on presentation times)."""
    count = int(np.floor(duration * fps + 1e-6))
    ticks = np.arange(count) / fps
    idx = np.searchsorted(timestamps, ticks + 1e-6, side="right") - 1
    return np.clip(idx, 0, len(timestamps) - 1)


def read_frames(reader, indices: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 frames at source indices; VideoError if the decoder fails (e.g. truncated data)."""
    try:
        return reader.get_batch([int(i) for i in indices]).asnumpy()
    except Exception as exc:
        lo, hi = int(np.min(indices)), int(np.max(indices))
        raise VideoError(f"decode failed in source frames {lo}..{hi}: {_short(exc)}") from None


class ScaledReader:
    """Decodes frames straight to `size` (H, W) with FFmpeg's scaler inside decord: 2-4x faster than
    decoding UHD at full size (docs/data.md). decord's scaled output is checked; if it fails or has
    the wrong size (seen for some small sizes), frames are decoded at full size and resized with
    torch (antialiased bilinear on uint8) instead. `read` always returns (T, H, W, 3) uint8 at `size`."""

    def __init__(self, path: Path, source: tuple[int, int], size: tuple[int, int]):
        self.path, self.source, self.size = Path(path), source, size
        self.scaled = size != source
        self.reader = None

    def read(self, indices: np.ndarray) -> np.ndarray:
        try:
            if self.reader is None:
                h, w = self.size if self.scaled else (-1, -1)
                self.reader = open_reader(self.path, width=w, height=h)
            frames = read_frames(self.reader, indices)
            if self.scaled and frames.shape[1:3] != self.size:
                raise VideoError(f"scaled decode gave {frames.shape[1:3]}, expected {self.size}")
        except Exception:
            if not self.scaled:
                raise
            self.scaled, self.reader = False, None  # full-size decoding for the rest of this clip
            return self.read(indices)
        if frames.shape[1:3] != self.size:
            frames = _resize_uint8(frames, self.size)
        return frames


def _resize_uint8(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(frames).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return x.permute(0, 2, 3, 1).contiguous().numpy()
