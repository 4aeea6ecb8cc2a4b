"""Ingest throughput: decode + window + resize, in frames per second, for 720p and UHD input.

    python -m data.bench --json runs/bench/data.json [--repeats 3] [--frames 65]

Measures what `data.prepare` does per window before any model runs, three ways:
- decode: decord decodes each window's frames (indices from the fps resampling) at full size;
- decode+resize: the same, then `resize_crop` (torch, antialiased bilinear on uint8) to the bucket;
- scaled-decode+crop: decord/FFmpeg decodes straight to the size covering the bucket
  (`ScaledReader`), then a centre crop.
`data.prepare` picks scaled decoding when a clip shrinks at least 2x per side (UHD -> 480p/720p)
and full-size decoding + torch resize otherwise (720p -> 480p): `decode_size` in data/buckets.py.
Windows are 33 frames at 16 fps with prepare's default stride (no overlap). Input clips are
synthetic (textured, panning), H.264 crf 18, generated once into runs/bench/inputs/. Each figure
is the median over repeats of frames delivered per wall second.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from core.config import run_cli
from data.buckets import Bucket, choose_bucket, cover_size, decode_size, make_buckets, resize_crop
from data.cache import write_json_atomic
from data.video import ScaledReader, probe, resample_indices
from data.windows import plan_windows
from data.writer import write_video

INPUTS = {"720p": (720, 1280), "UHD": (2160, 3840)}
ASPECTS = [16 / 9, 4 / 3, 1.0, 3 / 4, 9 / 16]


def make_input(path: Path, height: int, width: int, frames: int, fps: int) -> Path:
    """A textured clip panning 3 px/frame with a moving bright block (cached on disk)."""
    if path.is_file():
        return path
    rng = np.random.default_rng(0)
    tile = rng.integers(0, 256, (height // 4 + 1, width // 4 + 1, 3), dtype=np.uint8)
    texture = np.repeat(np.repeat(tile, 4, axis=0), 4, axis=1)[:height, :width]
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    shade = (0.5 + 0.5 * y).astype(np.float32)

    def gen():
        for t in range(frames):
            frame = (np.roll(texture, 3 * t, axis=1) * shade).astype(np.uint8)
            x0 = (t * width // frames) % max(1, width - width // 8)
            frame[height // 3 : height // 3 + height // 6, x0 : x0 + width // 8] = 240
            yield frame

    return write_video(gen(), path, fps=fps, crf=18, preset="veryfast")


STAGES = ("decode", "decode+resize", "scaled-decode+crop")


def run_once(path: Path, bucket: Bucket, num_frames: int, stride: int, fps: float, stages: str) -> tuple[int, float]:
    """(frames delivered, seconds) for one pass over every window of a clip."""
    info = probe(path)
    index = resample_indices(info.timestamps, info.duration, fps)
    windows = plan_windows(len(index), num_frames, stride, fps)
    start = time.perf_counter()
    size = cover_size(info.height, info.width, bucket) if stages == "scaled-decode+crop" else (info.height, info.width)
    reader = ScaledReader(path, (info.height, info.width), size)
    delivered = 0
    for window in windows:
        frames = reader.read(index[window.start : window.stop])
        if stages != "decode":
            frames = resize_crop(frames, bucket)
            assert tuple(frames.shape[2:]) == (bucket.height, bucket.width)
        delivered += num_frames
    return delivered, time.perf_counter() - start


def bench(
    out_json: Path | None, frames: int = 66, repeats: int = 2, num_frames: int = 33, stride: int = 0, fps: int = 16
) -> dict:
    inputs_dir = Path("runs/bench/inputs")
    cases = []
    for name, (h, w) in INPUTS.items():
        path = make_input(inputs_dir / f"bench_{name}_{frames}f.mp4", h, w, frames, fps)
        for preset in ("480p", "720p"):
            bucket = choose_bucket(h, w, make_buckets(preset, ASPECTS))
            for stages in STAGES:
                if not (stages == "decode" and preset == "720p"):  # full-size decoding ignores the bucket
                    prepare_path = stages != "decode" and (decode_size(h, w, bucket) != (h, w)) == (
                        stages == "scaled-decode+crop"
                    )
                    cases.append((name, (h, w), path, bucket, stages, prepare_path))
    timings: dict[int, list[tuple[int, float]]] = {i: [] for i in range(len(cases))}
    for _ in range(repeats):  # interleaved, so a change in machine load hits every case alike
        for i, (_, _, path, bucket, stages, _) in enumerate(cases):
            timings[i].append(run_once(path, bucket, num_frames, stride, fps, stages))
    results = []
    for i, (name, (h, w), _, bucket, stages, prepare_path) in enumerate(cases):
        rates = [n / s for n, s in timings[i]]
        results.append(
            {
                "input": name,
                "input_size": f"{w}x{h}",
                "bucket": bucket.name if stages != "decode" else "-",
                "stages": stages,
                "used_by_prepare": prepare_path,
                "frames_per_window": num_frames,
                "stride": stride or num_frames,
                "frames_per_pass": timings[i][0][0],
                "fps_median": round(statistics.median(rates), 2),
                "fps_min": round(min(rates), 2),
                "fps_max": round(max(rates), 2),
                "repeats": repeats,
            }
        )
    report = {
        "benchmark": "data ingest throughput (decode + window + resize), frames per second",
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "results": results,
    }
    if out_json is not None:
        write_json_atomic(Path(out_json), report)
    return report


def format_table(report: dict) -> str:
    lines = [
        "| input | stages | bucket | prepare's path | frames/s (median) | min | max |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['input']} ({r['input_size']}) | {r['stages']} | {r['bucket']} | "
            f"{'yes' if r['used_by_prepare'] else ''} | {r['fps_median']} | {r['fps_min']} | {r['fps_max']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="runs/bench/data.json", help="where to write the results")
    parser.add_argument("--frames", type=int, default=66, help="frames per input clip")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    report = bench(Path(args.json), frames=args.frames, repeats=args.repeats)
    print(format_table(report))
    print(
        f"\n{report['cpu_count']} CPUs, torch threads {report['torch_threads']}, load average "
        f"{report['load_average_1min']}; wrote {args.json}"
    )
    print(json.dumps({r["input"] + " " + r["stages"] + " " + r["bucket"]: r["fps_median"] for r in report["results"]}))
    return 0


if __name__ == "__main__":
    run_cli(lambda: main())
