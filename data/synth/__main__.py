"""CLI of data.synth: `grid` (SI/TI benchmark clips) or `style` (cinematic look, or its neutral twin)."""

from __future__ import annotations

import argparse

from core.config import ConfigError, run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data.synth", description=__doc__)
    sub = parser.add_subparsers(dest="kind", required=True)
    grid = sub.add_parser("grid", help="9 clips in 3 SI x 3 TI bands (ITU-T P.910) + grid.json")
    grid.add_argument("--output_dir", required=True)
    grid.add_argument("--height", type=int, default=2160)
    grid.add_argument("--width", type=int, default=3840)
    grid.add_argument("--frames", type=int, default=33)
    grid.add_argument("--fps", type=int, default=16)
    grid.add_argument("--seed", type=int, default=0)
    style = sub.add_parser("style", help="clips with a cinematic look and trigger-word captions (or --neutral)")
    style.add_argument("--output_dir", required=True)
    style.add_argument("--n_clips", type=int, default=8)
    style.add_argument("--height", type=int, default=176)
    style.add_argument("--width", type=int, default=320)
    style.add_argument("--frames", type=int, default=33)
    style.add_argument("--fps", type=int, default=16)
    style.add_argument("--seed", type=int, default=0)
    style.add_argument("--trigger", default="elturco style")
    style.add_argument("--neutral", action="store_true", help="same scenes without the look or the trigger")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.frames < 1 or args.fps < 1:
        raise ConfigError(f"--frames={args.frames} and --fps={args.fps} must be positive")
    try:
        if args.kind == "grid":
            from data.synth.grid import load_grid, make_redundancy_grid

            path = make_redundancy_grid(args.output_dir, args.height, args.width, args.frames, args.fps, args.seed)
            for clip in load_grid(path):
                print(f"{clip['level']:<22} SI {clip['si']:7.2f}  TI {clip['ti']:6.2f}  {clip['path']}")
            print(f"wrote {path}")
        else:
            from data.synth.style import make_neutral_set, make_style_set

            if args.neutral:
                out = make_neutral_set(
                    args.output_dir, args.n_clips, args.height, args.width, args.frames, args.fps, args.seed
                )
            else:
                out = make_style_set(
                    args.output_dir,
                    args.n_clips,
                    args.height,
                    args.width,
                    args.frames,
                    args.fps,
                    args.seed,
                    args.trigger,
                )
            print(f"wrote {args.n_clips} clips with captions and metadata.jsonl to {out}")
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    return 0


if __name__ == "__main__":
    run_cli(lambda: main())
