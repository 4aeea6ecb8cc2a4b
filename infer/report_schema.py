"""The documented schema of the A/B runner's report.json, and a validator for it.

The schema is standard JSON Schema (the subset below: type, properties, required, items,
enum, minimum, additionalProperties), so any JSON-Schema tool can check a report too;
`validate` implements exactly that subset so the runner and its test need no extra package.
docs/infer.md describes every field.
"""

from __future__ import annotations

import math
from typing import Any

# 2: the report names its arms (`arms`, the baseline first); per-arm keys carry the arm's name and
#    comparisons both names (`speedup_cat_vs_uniform*`, `ideal_speedup_cat_vs_uniform`, sweep rows'
#    `arm`), generated from the arm list. Every key of version 1 is still there with its meaning
#    (`speedup*` and `ideal_speedup`: the first candidate arm's).
SCHEMA_VERSION = 2

_NUM = {"type": "number"}
_NUM_OR_NULL = {"type": ["number", "null"]}
_POS = {"type": "number", "minimum": 0}
_SPEEDUP_SUFFIXES = ("", "_ci95", "_median", "_step_median", "_end_to_end")


def _per_arm(names: list[str], value: dict[str, Any]) -> dict[str, Any]:
    """An object with one value per arm."""
    return {"type": "object", "required": list(names), "properties": {n: value for n in names},
            "additionalProperties": False}


_ARM_RUN = {  # infer.arms.ArmRun
    "type": "object",
    "required": ["s_per_step", "s_per_video", "frames_per_s", "tokens_per_step", "peak_memory_mb", "lpips_vs_reference",
                 "psnr_vs_reference", "video"],
    "properties": {
        "s_per_step": _POS,  # mean wall seconds of one denoising step (all transformer calls + scheduler)
        "s_per_video": _POS,  # conditioning encode + all steps + VAE decode
        "frames_per_s": _POS,  # output frames / s_per_video
        "tokens_per_step": {"type": "array", "items": {"type": "integer", "minimum": 1}},
        "detail_tokens_per_step": {"type": "array", "items": {"type": "integer", "minimum": 0}},  # reference detail
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


def level_schema(names: list[str]) -> dict[str, Any]:
    """One redundancy level for the arms `names` (the baseline first)."""
    b, candidates = names[0], names[1:]
    pairs = [f"{c}_vs_{b}" for c in candidates]
    props: dict[str, Any] = {
        "level": {"type": "string"},  # e.g. "SI-low/TI-low"
        "runs": {"type": "integer", "minimum": 1},  # clips x seeds averaged
        "lpips_calibrated": {"type": "boolean"},
        "lpips_vs_reference": _per_arm(names, _NUM_OR_NULL),
        "psnr_vs_reference": _per_arm(names, _NUM_OR_NULL),
        "peak_memory_mb": _per_arm(names, _NUM_OR_NULL),
        # perfect model (oracle): mean |x - x0| of each arm's tokenization, x0 = the reference's latent
        "oracle_latent_error": _per_arm(names, _NUM_OR_NULL),
        "ideal_speedup": _NUM_OR_NULL,  # schema 1's name: the first candidate's
    }
    for field in ("tokens", "s_per_step", "s_per_video", "frames_per_s"):  # means over runs, per arm
        props.update({f"{field}_{n}": _POS for n in names})
    # mean coarse tokens per step restoring the conditioning image's sub-token detail (optional: older reports)
    detail = {f"detail_tokens_{n}": _POS for n in names}
    for suffix in _SPEEDUP_SUFFIXES:  # baseline s/step over the arm's: mean, 95% CI half-width, median,
        # median over all paired (lockstep) steps, end to end (s/video); unsuffixed: schema 1's, first candidate
        value = _NUM_OR_NULL if suffix == "_ci95" else _POS
        props[f"speedup{suffix}"] = value
        props.update({f"speedup_{p}{suffix}": value for p in pairs})
    for p in pairs:
        props[f"lpips_{p}"] = _NUM_OR_NULL
        props[f"lpips_{p}_ci95"] = _NUM_OR_NULL
        props[f"ideal_speedup_{p}"] = _NUM_OR_NULL  # cost-model ideal for the measured token counts (cat.cost)
    metric = {"type": "object", "required": ["calibrated", "vs_reference", *pairs, *[f"{p}_ci95" for p in pairs]],
              "properties": {"calibrated": {"type": "boolean"}, "vs_reference": _per_arm(names, _NUM_OR_NULL),
                             **{p: _NUM_OR_NULL for p in pairs}, **{f"{p}_ci95": _NUM_OR_NULL for p in pairs}}}
    props["quality"] = {"type": "object", "properties": {k: metric for k in ("vmaf", "st_lpips", "psnr", "ssim")}}
    required = [k for k in props if k not in ("quality", "ideal_speedup", "oracle_latent_error")
                and not k.startswith("ideal_speedup_") and not (k.startswith("speedup") and k.endswith(
                    ("_median", "_end_to_end")))]
    return {"type": "object", "required": required, "properties": {**props, **detail}}


def report_schema(names: list[str]) -> dict[str, Any]:
    """report.json of an A/B whose arms are `names`, the baseline first."""
    b, pairs = names[0], [f"{c}_vs_{names[0]}" for c in names[1:]]
    run = {
        "type": "object",
        "required": ["seed", *names, "speedup", *[f"speedup_{p}" for p in pairs], *[f"lpips_{p}" for p in pairs]],
        "properties": {
            "seed": {"type": "integer"},
            **{n: _ARM_RUN for n in names},
            "speedup": _POS,  # schema 1's name: the first candidate's
            **{f"speedup_{p}": _POS for p in pairs},
            **{f"lpips_{p}": _NUM_OR_NULL for p in pairs},
            "quality": {"type": "object", "required": ["vs_reference", *pairs],  # VideoMetrics.compare_arms
                        "properties": {"vs_reference": {"type": "object", "required": list(names),
                                                        "properties": {n: _SCORES for n in names}},
                                       **{p: _SCORES for p in pairs}}},
            "side_by_side": {"type": ["string", "null"]},
            "oracle_latent_error": _per_arm(names, _NUM_OR_NULL),  # first seed only (infer.oracle)
        },
    }
    sweep_props: dict[str, Any] = {"arm": {"type": "string", "enum": list(names[1:])}, "rho": _POS, "speedup": _POS}
    for c in names[1:]:
        sweep_props.update({f"tokens_{c}": _POS, f"lpips_{c}_vs_{b}": _NUM_OR_NULL, f"vmaf_{c}_vs_{b}": _NUM_OR_NULL})
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"cinelora A/B report (arms: {', '.join(names)})",
        "type": "object",
        "required": ["schema_version", "arms", "created", "model_id", "device", "dtype", "lpips_calibrated",
                     "lpips_note", "metrics", "settings", "levels", "clips", "rejected"],
        "properties": {
            "schema_version": {"type": "integer", "enum": [SCHEMA_VERSION]},
            "arms": {"type": "array", "items": {"type": "object", "required": ["name", "label"],
                                                "properties": {"name": {"type": "string", "enum": list(names)},
                                                               "label": {"type": "string"}}}},
            "created": {"type": "string"},
            "model_id": {"type": "string"},
            "device": {"type": "string"},  # e.g. "cpu (2 threads)" or the GPU's name
            "dtype": {"type": "string", "enum": ["fp32", "bf16", "fp16"]},
            "lpips_calibrated": {"type": "boolean"},  # false: random AlexNet backbone, scores "uncalibrated"
            "lpips_note": {"type": "string"},
            "metrics": METRICS_SCHEMA,
            "memory_kind": {"type": "string"},  # what peak_memory_mb measures (CUDA peak allocated / process RSS)
            "settings": {"type": "object"},  # the resolved ABConfig
            "levels": {"type": "array", "items": level_schema(names)},
            "clips": {"type": "array", "items": {
                "type": "object",
                "required": ["path", "level", "runs"],
                "properties": {"path": {"type": "string"}, "level": {"type": "string"}, "si": _NUM_OR_NULL,
                               "ti": _NUM_OR_NULL, "overlay": {"type": ["string", "null"]},
                               "runs": {"type": "array", "items": run}},
            }},
            "rejected": {  # benchmark items left out, each with its reason (never silently)
                "type": "array",
                "items": {"type": "object", "required": ["path", "reason"],
                          "properties": {"path": {"type": "string"}, "reason": {"type": "string"}}},
            },
            "rho_sweep": {"type": "array", "items": {"type": "object", "required": ["arm", "rho", "speedup"],
                                                     "properties": sweep_props}},
            "artifacts": {"type": "object"},  # paths of report.md, plots, videos (relative to the report)
        },
    }


DEFAULT_ARMS = ["uniform", "cat"]  # infer.arms.ab_arms
REPORT_SCHEMA: dict[str, Any] = report_schema(DEFAULT_ARMS)
LEVEL_SCHEMA: dict[str, Any] = level_schema(DEFAULT_ARMS)


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


def validate(instance: Any, schema: dict[str, Any] | None = None, path: str = "$") -> list[str]:
    """Every violation of `schema` in `instance`, as 'json.path: message' lines (empty when valid).
    Without `schema`: the report schema for the arms the report names."""
    if schema is None:
        arms = instance.get("arms") if isinstance(instance, dict) else None
        names = [a.get("name") for a in arms if isinstance(a, dict)] if isinstance(arms, list) else []
        schema = report_schema(names) if len(names) >= 2 and all(isinstance(n, str) for n in names) else REPORT_SCHEMA
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
