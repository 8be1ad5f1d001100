"""One training iteration of two code trees side by side: this checkout ("after") and another commit's
checkout ("before"), each with its own defaults (optimizer, update rule), interleaved in fresh processes.

Each measurement is a child process that imports `sivae` from one tree (a temporary folder of links that
maps the namespace onto that tree's top-level packages, ahead of any installed copy) and times
`train.steps.training_step` through `LocalBackend` with the tree's own `make_optimizers`, plus the EMA
update, at one level of the run config (blend 1, a fixed batch), as the trainer runs it.

    git worktree add /tmp/before <commit>
    python benchmarks/hot_path_speed.py --before /tmp/before [--levels 16 32] [--batches 8 4]
        [--precisions fp32 bf16] [--threads 2] [--rounds 2] [--warmup 1] [--iters 2]

It prints a Markdown table: the medians of each tree's seconds per iteration and their ratio.
`--smoke` runs a tiny config with this checkout as both trees (seconds; for CI).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from code_trees import namespace_of

ROOT = Path(__file__).resolve().parents[1]


def child(args: argparse.Namespace) -> None:
    """Time one tree (the one `sivae` imports from) at one level and precision; print one JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    import sivae.train
    from sivae.core.config import load_config
    from sivae.models import build_model, lod_of
    from sivae.train.backend import LocalBackend
    from sivae.train.ema import update_ema
    from sivae.train.schema import RunConfig
    from sivae.train.steps import training_step
    from sivae.train.trainer import make_optimizers

    cfg = load_config(RunConfig, args.config, args.overrides)
    torch.manual_seed(0)
    model = build_model(cfg.model).train()
    ema = build_model(cfg.model).eval().requires_grad_(False)
    backend = LocalBackend(model, make_optimizers(model, cfg), device="cpu", precision=args.precision)
    lod = lod_of(args.resolution)
    backend.set_level(lod, 1.0)
    x = torch.rand(args.batch, *model.data_shape_at(lod)) * 2 - 1
    scale = 1.0 / model.input_dim()

    def iteration() -> None:
        training_step(backend, [x], cfg.objective, scale)
        update_ema(ema, model, 0.999)

    for _ in range(args.warmup):
        iteration()
    start = time.perf_counter()
    for _ in range(args.iters):
        iteration()
    seconds = (time.perf_counter() - start) / args.iters
    tree = str(Path(sivae.train.__file__).resolve().parents[1])
    print(json.dumps({"seconds": seconds, "tree": tree, "fused_adam": cfg.train.optimizer.fused}))


def measure(tree: Path, resolution: int, batch: int, precision: str, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as shim:
        env = {**os.environ, "PYTHONPATH": str(namespace_of(tree, Path(shim))), "OMP_NUM_THREADS": str(args.threads)}
        command = [sys.executable, str(Path(__file__).resolve()), "--child", "--resolution", str(resolution),
                   "--batch", str(batch), "--precision", precision, "--threads", str(args.threads),
                   "--warmup", str(args.warmup), "--iters", str(args.iters), "--config", str(args.config),
                   *[f"--set={o}" for o in args.overrides]]  # fmt: skip
        proc = subprocess.run(command, env=env, cwd=tempfile.gettempdir(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"the measurement of {tree} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if Path(result["tree"]) != tree.resolve():
        raise SystemExit(f"the child imported sivae from {result['tree']}, not {tree}")
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", type=Path, help="the other commit's checkout")
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "ffhq256.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="a config override KEY=VALUE")
    p.add_argument("--levels", type=int, nargs="+", default=[16, 32])
    p.add_argument("--batches", type=int, nargs="+", default=[8, 4])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--smoke", action="store_true", help="a tiny config, this checkout as both trees")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--resolution", type=int, help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    p.add_argument("--precision", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    if args.smoke:
        args.before, args.config, args.levels, args.batches = ROOT, ROOT / "tests" / "tiny_run.yaml", [8], [4]
        args.rounds, args.warmup, args.iters, args.threads, args.precisions = 1, 1, 1, 1, ["fp32"]
    if args.before is None:
        p.error("--before is required (or --smoke)")
    if len(args.batches) != len(args.levels):
        p.error("give one batch per level")
    trees = {"before": args.before.resolve(), "after": ROOT}
    seconds: dict[tuple, list[float]] = {}
    fused = {}
    for round_index in range(args.rounds):
        order = list(trees) if round_index % 2 == 0 else list(reversed(trees))  # alternate who runs first
        for resolution, batch in zip(args.levels, args.batches):
            for precision in args.precisions:
                for name in order:
                    result = measure(trees[name], resolution, batch, precision, args)
                    seconds.setdefault((name, resolution, precision), []).append(result["seconds"])
                    fused[name] = result["fused_adam"]
                    print(f"round {round_index + 1}/{args.rounds}: {name} {resolution}px {precision} "
                          f"{result['seconds']:.3f} s/it", file=sys.stderr, flush=True)  # fmt: skip
    print(f"# {args.config.name}, {args.threads} thread(s), medians of {args.rounds} round(s) x {args.iters} "
          f"iterations; before: {trees['before']} (fused Adam {fused['before']}), "
          f"after: {ROOT} (fused Adam {fused['after']})")
    print("| level | batch | precision | before s/it | after s/it | before / after |")
    print("|---|---|---|---|---|---|")
    for resolution, batch in zip(args.levels, args.batches):
        for precision in args.precisions:
            b, a = (statistics.median(seconds[(n, resolution, precision)]) for n in ("before", "after"))
            print(f"| {resolution}px | {batch} | {precision} | {b:.3f} | {a:.3f} | {b / a:.3f} |")


if __name__ == "__main__":
    main()
