"""One clip -> manifest rows and cache entries; every problem with the clip becomes a reject or a notice.

Errors that are not about one clip (model, disk, memory) are not caught here: they stop the run
(data.prepare). A reject means something was not used (the whole clip, or one window that failed to decode); a
notice means the clip was used after an adjustment the user should know about (variable frame
rate resampled, odd size cropped, upscaled, default caption). Both land in the output folder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from core.models import get_family
from core.schema import PrepareConfig
from data import cache
from data.buckets import Bucket, choose_bucket, decode_size, resize_crop, upscale_needed
from data.captions import find_caption, with_trigger
from data.encode import analyse, encode_windows
from data.video import ScaledReader, VideoError, VideoInfo, probe, resample_indices
from data.windows import Window, detect_scenes, plan_windows

SCENE_PROBE_WIDTH = 160  # frames are decoded this small for shot detection


@dataclass
class Report:
    """What happened to the inputs: rejects (not used) and notices (used after an adjustment)."""

    rejects: list[dict] = field(default_factory=list)
    notices: list[dict] = field(default_factory=list)
    encoded: int = 0  # windows encoded by the model in this run
    analysed: int = 0  # windows whose complexity was computed in this run
    cached: int = 0  # windows found complete in the caches
    texts_encoded: int = 0

    def reject(self, path: str, reason: str, stage: str, window: str | None = None) -> None:
        entry = {"path": path, "reason": reason, "stage": stage}
        if window:
            entry["window"] = window
        self.rejects.append(entry)

    def notice(self, path: str, note: str) -> None:
        self.notices.append({"path": path, "note": note})


@dataclass
class Clip:
    path: Path
    rel: str
    info: VideoInfo
    caption: str
    caption_source: str
    bucket: Bucket
    source_index: np.ndarray  # source frame index of each resampled frame
    windows: list[Window]
    content: str = ""


class ClipIngest:
    """Turns clips into rows; `get_model` is called only when something must be encoded."""

    def __init__(
        self,
        cfg: PrepareConfig,
        buckets: list[Bucket],
        captions: dict[str, str],
        cache_root: Path,
        model_id: str | None,
        get_model: Callable,
        report: Report,
    ):
        self.cfg, self.buckets, self.captions, self.cache_root = cfg, buckets, captions, cache_root
        self.model_id, self.get_model, self.report = model_id, get_model, report
        self.input_dir = Path(cfg.input_dir)
        self.family = get_family(cfg.model.family)
        self.geometry = self.family.geometry  # the patch grid of the complexity maps

    # ------------------------------------------------------------ planning (no decoding of windows)
    def plan(self, path: Path) -> Clip | None:
        rel = path.relative_to(self.input_dir).as_posix()
        cfg = self.cfg
        try:
            info = probe(path)
            content = cache.file_hash(path)
        except VideoError as exc:
            self.report.reject(rel, str(exc), "probe")
            return None
        except OSError as exc:  # the input file itself cannot be read (permissions, vanished)
            self.report.reject(rel, f"cannot read the file: {exc.strerror or exc}", "probe")
            return None
        if info.decoder == "pyav":
            self.report.notice(rel, f"opened with PyAV: decord could not ({info.decord_error})")
        caption, source = find_caption(path, self.input_dir, self.captions)
        if caption is None:
            if cfg.missing_caption == "skip":
                self.report.reject(rel, f"{source} (missing_caption=skip)", "caption")
                return None
            self.report.notice(rel, f"{source}: used default_caption")
            caption, source = cfg.default_caption, "default"
        caption = with_trigger(caption, cfg.trigger)
        bucket = choose_bucket(info.height, info.width, self.buckets)
        scale = upscale_needed(info.height, info.width, bucket)
        if scale > cfg.max_upscale:
            self.report.reject(
                rel,
                f"too small: {info.width}x{info.height} needs x{scale:.2f} upscaling to fill "
                f"bucket {bucket.width}x{bucket.height} (max_upscale={cfg.max_upscale})",
                "size",
            )
            return None
        if info.height % 2 or info.width % 2:
            self.report.notice(
                rel,
                f"odd frame size {info.width}x{info.height}: scaled and centre-cropped to "
                f"{bucket.width}x{bucket.height}",
            )
        if scale > 1:
            self.report.notice(rel, f"upscaled x{scale:.2f} to fill bucket {bucket.width}x{bucket.height}")
        if info.variable_fps:
            spans = np.diff(info.timestamps) * 1000
            self.report.notice(
                rel,
                f"variable frame rate (frame durations {spans.min():.0f}..{spans.max():.0f} ms): "
                f"resampled to {cfg.fps:g} fps by timestamps",
            )
        index = resample_indices(info.timestamps, info.duration, cfg.fps)
        if len(index) < cfg.num_frames:
            self.report.reject(
                rel,
                f"too short: {len(index)} frames at {cfg.fps:g} fps ({info.num_frames} source frames, "
                f"{info.duration:.2f} s); a window needs num_frames={cfg.num_frames}",
                "length",
            )
            return None
        scenes = None
        if cfg.split_scenes:
            try:
                scenes = self._scenes(path, info, index)
            except VideoError as exc:
                self.report.reject(rel, f"shot detection: {exc}", "decode")
                return None
        windows = plan_windows(
            len(index), cfg.num_frames, cfg.stride, cfg.fps, scenes, cfg.max_windows_per_clip, cfg.keyframes
        )
        if not any(w.kind == "window" for w in windows):
            self.report.reject(
                rel,
                f"no window fits: every shot is shorter than num_frames={cfg.num_frames} ({len(scenes or [])} shots)",
                "length",
            )
            return None
        return Clip(path, rel, info, caption, source, bucket, index, windows, content)

    def _scenes(self, path: Path, info: VideoInfo, index: np.ndarray) -> list[tuple[int, int]]:
        width = SCENE_PROBE_WIDTH
        height = max(2, round(info.height * width / info.width / 2) * 2)
        reader = ScaledReader(path, (info.height, info.width), (height, width))
        try:
            frames = reader.read(index)
        finally:
            reader.close()
        return detect_scenes(frames, self.cfg.fps, self.cfg.scene_threshold, min_len=max(1, self.cfg.num_frames // 2))

    # ------------------------------------------------------------ analysis + encoding
    def process(self, clip: Clip) -> list[dict]:
        """Fill the caches for every window of a planned clip; return its manifest rows."""
        analysis_path = cache.analysis_shard(self.cache_root, self.geometry, clip.bucket.name, clip.content)
        model_path = (
            cache.model_shard(self.cache_root, self.model_id, clip.bucket.name, clip.content) if self.model_id else None
        )
        have_analysis = cache.shard_keys(analysis_path)
        have_model = cache.shard_keys(model_path) if model_path else set()
        new_analysis: dict[str, torch.Tensor] = {}
        new_model: dict[str, torch.Tensor] = {}
        stats: dict[str, torch.Tensor] = {}
        size = decode_size(clip.info.height, clip.info.width, clip.bucket)
        reader = ScaledReader(clip.path, (clip.info.height, clip.info.width), size)
        good: list[Window] = []
        decoded = 0  # windows read in this run (a PyAV notice only when PyAV delivered frames)
        pending: list[tuple[Window, torch.Tensor]] = []
        for window in clip.windows:
            need_analysis = not cache.has_window(have_analysis, window.tag, cache.ANALYSIS_FIELDS)
            need_model = model_path is not None and not cache.has_window(have_model, window.tag, cache.MODEL_FIELDS)
            if not (need_analysis or need_model):
                self.report.cached += 1
                good.append(window)
                continue
            try:
                video = resize_crop(reader.read(clip.source_index[window.start : window.stop]), clip.bucket)
            except VideoError as exc:  # both decoders failed on this window (the reason names both)
                self.report.reject(clip.rel, str(exc), "decode", window.tag)
                continue
            decoded += 1
            if need_analysis:
                conditioned = self.family.image_conditioned(self.geometry.latent_frames(window.num_frames))
                for name, value in analyse(video, self.geometry, reference=conditioned).items():
                    new_analysis[f"{window.tag}/{name}"] = value
                self.report.analysed += 1
            if need_model:
                pending.append((window, video))
                if len(pending) >= self.cfg.batch_size:
                    new_model.update(self._encode(pending))
                    pending = []
            good.append(window)
        new_model.update(self._encode(pending))
        reader.close()
        if reader.decoder == "pyav" and clip.info.decoder != "pyav" and decoded:
            self.report.notice(clip.rel, f"decoded with PyAV: decord failed ({reader.decord_error})")
        meta = {"source": clip.rel, "content_sha256": clip.content}
        cache.merge_into_shard(analysis_path, new_analysis, meta)
        if model_path is not None:
            cache.merge_into_shard(model_path, new_model, {**meta, "model_id": self.model_id})
            self._encode_text(clip.caption)
        for window in good:
            key = f"{window.tag}/si_ti"
            stats[window.tag] = (
                new_analysis[key]
                if key in new_analysis
                else cache.read_window(analysis_path, window.tag, ("si_ti",))["si_ti"]
            )
        return self._rows(clip, good, stats)

    def _encode(self, pending: list[tuple[Window, torch.Tensor]]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        by_length: dict[int, list[tuple[Window, torch.Tensor]]] = {}
        for window, video in pending:
            by_length.setdefault(window.num_frames, []).append((window, video))
        for group in by_length.values():
            encoded = encode_windows(self.get_model(), torch.stack([video for _, video in group]))
            for (window, _), tensors in zip(group, encoded, strict=True):
                out.update({f"{window.tag}/{name}": value for name, value in tensors.items()})
                self.report.encoded += 1
        return out

    def _encode_text(self, caption: str) -> None:
        from data.encode import encode_caption

        path = cache.text_shard(self.cache_root, self.model_id, caption)
        if "text/embeds" in cache.shard_keys(path):
            return
        cache.save_shard(
            path,
            {"text/embeds": encode_caption(self.get_model(), caption)},
            {"caption": caption, "model_id": self.model_id},
        )
        self.report.texts_encoded += 1

    def _rows(self, clip: Clip, windows: list[Window], stats: dict[str, torch.Tensor]) -> list[dict]:
        if not windows:
            return []
        clip_si = max(float(stats[w.tag][0]) for w in windows)
        clip_ti = max(float(stats[w.tag][1]) for w in windows)
        info, fps = clip.info, self.cfg.fps
        rows = []
        for w in windows:
            src = clip.source_index[w.start : w.stop]
            rows.append(
                {
                    "window_id": f"{clip.rel}#{w.tag}",
                    "tag": w.tag,
                    "kind": w.kind,
                    "source": clip.rel,
                    "content_hash": clip.content,
                    "start": w.start,
                    "num_frames": w.num_frames,
                    "source_start_frame": int(src[0]),
                    "source_end_frame": int(src[-1]),
                    "start_time": round(w.start / fps, 4),
                    "end_time": round(w.stop / fps, 4),
                    "fps": float(fps),
                    "source_fps": round(info.fps, 4),
                    "variable_fps": info.variable_fps,
                    "source_height": info.height,
                    "source_width": info.width,
                    "height": clip.bucket.height,
                    "width": clip.bucket.width,
                    "bucket": clip.bucket.name,
                    "scene": w.scene,
                    "caption": clip.caption,
                    "caption_source": clip.caption_source,
                    "si": round(float(stats[w.tag][0]), 3),
                    "ti": round(float(stats[w.tag][1]), 3),
                    "clip_si": round(clip_si, 3),
                    "clip_ti": round(clip_ti, 3),
                    "source_duration": round(info.duration, 4),
                }
            )
        return rows
