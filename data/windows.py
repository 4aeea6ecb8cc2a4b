"""Cutting a resampled clip into training windows, never across a shot cut.

Frame indices here count frames of the clip resampled to the target fps. A window is named by
a tag that holds everything that changes its pixels apart from the source file and the bucket
(start, length, fps), so cache entries of different window settings never collide.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Window:
    start: int  # first frame, at the target fps
    num_frames: int
    fps: float
    scene: int = 0
    kind: str = "window"  # window | keyframe

    @property
    def tag(self) -> str:
        return f"s{self.start}_n{self.num_frames}_fps{self.fps:g}"

    @property
    def stop(self) -> int:
        return self.start + self.num_frames


def plan_windows(
    total: int,
    num_frames: int,
    stride: int,
    fps: float,
    scenes: list[tuple[int, int]] | None = None,
    max_windows: int = 0,
    keyframes: bool = False,
) -> list[Window]:
    """Windows of `num_frames` every `stride` frames inside each scene ([start, stop) ranges).

    A tail shorter than a window is left out (it would need padding); `keyframes` adds one
    single-frame window at the middle of each window."""
    stride = stride or num_frames
    windows: list[Window] = []
    for scene_index, (lo, hi) in enumerate(scenes or [(0, total)]):
        for start in range(lo, hi - num_frames + 1, stride):
            windows.append(Window(start, num_frames, fps, scene_index))
    if max_windows > 0 and len(windows) > max_windows:
        keep = np.unique(np.linspace(0, len(windows) - 1, max_windows).round().astype(int))
        windows = [windows[i] for i in keep]
    if keyframes:
        windows += [Window(w.start + w.num_frames // 2, 1, fps, w.scene, "keyframe") for w in list(windows)]
    return windows


def detect_scenes(frames: np.ndarray, fps: float, threshold: float, min_len: int) -> list[tuple[int, int]]:
    """Shot boundaries of (T, H, W, 3) RGB frames (small frames are enough) with PySceneDetect's
    ContentDetector; returns [start, stop) ranges covering all frames."""
    from scenedetect import FrameTimecode
    from scenedetect.detectors import ContentDetector

    detector = ContentDetector(threshold=threshold, min_scene_len=max(1, min_len))
    cuts: list[int] = []
    for i, frame in enumerate(frames):
        bgr = np.ascontiguousarray(frame[:, :, ::-1])
        cuts += [c.frame_num for c in detector.process_frame(FrameTimecode(i, fps=fps), bgr)]
    bounds = [0] + sorted(c for c in set(cuts) if 0 < c < len(frames)) + [len(frames)]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
