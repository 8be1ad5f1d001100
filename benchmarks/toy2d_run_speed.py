"""End-to-end speed of `sivae toy2d` for two installs side by side (e.g. before and after a change).

Each install's Python runs `-m sivae toy2d` on the 8Gaussians Soft-IntroVAE preset without the VAE
warm-up, once with --short and once with --long iterations; the iterations per second are
(long - short) / (wall time long - wall time short), so start-up, evaluation and plotting cancel and
what is left is the training loop as the study runs it (checkpoints and sample plots included).
Installs alternate run by run over --rounds rounds (the machine's speed drifts); medians and the
ratio to the first install are printed as a Markdown table.

    python benchmarks/toy2d_run_speed.py --python before=/path/venv-a/bin/python --python after=python
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time


def wall_time(python: str, iters: int, threads: int, out: str) -> float:
    command = [python, "-m", "sivae", "toy2d", "--dataset", "8gaussians", "--objective", "soft-intro",
               "--out", out, "--iters", str(iters), "--no-progress", "vae_warmup_iters=0", "eval_samples=1000",
               "gnelbo_grid=64", "gnelbo_data_points=1000"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True, cwd=tempfile.gettempdir())
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", action="append", required=True, metavar="NAME=PYTHON",
                        help="an install to measure (its Python executable), named; give two or more")
    parser.add_argument("--short", type=int, default=200)
    parser.add_argument("--long", type=int, default=1200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    installs = dict(item.split("=", 1) for item in args.python)
    rates: dict[str, list[float]] = {name: [] for name in installs}
    for round_number in range(args.rounds):
        for name, python in installs.items():
            with tempfile.TemporaryDirectory() as tmp:
                short = wall_time(python, args.short, args.threads, f"{tmp}/short")
                long = wall_time(python, args.long, args.threads, f"{tmp}/long")
            rates[name].append((args.long - args.short) / (long - short))
            print(f"round {round_number + 1}/{args.rounds} {name}: {rates[name][-1]:.2f} it/s", flush=True)
    first = statistics.median(rates[next(iter(rates))])
    print(f"\n| install | median it/s ({args.threads} threads) | ratio | rounds |")
    print("|---|---|---|---|")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.2f} | {median / first:.3f} | {' '.join(f'{v:.2f}' for v in values)} |")


if __name__ == "__main__":
    main()
