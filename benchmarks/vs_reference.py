"""sivae against the official Soft-IntroVAE code at equal work, side by side on this machine.

Style model (FFHQ-256): the official `style_soft_intro_vae` model and its two LREQAdam optimizers, built as
its training script builds them for its configs/ffhq256.yaml (yacs config merged over its defaults), and
the per-iteration calls of that script's loop at blend 1 (encoder step, decoder step, the loss-tracker
reads, the EMA `lerp`), against one iteration of `sivae train` on configs/ffhq256.yaml: `training_step`
through the single-process backend with the run config's Adam, and the EMA update. Random images in
[-1, 1] (the speed does not depend on them). Every measurement is a fresh process (`--child`): a warm-up
of --warmup iterations, then the mean of --iters timed ones; sides alternate, level by level, over
--rounds rounds, and the medians' ratio (official s/iteration over ours: > 1 means sivae is faster) is
printed. The official code has no mixed precision: it always runs fp32; sivae runs each --precision.
`--official-kept` adds the official code run with sivae's allocator setting (glibc keeps freed blocks, as
core.host_memory sets it), to tell that setting's share of a speed-up from the rest. `--baseline DIR` adds
an earlier sivae as a side ("before"), DIR being where it was installed with `pip install --no-deps
--target DIR CHECKOUT` (its children import sivae from DIR; the config is this checkout's), so that a
change is measured against the official code and against itself in one session.

2D toy: the official `soft_intro_vae_2d/main.py` on a preset against `sivae toy2d` on the same one,
without the VAE warm-up, at --toy-short and --toy-long iterations; iterations per second are
(long - short) / (wall time long - wall time short), so start-up, plots and final metrics cancel.

    git clone https://github.com/taldatech/soft-intro-vae-pytorch /tmp/soft-intro-vae-pytorch
    pip install -e ".[bench]"    # yacs, the official config system, needed only to build its model here
    python benchmarks/vs_reference.py --reference /tmp/soft-intro-vae-pytorch [--levels 4 16 32 64]
        [--batch 8] [--threads 2] [--precision fp32 bf16] [--rounds 3] [--toy-threads 1 2] [--no-style]
        [--baseline DIR] [--official-kept] [--profile 4 16]
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

ROOT = Path(__file__).resolve().parents[1]
HOW_TO_GET_IT = ("benchmarks/vs_reference.py needs a checkout of the official code: git clone "
                 "https://github.com/taldatech/soft-intro-vae-pytorch PATH, then --reference PATH (and pip "
                 "install -e '.[bench]' for yacs, its config system)")  # fmt: skip
OFFICIAL_EXTRA_WORK = 1.031  # the official iteration's FLOPs over ours (it encodes the real batch again)
# the official 8Gaussians preset (its main.py's recommended hyper-parameters) and sivae's toy2d preset name
TOY_PRESETS = {"8Gaussians": (["-d", "8Gaussians", "-b", "512", "-k", "0.3", "-r", "0.2", "-e", "0.9", "-z", "2"],
                              "8gaussians")}


# ------------------------------------------------------------------------------------------------
# Child processes: one side, one level, one precision


def official_iteration(reference: Path, resolution: int, batch: int):
    """The official style model's training iteration at `resolution`, as its train script runs it (CPU)."""
    import numpy as np
    import torch

    code = reference / "style_soft_intro_vae"
    sys.path.insert(0, str(code))
    from custom_adam import LREQAdam  # the official modules, importable once their folder is on the path
    from defaults import get_cfg_defaults
    from model import SoftIntroVAEModelTL

    cfg = get_cfg_defaults()
    cfg.merge_from_file(str(code / "configs" / "ffhq256.yaml"))
    m = cfg.MODEL
    common = dict(startf=m.START_CHANNEL_COUNT, layer_count=m.LAYER_COUNT, maxf=m.MAX_CHANNEL_COUNT,
                  latent_size=m.LATENT_SPACE_SIZE, mapping_layers=m.MAPPING_LAYERS, channels=m.CHANNELS,
                  generator=m.GENERATOR, encoder=m.ENCODER, beta_kl=m.BETA_KL, beta_rec=m.BETA_REC,
                  beta_neg=m.BETA_NEG[m.LAYER_COUNT - 1], scale=m.SCALE)  # fmt: skip
    torch.manual_seed(0)
    model = SoftIntroVAEModelTL(dlatent_avg_beta=m.DLATENT_AVG_BETA, style_mixing_prob=m.STYLE_MIXING_PROB, **common)
    model.train()
    model_s = SoftIntroVAEModelTL(truncation_psi=m.TRUNCATIOM_PSI, truncation_cutoff=m.TRUNCATIOM_CUTOFF, **common)
    model_s.eval()
    model_s.requires_grad_(False)
    t = cfg.TRAIN
    decoder_optimizer = LREQAdam([{"params": model.decoder.parameters()}, {"params": model.mapping_fl.parameters()}],
                                 lr=t.BASE_LEARNING_RATE, betas=(t.ADAM_BETA_0, t.ADAM_BETA_1), weight_decay=0)
    encoder_optimizer = LREQAdam([{"params": model.encoder.parameters()}, {"params": model.mapping_tl.parameters()}],
                                 lr=t.BASE_LEARNING_RATE, betas=(t.ADAM_BETA_0, t.ADAM_BETA_1), weight_decay=0)
    lod = int(np.log2(resolution)) - 2
    x = torch.rand(batch, m.CHANNELS, resolution, resolution) * 2 - 1
    betta = 0.5 ** (batch / (10 * 1000.0))
    kl_diffs, kls_real, kls_fake, rec_errs = [], [], [], []

    def iteration() -> None:
        x.requires_grad = True
        encoder_optimizer.zero_grad()
        loss_e = model(x, lod, 1.0, d_train=False, e_train=True)
        loss_e.backward()
        encoder_optimizer.step()
        decoder_optimizer.zero_grad()
        loss_d = model(x, lod, 1.0, d_train=True, e_train=False)
        loss_d.backward()
        decoder_optimizer.step()
        kl_diffs.append(model.last_kl_diff.data.cpu())  # the loop's statistics, as it keeps them
        kls_real.append(model.last_real_kl)
        kls_fake.append(model.last_fake_kl)
        rec_errs.append(model.last_rec_loss)
        model_s.lerp(model, betta)

    return iteration


def sivae_iteration(resolution: int, batch: int, precision: str):
    """One iteration of `sivae train` on configs/ffhq256.yaml at `resolution`: the training step and the EMA."""
    import copy

    import torch

    from sivae.core.config import load_config
    from sivae.models import build_model, lod_of
    from sivae.train.backend import LocalBackend
    from sivae.train.ema import ema_beta, update_ema
    from sivae.train.schema import RunConfig
    from sivae.train.steps import training_step
    from sivae.train.trainer import make_optimizers

    run = load_config(RunConfig, ROOT / "configs" / "ffhq256.yaml")
    level = next(lv for lv in run.train.schedule if lv.resolution == resolution)
    lod = lod_of(resolution)
    torch.manual_seed(0)
    model = build_model(run.model).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizers = make_optimizers(model, run)
    for optimizer in optimizers.values():
        for group in optimizer.param_groups:
            group["lr"] = level.lr
    backend = LocalBackend(model, optimizers, device=torch.device("cpu"), precision=precision)
    backend.set_level(lod, 1.0)
    objective = run.objective
    if level.beta_neg is not None:
        objective = type(objective)(**{**vars(objective), "beta_neg": level.beta_neg})
    scale = objective.scale or 1.0 / model.input_dim(lod)
    x = torch.rand(batch, *model.data_shape_at(lod)) * 2 - 1
    beta = ema_beta(batch, run.train.ema_halflife_kimg)

    def iteration() -> None:
        training_step(backend, [x], objective, scale, warmup=False)
        update_ema(ema, model, beta)

    return iteration


def matmul_ceiling(threads: int) -> dict[str, float]:
    """GFLOP/s of a large square matrix product on `threads` threads, fp32 and bf16: what the CPU's GEMM reaches."""
    import torch

    torch.set_num_threads(threads)
    rates = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
        a @ b
        start, repeats = time.perf_counter(), 5
        for _ in range(repeats):
            a @ b
        rates[name] = 2 * 2048**3 * repeats / (time.perf_counter() - start) / 1e9
    return rates


def iteration_gflop(level: int, batch: int) -> float:
    """GFLOP of one sivae iteration at `level` px (matrix products and convolutions, forward and backward:
    `sivae models summary`)."""
    from sivae.core.config import load_config
    from sivae.models import lod_of
    from sivae.train.schema import RunConfig
    from sivae.train.summary import summarize_level

    run = load_config(RunConfig, ROOT / "configs" / "ffhq256.yaml")
    return summarize_level(run.model, lod_of(level)).flops_per_image * batch / 1e9


# op families of the profile table: the first family whose name fragment an op's name contains
OP_FAMILIES = [
    ("convolution backward", ("convolution_backward", "conv2d_backward", "conv_transpose")),
    ("convolution forward", ("mkldnn_convolution", "convolution", "conv2d")),
    ("matrix products (mm, addmm)", ("aten::mm", "addmm", "aten::bmm")),
    ("EMA (lerp)", ("lerp",)),
    ("optimizer", ("adam", "addcdiv", "addcmul", "sqrt")),
    ("casts and copies", ("copy_", "_to_copy")),
    ("normalisation", ("batch_norm", "var_mean", "instance_norm")),
    ("elementwise mul", ("aten::mul",)),
    ("elementwise add", ("aten::add",)),
]


def profile_iteration(iteration, iterations: int) -> dict[str, float]:
    """Self CPU milliseconds per iteration by op family (torch.profiler over `iterations` iterations)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(iterations):
            iteration()
    families: dict[str, float] = {}
    for event in prof.key_averages():
        if event.key.startswith(("autograd::", "Optimizer.", "ProfilerStep")):
            continue  # wrappers: their time is their children's
        family = next((name for name, parts in OP_FAMILIES if any(p in event.key.lower() for p in parts)), "other")
        families[family] = families.get(family, 0.0) + event.self_cpu_time_total / 1000 / iterations
    families["total"] = sum(families.values())
    return families


def run_child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    if args.child == "ceiling":
        print(json.dumps(matmul_ceiling(args.threads)))
        return
    if args.child == "sivae":
        from sivae.core.host_memory import keep_freed_memory

        keep_freed_memory()  # as `sivae train` does on the CPU (the "before" side did not)
    if args.child == "official":
        iteration = official_iteration(args.reference, args.level, args.batch)
    else:
        iteration = sivae_iteration(args.level, args.batch, args.child_precision)
    for _ in range(args.warmup):
        iteration()
    if args.child_profile:
        print(json.dumps(profile_iteration(iteration, args.iters)))
        return
    start = time.perf_counter()
    for _ in range(args.iters):
        iteration()
    print(json.dumps({"seconds": (time.perf_counter() - start) / args.iters}))


# ------------------------------------------------------------------------------------------------
# The orchestrator


def side_env(args: argparse.Namespace, side: str, threads: int) -> dict[str, str]:
    """A child's environment: its thread count and, for the "before" side, the earlier sivae first on the path."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if side == "official-kept":  # glibc's own tunables for what core.host_memory sets with mallopt
        from sivae.core.host_memory import KEPT_BELOW_BYTES

        env.update(MALLOC_MMAP_THRESHOLD_=str(KEPT_BELOW_BYTES), MALLOC_TRIM_THRESHOLD_=str(KEPT_BELOW_BYTES))
    if side == "before":
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(args.baseline), env.get("PYTHONPATH")]))
    return env


def sides_of(args: argparse.Namespace) -> list[str]:
    return ["official", *(["official-kept"] if args.official_kept else []), *(["before"] if args.baseline else []),
            "sivae"]


def style_runs(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(side, precision) of every style measurement: the official sides in fp32, ours in each --precision."""
    sides = sides_of(args)
    official = [(side, "fp32") for side in sides if side.startswith("official")]
    return official + [(side, p) for p in args.precision for side in sides if not side.startswith("official")]


def run_side(args: argparse.Namespace, side: str, level: int, precision: str, profiled: bool = False) -> dict:
    """One child process of `side`; its JSON result (seconds per iteration, or the profile's op families)."""
    command = [sys.executable, __file__, "--child", "official" if side.startswith("official") else side,
               "--level", str(level), "--child-precision", precision, "--batch", str(args.batch),
               "--threads", str(args.threads), "--warmup", str(args.warmup), "--iters", str(args.iters)]  # fmt: skip
    if args.reference:
        command += ["--reference", str(args.reference)]
    if profiled:
        command += ["--child-profile"]
    proc = subprocess.run(command, capture_output=True, text=True, env=side_env(args, side, args.threads), cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{side} at {level}px failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def profile_table(args: argparse.Namespace) -> None:
    """Where one iteration's time goes, per side, at each --profile level (one profiled process each)."""
    runs = style_runs(args)
    for level in args.profile:
        profiles = {(side, p): run_side(args, side, level, p, profiled=True) for side, p in runs}
        print(f"\n# profile at {level}px, batch {args.batch}, {args.threads} threads: self CPU ms per iteration "
              f"(torch.profiler, mean of {args.iters} after {args.warmup} warm-up); load average "
              f"{os.getloadavg()[0]:.2f}")
        print("| ops | " + " | ".join(f"{side} {p}" for side, p in runs) + " |")
        print("|---" * (1 + len(runs)) + "|")
        for family in [name for name, _ in OP_FAMILIES] + ["other", "total"]:
            print(f"| {family} | " + " | ".join(f"{profiles[run].get(family, 0.0):.0f}" for run in runs) + " |")


def style_table(args: argparse.Namespace) -> None:
    runs = style_runs(args)
    times: dict[tuple[int, str, str], list[float]] = {}
    for round_number in range(args.rounds):
        for level in args.levels:
            for side, precision in runs:
                seconds = run_side(args, side, level, precision)["seconds"]
                times.setdefault((level, side, precision), []).append(seconds)
                print(f"round {round_number + 1}/{args.rounds} {level}px {side} {precision}: {seconds:.3f} s/it",
                      flush=True)
    ceiling = json.loads(subprocess.run(
        [sys.executable, __file__, "--child", "ceiling", "--threads", str(args.threads)], capture_output=True,
        text=True, check=True, env=side_env(args, "sivae", args.threads), cwd=ROOT).stdout.strip().splitlines()[-1])
    print(f"\n# style model (FFHQ-256), batch {args.batch}, {args.threads} threads, blend 1, EMA included; "
          f"median of {args.rounds} fresh processes, {args.warmup} warm-up + {args.iters} timed iterations each; "
          f"load average {os.getloadavg()[0]:.2f}; official / X > 1: X is faster than the official code")
    header = " | ".join(f"{side} {p} s/it | official / {side} {p}" for side, p in runs[1:])
    print(f"| level | official fp32 s/it | {header} |")
    print("|---" * (2 + 2 * (len(runs) - 1)) + "|")
    for level in args.levels:
        official = statistics.median(times[(level, "official", "fp32")])
        cells = []
        for side, precision in runs[1:]:
            seconds = statistics.median(times[(level, side, precision)])
            cells.append(f"{seconds:.3f} | {official / seconds:.2f}")
        print(f"| {level}px | {official:.3f} | {' | '.join(cells)} |")
    print(f"\n# GFLOP/s achieved (matrix products and convolutions of `sivae models summary`; the official code "
          f"does {OFFICIAL_EXTRA_WORK - 1:.1%} more per iteration); a 2048^2 matrix product on {args.threads} "
          f"threads reaches "
          f"{ceiling['fp32']:.0f} GFLOP/s in fp32, {ceiling['bf16']:.0f} in bf16")
    print("| level | GFLOP/iteration | " + " | ".join(f"{side} {p}" for side, p in runs) + " |")
    print("|---" * (2 + len(runs)) + "|")
    for level in args.levels:
        gflop = iteration_gflop(level, args.batch)
        work = {side: gflop * (OFFICIAL_EXTRA_WORK if side.startswith("official") else 1.0) for side, _ in runs}
        cells = [f"{work[side] / statistics.median(times[(level, side, p)]):.0f}" for side, p in runs]
        print(f"| {level}px | {gflop:.0f} | {' | '.join(cells)} |")


def toy_wall_time(command: list[str], env: dict[str, str], cwd: str) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - start


def toy_rate(side: str, args: argparse.Namespace, threads: int) -> float:
    """Iterations per second of one side's 2D Soft-IntroVAE phase, from two run lengths."""
    official_args, preset = TOY_PRESETS[args.toy_preset]
    seconds = {}
    for iters in (args.toy_short, args.toy_long):
        with tempfile.TemporaryDirectory() as tmp:
            if side.startswith("official"):
                command = [sys.executable, str(args.reference / "soft_intro_vae_2d" / "main.py"), *official_args,
                           "-n", str(iters), "-v", "0", "-s", "0"]
            else:
                command = [sys.executable, "-m", "sivae", "toy2d", "--dataset", preset, "--objective", "soft-intro",
                           "--out", f"{tmp}/out", "--iters", str(iters), "--no-progress", "vae_warmup_iters=0"]
            seconds[iters] = toy_wall_time(command, side_env(args, side, threads), tmp)
    return (args.toy_long - args.toy_short) / (seconds[args.toy_long] - seconds[args.toy_short])


def toy_table(args: argparse.Namespace) -> None:
    rates: dict[tuple[str, int], list[float]] = {}
    for round_number in range(args.rounds):
        for threads in args.toy_threads:
            for side in sides_of(args):
                rate = toy_rate(side, args, threads)
                rates.setdefault((side, threads), []).append(rate)
                print(f"round {round_number + 1}/{args.rounds} toy {threads} threads {side}: {rate:.2f} it/s",
                      flush=True)
    print(f"\n# 2D toy ({args.toy_preset}, Soft-IntroVAE phase, no VAE warm-up), it/s from {args.toy_short} and "
          f"{args.toy_long} iterations, median of {args.rounds}; load average {os.getloadavg()[0]:.2f}")
    ours = sides_of(args)[1:]
    print("| threads | official it/s | " + " | ".join(f"{side} it/s | {side} / official" for side in ours) + " |")
    print("|---" * (2 + 2 * len(ours)) + "|")
    for threads in args.toy_threads:
        official = statistics.median(rates[("official", threads)])
        cells = [f"{statistics.median(rates[(side, threads)]):.2f} | "
                 f"{statistics.median(rates[(side, threads)]) / official:.2f}" for side in ours]
        print(f"| {threads} | {official:.2f} | {' | '.join(cells)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, help="a checkout of taldatech/soft-intro-vae-pytorch")
    parser.add_argument("--baseline", type=Path, help="an earlier sivae installed with pip install --target DIR")
    parser.add_argument("--levels", type=int, nargs="+", default=[4, 16, 32, 64])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--no-style", action="store_true", help="skip the style model table")
    parser.add_argument("--profile", type=int, nargs="+", default=[], metavar="LEVEL",
                        help="only profile one iteration of each side at these levels (px), by op family")
    parser.add_argument("--no-toy", action="store_true", help="skip the 2D table")
    parser.add_argument("--toy-preset", choices=sorted(TOY_PRESETS), default="8Gaussians")
    parser.add_argument("--toy-threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--toy-short", type=int, default=200)
    parser.add_argument("--toy-long", type=int, default=1200)
    parser.add_argument("--official-kept", action="store_true",
                        help="also time the official code with sivae's allocator setting (core.host_memory)")
    parser.add_argument("--child", choices=("official", "before", "sivae", "ceiling"), help=argparse.SUPPRESS)
    parser.add_argument("--level", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-precision", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--child-profile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args)
        return
    if args.reference is None or not (args.reference / "style_soft_intro_vae" / "model.py").is_file():
        print(HOW_TO_GET_IT if args.reference is None else f"{args.reference}: not a checkout of the official "
              f"code (no style_soft_intro_vae/model.py). {HOW_TO_GET_IT}", file=sys.stderr)
        sys.exit(2)
    if args.profile:
        profile_table(args)
        return
    if not args.no_style:
        style_table(args)
    if not args.no_toy:
        toy_table(args)


if __name__ == "__main__":
    main()
