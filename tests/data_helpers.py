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


# ---------------------------------------------------------------- decoder faults, injected
DECORD_BUG = "Check failed: from_size == to_size (36864 vs. 27648) DECORDArrayCopyFromTo: The size must exactly match"


def pyav_frames(path: Path, indices, size: tuple[int, int] | None = None) -> np.ndarray:
    """Independent PyAV decode of frames by index (the reference for 'frames equal to PyAV's')."""
    import av

    with av.open(str(path)) as container:
        frames = []
        for frame in container.decode(video=0):
            if size is None:
                frames.append(frame.to_ndarray(format="rgb24"))
            else:
                frames.append(frame.to_ndarray(format="rgb24", width=size[1], height=size[0], interpolation="BICUBIC"))
    return np.stack([frames[int(i)] for i in indices])


class BrokenDecord:
    """A decord reader that fails the way decord2 3.4.0 does on some CPUs (or raises on open)."""

    def __init__(self, real, mode: str):
        self.real, self.mode = real, mode

    def __len__(self):
        return len(self.real)

    def __getitem__(self, i):
        frame = self.real[i]
        if self.mode == "shape":  # the frame reports 3/4 of its width, as a padded-stride copy would
            return np.zeros((frame.shape[0], frame.shape[1] * 3 // 4, 3), np.uint8)
        return frame

    def get_frame_timestamp(self, idx):
        return self.real.get_frame_timestamp(idx)

    def get_avg_fps(self):
        return self.real.get_avg_fps()

    def get_batch(self, idx):
        if self.mode == "batch":
            raise RuntimeError(f"[12:00:00] /project/src/runtime/ndarray.cc:171: {DECORD_BUG}")
        batch = self.real.get_batch(idx).asnumpy()
        wrong = batch[:, :, : batch.shape[2] * 3 // 4]  # what came back is not the size asked

        class Out:
            def asnumpy(self):
                return wrong

        return Out()


def break_decord(monkeypatch, mode: str) -> None:
    """Make the project's decord reader raise on open ("open"), raise on get_batch with decord2's
    real error ("batch"), or return frames of another shape than asked ("shape")."""
    import data.video as video

    real_open = video.open_reader

    def fake_open(path, width=-1, height=-1):
        if mode == "open":
            raise RuntimeError("[12:00:00] /project/src/video/video_reader.cc:86: injected: decord cannot open it")
        return BrokenDecord(real_open(path, width, height), mode)

    monkeypatch.setattr(video, "open_reader", fake_open)
