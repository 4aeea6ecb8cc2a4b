"""The documented schema of the A/B runner's report.json, and a validator for it.

The schema is standard JSON Schema (the subset below: type, properties, required, items,
enum, minimum, additionalProperties), so any JSON-Schema tool can check a report too;
`validate` implements exactly that subset so the runner and its test need no extra package.
docs/infer.md describes every field.
"""

from __future__ import annotations

import math
from typing import Any

SCHEMA_VERSION = 1

_NUM = {"type": "number"}
_NUM_OR_NULL = {"type": ["number", "null"]}
_POS = {"type": "number", "minimum": 0}
_ARMS = {  # one value per arm of the A/B
    "type": "object",
    "required": ["uniform", "cat"],
    "properties": {"uniform": _NUM_OR_NULL, "cat": _NUM_OR_NULL},
    "additionalProperties": False,
}
_ARM_RUN = {
    "type": "object",
    "required": ["s_per_step", "s_per_video", "frames_per_s", "tokens_per_step", "peak_memory_mb", "lpips_vs_reference",
                 "psnr_vs_reference", "video"],
    "properties": {
        "s_per_step": _POS,  # mean wall seconds of one denoising step (all transformer calls + scheduler)
        "s_per_video": _POS,  # conditioning encode + all steps + VAE decode
        "frames_per_s": _POS,  # output frames / s_per_video
        "tokens_per_step": {"type": "array", "items": {"type": "integer", "minimum": 1}},
        "step_seconds": {"type": "array", "items": _POS},  # wall time of each step, in order
        "peak_memory_mb": _NUM_OR_NULL,
        "lpips_vs_reference": _NUM_OR_NULL,
        "psnr_vs_reference": _NUM_OR_NULL,
        "video": {"type": ["string", "null"]},
    },
}

_SCORES = {  # one clip scored by each calibrated metric (null: could not run, e.g. frames too small for VMAF)
    "type": "object",
    "required": ["vmaf", "st_lpips", "psnr", "ssim"],
    "properties": {"vmaf": _NUM_OR_NULL, "st_lpips": _NUM_OR_NULL, "psnr": _NUM_OR_NULL, "ssim": _NUM_OR_NULL},
    "additionalProperties": False,
}
_RUN_QUALITY = {  # infer.metrics.VideoMetrics.compare_arms
    "type": "object",
    "required": ["vs_reference", "cat_vs_uniform"],
    "properties": {
        "vs_reference": {"type": "object", "required": ["uniform", "cat"],
                         "properties": {"uniform": _SCORES, "cat": _SCORES}},
        "cat_vs_uniform": _SCORES,
    },
}
_LEVEL_METRIC = {  # per level and calibrated metric
    "type": "object",
    "required": ["calibrated", "cat_vs_uniform", "cat_vs_uniform_ci95", "vs_reference"],
    "properties": {"calibrated": {"type": "boolean"}, "cat_vs_uniform": _NUM_OR_NULL,
                   "cat_vs_uniform_ci95": _NUM_OR_NULL, "vs_reference": _ARMS},
}
METRICS_SCHEMA: dict[str, Any] = {  # infer.metrics.metric_specs: every metric with its calibrated flag
    "type": "object",
    "required": ["vmaf", "st_lpips", "psnr", "ssim"],
    "properties": {},
}
for _key in ("vmaf", "st_lpips", "psnr", "ssim", "lpips"):
    METRICS_SCHEMA["properties"][_key] = {
        "type": "object",
        "required": ["key", "label", "higher_is_better", "calibrated", "note"],
        "properties": {"key": {"type": "string"}, "label": {"type": "string"},
                       "higher_is_better": {"type": "boolean"}, "calibrated": {"type": "boolean"},
                       "note": {"type": "string"}},
    }

LEVEL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": [
        "level", "runs", "tokens_uniform", "tokens_cat", "s_per_step_uniform", "s_per_step_cat", "s_per_video_uniform",
        "s_per_video_cat", "frames_per_s_uniform", "frames_per_s_cat", "speedup", "speedup_ci95",
        "lpips_cat_vs_uniform", "lpips_cat_vs_uniform_ci95", "lpips_vs_reference", "psnr_vs_reference",
        "peak_memory_mb", "lpips_calibrated",
    ],
    "properties": {
        "level": {"type": "string"},  # e.g. "SI-low/TI-low"
        "runs": {"type": "integer", "minimum": 1},  # clips x seeds averaged
        "tokens_uniform": _POS,  # transformer tokens per step, uniform tokenization
        "tokens_cat": _POS,  # mean over the CAT run's steps (warm-up included)
        "s_per_step_uniform": _POS,
        "s_per_step_cat": _POS,
        "s_per_video_uniform": _POS,
        "s_per_video_cat": _POS,
        "frames_per_s_uniform": _POS,
        "frames_per_s_cat": _POS,
        "speedup": _POS,  # mean over runs of s_per_step_uniform / s_per_step_cat (denoising only)
        "speedup_ci95": _NUM_OR_NULL,  # half-width of the 95% Student-t interval over runs
        "speedup_median": _POS,  # median over runs (robust to a run hit by load on a shared machine)
        "speedup_step_median": _POS,  # median over all paired steps (lockstep) of uniform / CAT step time
        "speedup_end_to_end": _POS,  # mean of s_per_video_uniform / s_per_video_cat
        "lpips_cat_vs_uniform": _NUM_OR_NULL,
        "lpips_cat_vs_uniform_ci95": _NUM_OR_NULL,
        "lpips_vs_reference": _ARMS,
        "psnr_vs_reference": _ARMS,
        "peak_memory_mb": _ARMS,
        "ideal_speedup": _NUM_OR_NULL,  # cost-model ideal for the measured token counts (cat.cost)
        "lpips_calibrated": {"type": "boolean"},
        # perfect model (oracle): mean |x - x0| of each arm's tokenization, x0 = the reference's latent
        "oracle_latent_error": _ARMS,
        "quality": {  # calibrated metrics (VMAF, ST-LPIPS, PSNR, SSIM), each with its calibrated flag
            "type": "object",
            "properties": {k: _LEVEL_METRIC for k in ("vmaf", "st_lpips", "psnr", "ssim")},
        },
    },
}

REPORT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "cinelora A/B report (CAT vs uniform tokenization)",
    "type": "object",
    "required": ["schema_version", "created", "model_id", "device", "dtype", "lpips_calibrated", "lpips_note",
                 "metrics", "settings", "levels", "clips", "rejected"],
    "properties": {
        "schema_version": {"type": "integer", "enum": [SCHEMA_VERSION]},
        "created": {"type": "string"},
        "model_id": {"type": "string"},
        "device": {"type": "string"},  # e.g. "cpu (2 threads)" or the GPU's name
        "dtype": {"type": "string", "enum": ["fp32", "bf16", "fp16"]},
        "lpips_calibrated": {"type": "boolean"},  # false: random AlexNet backbone, scores "uncalibrated"
        "lpips_note": {"type": "string"},
        "metrics": METRICS_SCHEMA,
        "memory_kind": {"type": "string"},  # what peak_memory_mb measures (CUDA peak allocated / process RSS)
        "settings": {"type": "object"},  # the resolved ABConfig
        "levels": {"type": "array", "items": LEVEL_SCHEMA},
        "clips": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["path", "level", "runs"],
                "properties": {
                    "path": {"type": "string"},
                    "level": {"type": "string"},
                    "si": _NUM_OR_NULL,
                    "ti": _NUM_OR_NULL,
                    "overlay": {"type": ["string", "null"]},
                    "runs": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["seed", "uniform", "cat", "speedup", "lpips_cat_vs_uniform"],
                            "properties": {
                                "seed": {"type": "integer"},
                                "uniform": _ARM_RUN,
                                "cat": _ARM_RUN,
                                "speedup": _POS,
                                "lpips_cat_vs_uniform": _NUM_OR_NULL,
                                "quality": _RUN_QUALITY,
                                "side_by_side": {"type": ["string", "null"]},
                                "oracle_latent_error": _ARMS,  # first seed only (infer.oracle)
                            },
                        },
                    },
                },
            },
        },
        "rejected": {  # benchmark items left out, each with its reason (never silently)
            "type": "array",
            "items": {
                "type": "object",
                "required": ["path", "reason"],
                "properties": {"path": {"type": "string"}, "reason": {"type": "string"}},
            },
        },
        "rho_sweep": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["rho", "tokens_cat", "speedup", "lpips_cat_vs_uniform"],
                "properties": {"rho": _POS, "tokens_cat": _POS, "speedup": _POS, "lpips_cat_vs_uniform": _NUM_OR_NULL,
                               "vmaf_cat_vs_uniform": _NUM_OR_NULL},
            },
        },
        "artifacts": {"type": "object"},  # paths of report.md, plots, videos (relative to the report)
    },
}

_TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
}


def _is_type(value: Any, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, _TYPES[name])


def validate(instance: Any, schema: dict[str, Any] = REPORT_SCHEMA, path: str = "$") -> list[str]:
    """Every violation of `schema` in `instance`, as 'json.path: message' lines (empty when valid)."""
    errors: list[str] = []
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else list(types)
        if not any(_is_type(instance, n) for n in names):
            return [f"{path}: expected {' or '.join(names)}, got {type(instance).__name__} {instance!r:.60}"]
    if "enum" in schema and instance not in schema["enum"]:
        errors.append(f"{path}: {instance!r} is not one of {schema['enum']}")
    if "minimum" in schema and _is_type(instance, "number") and instance < schema["minimum"]:
        errors.append(f"{path}: {instance} is below the minimum {schema['minimum']}")
    if isinstance(instance, dict):
        for key in schema.get("required", []):
            if key not in instance:
                errors.append(f"{path}: missing required key '{key}'")
        props = schema.get("properties", {})
        for key, value in instance.items():
            if key in props:
                errors.extend(validate(value, props[key], f"{path}.{key}"))
            elif schema.get("additionalProperties") is False:
                errors.append(f"{path}: unexpected key '{key}'")
    if isinstance(instance, list) and "items" in schema:
        for i, item in enumerate(instance):
            errors.extend(validate(item, schema["items"], f"{path}[{i}]"))
    return errors
