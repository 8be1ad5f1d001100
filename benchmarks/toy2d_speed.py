"""Speed of the 2D study's training iteration against the machine's arithmetic limit.

Prints, for the reference preset (batch 512, MLPs of 3 x 256 hidden units):
- iterations/s of the Soft-IntroVAE, IntroVAE and VAE steps at 1 and 2 threads,
- FLOPs per iteration (counted by torch's FlopCounterMode) and the achieved GFLOP/s,
- the machine's fp32 GEMM rate on the same matrix shapes (the practical ceiling),
- where the time goes (matrix products vs everything else, from the profiler),
- the projected time of a full 30k-iteration run (2k VAE warm-up + 28k adversarial),
- process-wide settings side by side (glibc's default allocator vs kept freed memory, Adam's
  for-loop vs fused), interleaved in fresh processes, as ratios.

    python benchmarks/toy2d_speed.py [--iters 60] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from sivae.core.host_memory import keep_freed_memory
from sivae.train.schema import ObjectiveConfig
from sivae.train.steps import training_step
from sivae.train.toy2d.datasets import SAMPLERS
from sivae.train.toy2d.study import Toy2DConfig, step_backend

PRESET = ObjectiveConfig(name="soft-intro", beta_kl=0.3, beta_rec=0.2, beta_neg=0.9, gamma_r=1e-8)


def setup(objective: str, fused_adam: bool = True):
    cfg = Toy2DConfig(objective=ObjectiveConfig(**{**PRESET.__dict__, "name": objective}))
    torch.manual_seed(0)
    backend = step_backend(cfg, fused_adam)
    x = SAMPLERS["8gaussians"](cfg.batch_size, torch.Generator().manual_seed(0))
    return cfg, backend, x


def its_per_second(objective: str, warmup: bool, iters: int, fused_adam: bool = True) -> float:
    cfg, backend, x = setup(objective, fused_adam)
    for _ in range(5):
        training_step(backend, x, cfg.objective, 0.5, warmup)
    start = time.perf_counter()
    for _ in range(iters):
        training_step(backend, x, cfg.objective, 0.5, warmup)
    return iters / (time.perf_counter() - start)


def flops_per_iteration(objective: str, warmup: bool) -> int:
    cfg, backend, x = setup(objective)
    with FlopCounterMode(display=False) as counter:
        training_step(backend, x, cfg.objective, 0.5, warmup)
    return counter.get_total_flops()


def gemm_rate(iters: int = 300) -> float:
    """GFLOP/s of the iteration's dominant product, [512, 256] @ [256, 256]."""
    a, w = torch.randn(512, 256), torch.randn(256, 256)
    for _ in range(20):
        a @ w
    start = time.perf_counter()
    for _ in range(iters):
        a @ w
    return 2 * 512 * 256 * 256 * iters / (time.perf_counter() - start) / 1e9


def time_split(objective: str, iters: int = 20) -> dict[str, float]:
    """Share of profiled CPU time per op family (matrix products, elementwise, optimizer)."""
    cfg, backend, x = setup(objective)
    for _ in range(3):
        training_step(backend, x, cfg.objective, 0.5, False)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(iters):
            training_step(backend, x, cfg.objective, 0.5, False)
    total, families = 0.0, {"matmul (mm/addmm)": 0.0, "elementwise + reductions": 0.0, "optimizer": 0.0}
    for event in prof.key_averages():
        t = event.self_cpu_time_total
        if event.key.startswith("aten::"):
            total += t
            key = "matmul (mm/addmm)" if event.key in ("aten::mm", "aten::addmm") else "elementwise + reductions"
            families[key] += t
        elif event.key.startswith("Optimizer."):
            families["optimizer"] += t
    return {k: v / total for k, v in families.items() if total}


# Process-wide settings compared side by side, each in fresh processes (the allocator cannot be reset).
VARIANTS = {
    "glibc default allocator, Adam for-loop": [],
    "kept freed memory, Adam for-loop": ["--keep-freed-memory"],
    "kept freed memory, fused Adam": ["--keep-freed-memory", "--fused-adam"],
}


def compare_variants(rounds: int, iters: int, threads: int) -> None:
    """Soft-IntroVAE it/s per variant, interleaved over `rounds` rounds (the VM's speed drifts by minutes)."""
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(rounds):
        for name, flags in VARIANTS.items():
            out = subprocess.run(
                [sys.executable, __file__, "--child", *flags, "--iters", str(iters), "--threads", str(threads)],
                capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)},
            )  # fmt: skip
            rates[name].append(float(out.stdout.split()[-1]))
    base = statistics.median(rates[next(iter(VARIANTS))])
    print(f"\n| {threads} threads, {rounds} interleaved rounds | median it/s | ratio | rounds |")
    print("|---|---|---|---|")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.1f} | {median / base:.3f} | {' '.join(f'{v:.1f}' for v in values)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the allocator/Adam comparison (0: skip)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--keep-freed-memory", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--fused-adam", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # one measurement for compare_variants
        if args.keep_freed_memory:
            keep_freed_memory()
        torch.set_num_threads(args.threads[0])
        print(its_per_second("soft-intro", False, args.iters, args.fused_adam))
        return
    if args.rounds:
        compare_variants(args.rounds, 3 * args.iters, max(args.threads))
    keep_freed_memory()  # below: the settings `sivae toy2d` runs with (kept freed memory, fused Adam)
    print(f"machine: {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}; torch {torch.__version__}")
    flops = {o: flops_per_iteration(o, False) for o in ("soft-intro", "intro", "vae")}
    print("\nFLOPs per iteration (batch 512): " + ", ".join(f"{o} {f / 1e9:.2f} GFLOP" for o, f in flops.items()))

    print("\n| threads | GEMM ceiling GFLOP/s | objective | it/s | achieved GFLOP/s | % of ceiling | 30k-run minutes |")
    print("|---|---|---|---|---|---|---|")
    for threads in args.threads:
        torch.set_num_threads(threads)
        ceiling = gemm_rate()
        rates = {o: its_per_second(o, False, args.iters) for o in flops}
        warmup_rate = its_per_second("soft-intro", True, args.iters)
        for objective, rate in rates.items():
            achieved = flops[objective] * rate / 1e9
            # the adversarial objectives run 2k VAE warm-up iterations first (the reference preset)
            warm = 0 if objective == "vae" else 2000
            minutes = (warm / warmup_rate + (30_000 - warm) / rate) / 60
            print(
                f"| {threads} | {ceiling:.0f} | {objective} | {rate:.1f} | {achieved:.0f} "
                f"| {100 * achieved / ceiling:.0f}% | {minutes:.1f} |"
            )
    torch.set_num_threads(max(args.threads))
    print("\nwhere the time goes (soft-intro, profiled CPU time by op family):")
    for family, share in time_split("soft-intro").items():
        print(f"  {family:28s} {100 * share:5.1f}%")


if __name__ == "__main__":
    main()
