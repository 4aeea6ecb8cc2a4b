"""The project's one video reader: probe (with a precise reason when a file is unusable), resample by
timestamps, decode. data.prepare, the A/B runner (infer.clips) and the synthetic-clip checks all read
through here.

decord is the first choice (the stack's decoder, and its FFmpeg scaler gives the fast scaled path).
PyAV is the fallback, used when decord raises or returns frames of a shape other than asked, when
opening a clip as well as when reading a batch, at full size and at scaled size: decord2 3.4.0 cannot
decode a plain 96x96 H.264 clip at full size on some CPUs (`DECORDArrayCopyFromTo: The size must
exactly match (36864 vs. 27648)`). A clip is unusable only when both fail; the reason names both.
Where both work, PyAV's frames equal decord's: identical at full size, mean |diff| < 1 (of 255) at
scaled size (tests/test_data_video.py measures it).

PyAV also classifies a file first, because decord's own errors ("Error reading x.mp4...") do not say
whether the file is a text file, an audio-only file or a truncated mp4. Resampling to the target fps
uses each frame's presentation time, so variable-frame-rate clips keep their timing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".y4m")
VFR_TOLERANCE = 0.05  # relative spread of frame durations above which a clip counts as variable-frame-rate
PYAV_SCALER = "BICUBIC"  # swscale flags closest to decord's scaled output (measured: mean |diff| 0.44-0.56)


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
    decoder: str = "decord"  # who probed it: "decord", or "pyav" when decord could not
    decord_error: str | None = None  # why decord could not (then decoder == "pyav")


# ---------------------------------------------------------------- probing
def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "] " in text:  # drop decord's "[time] /project/src/...cc:123:" prefixes
        text = text.rsplit("] ", 1)[-1]
    text = re.sub(r"/project/src/\S+:\d+: ", "", text)  # and its source locations
    return text[:160]


def _classify_with_pyav(path: Path) -> tuple[int, int] | str:
    """The coded (height, width) of the first video stream, or PyAV's reason for not opening the file.
    Raises VideoError for facts about the file that no decoder changes (empty, audio-only, no video)."""
    import av

    if path.stat().st_size == 0:
        raise VideoError("empty file (0 bytes): zero frames")
    try:
        with av.open(str(path)) as container:
            videos, audios = container.streams.video, len(container.streams.audio)
            size = (videos[0].codec_context.height, videos[0].codec_context.width) if videos else None
    except av.error.InvalidDataError:
        return "invalid data (corrupt, truncated, or not a video file)"
    except (av.error.FFmpegError, OSError) as exc:
        return _short(exc)
    if size is None and audios > 0:
        raise VideoError(f"audio-only file: {audios} audio stream(s), no video stream")
    if size is None:
        raise VideoError("zero frames: the container has no video stream")
    return size


def _info(path: Path, starts: np.ndarray, avg_fps: float, size: tuple[int, int], decoder: str) -> VideoInfo:
    n = len(starts)
    fps = avg_fps or 1.0
    if n > 1:
        durations = np.diff(starts)
        last = median = float(np.median(durations))
        variable = bool(median > 0 and (durations.max() - durations.min()) / median > VFR_TOLERANCE)
        fps = (n - 1) / max(starts[-1] - starts[0], 1e-9)
    else:
        last, variable = 1.0 / fps, False
    duration = float(starts[-1] - starts[0] + last)
    return VideoInfo(path, n, fps, int(size[0]), int(size[1]), duration, starts - starts[0], variable, decoder)


def open_reader(path: Path, width: int = -1, height: int = -1):
    """A decord VideoReader (optionally decoding straight to a smaller size)."""
    import decord

    return decord.VideoReader(str(path), ctx=decord.cpu(0), width=width, height=height)


def _probe_decord(path: Path, coded: tuple[int, int] | None) -> VideoInfo:
    reader = open_reader(path)
    n = len(reader)
    if n == 0:
        raise VideoError("zero frames")
    height, width = reader[0].shape[:2]
    if coded is not None and (height, width) != coded:
        raise VideoError(f"reports {width}x{height} frames, the stream is {coded[1]}x{coded[0]}")
    starts = reader.get_frame_timestamp(range(n))[:, 0].astype(np.float64)
    return _info(path, starts, float(reader.get_avg_fps()), (height, width), "decord")


def _probe_pyav(path: Path) -> VideoInfo:
    """Frame count and presentation times from the demuxed packets (no decoding)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        size = (stream.codec_context.height, stream.codec_context.width)
        avg, declared = float(stream.average_rate or 0), stream.frames
        pts = sorted(float(p.pts * p.time_base) for p in container.demux(stream) if p.pts is not None and p.size)
    if not pts:
        raise VideoError("zero frames")
    if declared and len(pts) < declared:
        raise VideoError(f"truncated: the container declares {declared} frames, the file holds {len(pts)}")
    return _info(path, np.asarray(pts, np.float64), avg, size, "pyav")


def probe(path: str | Path) -> VideoInfo:
    """Frame count, size, rate and timestamps of a clip; VideoError with the reason if unusable."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise VideoError(f"broken symbolic link: its target '{path.readlink()}' does not exist")
    classified = _classify_with_pyav(path)
    coded = classified if isinstance(classified, tuple) else None
    try:
        return _probe_decord(path, coded)
    except Exception as exc:  # decord raises RuntimeError / DECORDError with C++ traces
        decord_error = _short(exc)
    if coded is None:
        pyav_error = str(classified)
    else:
        try:
            info = _probe_pyav(path)
            info.decord_error = decord_error
            return info
        except Exception as exc:
            pyav_error = _short(exc)
    kind = "zero frames" if "zero frames" in decord_error and "zero frames" in pyav_error else "not a readable video"
    raise VideoError(f"{kind}: decord: {decord_error}; PyAV: {pyav_error}")


def resample_indices(timestamps: np.ndarray, duration: float, fps: float) -> np.ndarray:
    """Source frame index shown at each tick of a `fps` clock (sample-and-hold on presentation times)."""
    count = int(np.floor(duration * fps + 1e-6))
    ticks = np.arange(count) / fps
    idx = np.searchsorted(timestamps, ticks + 1e-6, side="right") - 1
    return np.clip(idx, 0, len(timestamps) - 1)


# ---------------------------------------------------------------- decoding
class _PyAVFrames:
    """Frames by index (presentation order) from one forward pass of PyAV's decoder, reopened only
    when asked to go back; `size` (H, W) scales with swscale."""

    def __init__(self, path: Path, size: tuple[int, int] | None):
        self.path, self.size = path, size
        self.container = None

    def _open(self) -> None:
        import av

        self.close()
        self.container = av.open(str(self.path))
        stream = self.container.streams.video[0]
        stream.thread_type = "AUTO"
        self.frames, self.position = self.container.decode(stream), 0

    def close(self) -> None:
        if self.container is not None:
            self.container.close()
            self.container = None

    def read(self, indices: list[int]) -> np.ndarray:
        wanted = sorted(set(indices))
        if self.container is None or wanted[0] < self.position:
            self._open()
        got: dict[int, np.ndarray] = {}
        for index in wanted:
            while self.position <= index:
                frame = next(self.frames, None)
                if frame is None:
                    raise VideoError(f"the stream ends after {self.position} frames, frame {index} was asked")
                if self.position == index:
                    got[index] = self._array(frame)
                self.position += 1
        return np.stack([got[i] for i in indices])

    def _array(self, frame) -> np.ndarray:
        if self.size is None:
            return frame.to_ndarray(format="rgb24")
        height, width = self.size
        return frame.to_ndarray(format="rgb24", width=width, height=height, interpolation=PYAV_SCALER)


class ScaledReader:
    """Frames of one clip at `size` (H, W): decord first (straight to `size` with FFmpeg's scaler when it
    differs from `source`: 2-4x faster than decoding UHD at full size, docs/data.md), PyAV for the rest
    of the clip once decord raises or returns another shape. `read` returns (T, H, W, 3) uint8 at `size`
    or raises VideoError naming both decoders' reasons."""

    def __init__(self, path: Path, source: tuple[int, int], size: tuple[int, int] | None = None):
        self.path, self.source = Path(path), tuple(source)
        self.size = tuple(size) if size is not None else self.source
        self.scaled = self.size != self.source
        self.decoder = "decord"
        self.decord_error: str | None = None
        self._decord = None
        self._pyav: _PyAVFrames | None = None

    def read(self, indices: np.ndarray) -> np.ndarray:
        idx = [int(i) for i in indices]
        expected = (len(idx), *self.size, 3)
        if self.decoder == "decord":
            try:
                frames = self._read_decord(idx)
                if frames.shape != expected:
                    raise VideoError(f"returned frames of shape {frames.shape}, expected {expected}")
                return frames
            except Exception as exc:  # noqa: BLE001 - any decord failure hands the clip to PyAV
                self.decord_error, self.decoder, self._decord = _short(exc), "pyav", None
        try:
            if self._pyav is None:
                self._pyav = _PyAVFrames(self.path, self.size if self.scaled else None)
            frames = self._pyav.read(idx)
            if frames.shape != expected:
                raise VideoError(f"returned frames of shape {frames.shape}, expected {expected}")
            return frames
        except Exception as exc:  # noqa: BLE001 - both decoders failed: the window is unusable
            lo, hi = min(idx), max(idx)
            raise VideoError(
                f"decode failed in source frames {lo}..{hi}: decord: {self.decord_error}; PyAV: {_short(exc)}"
            ) from None

    def _read_decord(self, idx: list[int]) -> np.ndarray:
        if self._decord is None:
            height, width = self.size if self.scaled else (-1, -1)
            self._decord = open_reader(self.path, width=width, height=height)
        return self._decord.get_batch(idx).asnumpy()

    def close(self) -> None:
        if self._pyav is not None:
            self._pyav.close()
        self._decord = self._pyav = None


def read_clip(path: str | Path, indices: np.ndarray | None = None, size: tuple[int, int] | None = None) -> np.ndarray:
    """(T, H, W, 3) uint8 frames of a clip at source indices (default: all), optionally at `size` (H, W)."""
    info = probe(path)
    reader = ScaledReader(Path(path), (info.height, info.width), size)
    try:
        return reader.read(np.arange(info.num_frames) if indices is None else indices)
    finally:
        reader.close()


def resize_uint8(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(T, H, W, 3) uint8 resized to `size` with torch's antialiased bilinear (the reference in tests)."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(frames).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return x.permute(0, 2, 3, 1).contiguous().numpy()
