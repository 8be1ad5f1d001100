"""The 4 x 3 table of the 2D study: every dataset under every objective, in parallel processes.

Finished runs (a metrics.json beside an identical config.yaml) are reused, so an interrupted
`sivae toy2d --all` picks up where it stopped.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from sivae.core.fileio import atomic_write_text
from sivae.train.toy2d import plots
from sivae.train.toy2d.datasets import DATASETS, HALF_RANGE
from sivae.train.toy2d.study import Toy2DConfig, run, same_config

OBJECTIVES = ("soft-intro", "intro", "vae")
_progress = None  # shared iteration counter, set in each worker


def run_dir(out: Path, dataset: str, objective: str) -> Path:
    return out / f"{dataset}-{objective}"


def is_done(cfg: Toy2DConfig, out: Path) -> bool:
    return (out / "metrics.json").is_file() and same_config(cfg, out)


def _init_worker(counter, threads: int) -> None:
    global _progress
    _progress = counter
    torch.set_num_threads(threads)


def _tick() -> None:
    with _progress.get_lock():
        _progress.value += 1


def _run_one(args: tuple[Toy2DConfig, Path]) -> dict:
    cfg, out = args
    return run(cfg, out, progress=False, on_iter=_tick)


def run_all(configs: dict[tuple[str, str], Toy2DConfig], out: Path, jobs: int) -> dict[tuple[str, str], dict]:
    """Run every configuration not finished yet, `jobs` at a time; write RESULTS.md and figures."""
    out.mkdir(parents=True, exist_ok=True)
    todo = [(cfg, run_dir(out, d, o)) for (d, o), cfg in configs.items() if not is_done(cfg, run_dir(out, d, o))]
    if todo:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        ctx = mp.get_context("spawn")
        counter = ctx.Value("q", 0)
        total = sum(cfg.iters for cfg, _ in todo)
        print(f"toy2d: {len(todo)} of {len(configs)} runs to do, {jobs} at a time, {threads} thread(s) each")
        interval = 0.5 if sys.stderr.isatty() else 30.0  # a log file gets a line every 30 s
        with ctx.Pool(jobs, initializer=_init_worker, initargs=(counter, threads)) as pool, tqdm(
            total=total, desc="toy2d --all", unit="it", smoothing=0.02, mininterval=interval
        ) as bar:
            pending = pool.map_async(_run_one, todo, chunksize=1)
            while not pending.ready():
                pending.wait(1.0)
                bar.update(counter.value - bar.n)
            bar.update(counter.value - bar.n)
            pending.get()  # re-raise a worker's exception here
    results = {key: json.loads((run_dir(out, *key) / "metrics.json").read_text()) for key in configs}
    write_report(results, out)
    return results


def write_report(results: dict[tuple[str, str], dict], out: Path) -> Path:
    datasets = [d for d in DATASETS if any(k[0] == d for k in results)]
    objectives = [o for o in OBJECTIVES if any(k[1] == o for k in results)]
    samples, densities = {}, {}
    for key in results:
        arrays = np.load(run_dir(out, *key) / "arrays.npz")
        samples[key], densities[key] = arrays["fake"], arrays["density"]
    plots.table_png(samples, datasets, objectives, HALF_RANGE, out / "samples.png", "samples")
    plots.table_png(densities, datasets, objectives, HALF_RANGE, out / "density.png", "density")

    lines = [
        "# 2D toy study",
        "",
        f"Written {time.strftime('%Y-%m-%d %H:%M')} by `sivae toy2d --all`. KL = KL(p_data || p_model) and JSD",
        "of epsilon-smoothed 100x100 histogram masses of 5000 real and 5000 generated points (nats);",
        "kl_ref / jsd_ref with the reference code's conventions (its log base and smoothing); gnELBO is the",
        "grid-normalised negative ELBO (lower is better for all five).",
        "",
        "| dataset | objective | KL | JSD | gnELBO | kl_ref | jsd_ref | iters | it/s | minutes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for d in datasets:
        for o in objectives:
            r = results.get((d, o))
            if r is None:
                continue
            lines.append(
                f"| {d} | {o} | {_num(r['kl'])} | {_num(r['jsd'])} | {_num(r['gnelbo'], '.3e')} | {_num(r['kl_ref'])} "
                f"| {_num(r['jsd_ref'])} | {r['iters']} | {_num(r['iters_per_second'], '.1f')} "
                f"| {_num(r['seconds'] / 60, '.1f')} |"
            )
    lines += ["", "Generated samples (rows: datasets; columns: objectives):", "", "![samples](samples.png)", ""]
    lines += ["exp(ELBO) density on the grid:", "", "![density](density.png)", ""]
    lines += ["Per run (real | generated | density):", ""]
    for d in datasets:
        for o in objectives:
            if (d, o) in results:
                lines.append(f"- {d} / {o}: ![{d}-{o}]({d}-{o}/summary.png)")
    path = out / "RESULTS.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _num(value, fmt: str = ".4f") -> str:
    return format(value, fmt) if isinstance(value, (int, float)) else str(value)
