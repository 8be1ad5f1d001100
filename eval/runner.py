"""Evaluate one saved model: load it, run the asked metrics, write metrics.json and the plots.

    from sivae.eval.runner import evaluate, EvalOptions
    results = evaluate("runs/emoji/snapshots/snapshot-000000010000.pt", ["fid", "kid", "recon", "ood"],
                       out_dir=Path("eval-out"), options=EvalOptions(num_samples=2000, ood_data=[Path("data/digits")]))

Under a launcher that starts several processes (torchrun, accelerate launch), every process calls
`evaluate` with the same arguments; the work is split across them and rank 0 writes the outputs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from sivae.core.distributed import DistEnv
from sivae.core.fileio import atomic_write_text
from sivae.eval.context import EvalContext, EvalOptions
from sivae.eval.features import STANDIN_WARNING
from sivae.eval.loading import LoadedModel, load_model
from sivae.eval.metrics import ALL, METRICS, metrics_for

__all__ = ["EvalOptions", "evaluate", "parse_metrics", "scalar_metrics"]


def parse_metrics(spec: str | list[str]) -> list[str]:
    names = [n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec) if n.strip()]
    unknown = [n for n in names if n not in METRICS and n != ALL]
    if unknown or not names:
        raise ValueError(f"unknown metric(s) {unknown or spec!r}; known: {', '.join(METRICS)} (or {ALL})")
    return list(dict.fromkeys(names))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return _jsonable(value.item())
    if isinstance(value, Path):
        return str(value)
    return value


def scalar_metrics(results: dict[str, Any]) -> dict[str, float]:
    """The plain-number results (what goes to TensorBoard and the report), bookkeeping excluded."""
    skip = {"images", "kimg", "lod", "resolution", "blend", "seconds", "world_size", "fid_num_samples",
            "kid_subset_size", "recon_num_images", "iw_samples", "points_reference_count", "points_jsd_samples",
            "points_jsd_trials", "recon_num_shapes"}
    return {k: float(v) for k, v in results.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in skip}


def evaluate(target: str | Path | LoadedModel, metrics: list[str], out_dir: Path | None,
             options: EvalOptions | None = None, env: DistEnv | None = None) -> dict[str, Any]:
    """Run `metrics` on the model at `target` (a path in any registered format, or a loaded model).

    Returns the results on every rank (complete on rank 0); rank 0 writes out_dir/metrics.json and the
    PNGs. Raises LoadError for an unusable model, DataError for an unusable data set.
    """
    options = options or EvalOptions()
    env = env or DistEnv()
    start = time.perf_counter()
    loaded = target if isinstance(target, LoadedModel) else load_model(target, env.device)
    kind = loaded.config.data.kind
    names, inapplicable = metrics_for(parse_metrics(metrics), kind)
    ctx = EvalContext(loaded, options, env, Path(out_dir) if out_dir is not None else None)
    if not names:
        raise ValueError(f"none of the metrics {', '.join(inapplicable)} applies to {kind} data ({loaded.path}); "
                         f"ask for {ALL} or one of {', '.join(metrics_for([ALL], kind)[0])}")
    if inapplicable:
        ctx.warn(f"{', '.join(inapplicable)}: not for {kind} data ({loaded.path.name}), skipped")
    results: dict[str, Any] = {
        "model": str(loaded.path), "format": loaded.format, "images": loaded.images, "kimg": loaded.kimg,
        "lod": loaded.lod, "blend": loaded.blend, "resolution": loaded.resolution, "data": str(ctx.data_dir),
        "metrics": names,
    }  # fmt: skip
    for name in names:
        results.update(METRICS[name](ctx))
    if any(n in names for n in ("fid", "kid", "recon")):
        results["extractor"] = ctx.extractor.id
        results["extractor_sha256"] = ctx.extractor.sha256  # of the weights file (None: the stand-in)
        results["extractor_is_standin"] = bool(ctx.extractor.is_standin)
    if any(n in names for n in ("fid", "kid")):
        results["protocol"] = dataclasses.asdict(ctx.protocol)
    results |= {
        "warnings": ctx.warnings,
        "files": dict(ctx.files),
        "options": {k: _jsonable(v) for k, v in vars(options).items() if k != "progress"},
        "seconds": time.perf_counter() - start,
        "world_size": env.world_size,
        "device": str(env.device),
        "host": platform.node(),
        "torch": torch.__version__,
    }  # fmt: skip
    if out_dir is not None and env.is_main:
        atomic_write_text(Path(out_dir) / "metrics.json", json.dumps(_jsonable(results), indent=1) + "\n")
    if env.is_main and results.get("extractor_is_standin"):
        print(f"[sivae eval] WARNING: {STANDIN_WARNING}", file=sys.stderr)
    return results
