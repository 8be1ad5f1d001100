"""`sivae data`: build a data set (`build`), inspect or verify one (`info`), time its loader (`bench`)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

SOURCES_HELP = (
    "emoji (the embedded default: Noto Color Emoji glyphs, 128px; emoji:FONT.ttf for another font), "
    "emoji-poses[:poses=K,test=F,identities=N,position=1,seed=S,font=PATH] (every glyph under K shared "
    "seeded poses, identity and pose in each sample's metadata, test split = held-out identities), "
    "digits (scikit-learn's 8x8 digits), folder:PATH, zip:PATH, cifar10:PATH (the python tarball or its "
    "folder), svhn:PATH (a folder with train_32x32.mat / test_32x32.mat, or one .mat); point clouds: shapes3d "
    "(procedural chairs, tables, lamps, airplanes and cars; shapes3d:N for N per class, default 300), "
    "points:DIR (.ply/.off/.obj meshes sampled on the surface and .npy/.npz [N, 3] arrays; class = folder name)"
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data",
        help="build sharded WebDataset data sets; inspect, verify and benchmark them",
        description="Turn an image source into WebDataset tar shards at every resolution level (4, 8, ..., max) "
        "with a manifest.json; inspect or verify a built data set; measure its loader's speed.",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    b = actions.add_parser("build", help="build a data set from a source (an interrupted build resumes)",
                           description="Build a data set: shards of every split at every resolution level, then "
                           "manifest.json. Unreadable inputs are skipped and listed; rerunning an interrupted "
                           "build keeps its finished shards.")
    b.add_argument("--source", required=True, help=SOURCES_HELP)
    b.add_argument("--out", type=Path, required=True, help="output directory")
    b.add_argument("--max-resolution", type=int, help="largest level, a power of two (default: the source's "
                   "native size; required for folder and zip)")
    b.add_argument("--test-fraction", type=float, help="share of samples held out as the test split, chosen by a "
                   "hash of their keys (default 0.1; not for cifar10 and svhn folders, which keep their own split)")
    b.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    b.add_argument("--workers", type=int, default=2, help="build processes (default 2)")
    b.add_argument("--upsample", action="store_true", help="allow levels above an image's own size (box filter: "
                   "pixels are repeated), e.g. 8px digits at 64px")
    b.add_argument("--non-square", choices=["crop", "error"], default="error",
                   help="what to do with a non-square image: take its centre square, or stop (default)")
    b.add_argument("--raw-max-resolution", type=int, default=128, help="levels up to this size are stored as raw "
                   "uint8 .npy arrays (fast to load), larger ones as PNG (default 128)")
    b.add_argument("--points", type=int, default=2048, help="point-cloud sources: points per shape, sampled uniformly "
                   "by area on each surface (default 2048)")
    b.add_argument("--seed", type=int, default=0, help="order of training samples across shards, and the points "
                   "sampled on each shape (default 0)")
    b.add_argument("--force", action="store_true", help="rebuild from scratch: replace a data set at --out, or "
                   "discard the finished shards of an interrupted build there (which a plain rerun resumes)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.set_defaults(handler=_build)

    i = actions.add_parser("info", help="summarise a built data set", description="Print what a data set holds; "
                           "with --verify, check every shard against its sha256 in the manifest.")
    i.add_argument("dir", type=Path, help="data set directory (holding manifest.json)")
    i.add_argument("--verify", action="store_true", help="check every shard's sha256 (reads all data)")
    i.set_defaults(handler=_info)

    n = actions.add_parser("bench", help="measure the loader against PIL decoding of the same images",
                           description="Training-loader images/s (0, 1, 2 ... workers) beside PIL's decode-only rate "
                           "of the same images as PNG and a plain PIL loop over them as PNG files.")
    n.add_argument("dir", type=Path, help="data set directory")
    n.add_argument("--resolution", type=int, nargs="+", required=True, help="level(s) to measure")
    n.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="loader worker counts (default 0 1 2)")
    n.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    n.add_argument("--images", type=int, default=500, help="training samples the PIL figures go over (default 500)")
    n.set_defaults(handler=_bench)


def _errors_to_exit(handler):
    def run(args: argparse.Namespace) -> int:
        from sivae.data_pipeline.errors import DataError

        try:
            return handler(args)
        except DataError as exc:
            print(f"sivae data {args.action}: error: {exc}", file=sys.stderr)
            return 2

    return run


@_errors_to_exit
def _build(args: argparse.Namespace) -> int:
    from sivae.data_pipeline.build import BuildOptions, build_dataset
    from sivae.data_pipeline.sources import parse_source

    options = BuildOptions(
        max_resolution=args.max_resolution, test_fraction=args.test_fraction, shard_size=args.shard_size,
        workers=args.workers, upsample=args.upsample, non_square=args.non_square, seed=args.seed,
        raw_max_resolution=args.raw_max_resolution, points=args.points,
    )
    start = time.perf_counter()
    manifest = build_dataset(parse_source(args.source), args.out, options, force=args.force,
                             progress=not args.no_progress)
    print(f"data: built {args.out} from {manifest.source} in {time.perf_counter() - start:.1f} s")
    _summary(manifest)
    return 0


def _summary(manifest) -> None:
    splits = ", ".join(f"{s} {n}" for s, n in manifest.split_sizes.items())
    if manifest.kind == "points":
        levels = f"point clouds of {manifest.resolutions[0]} points (float32 .npy)"
    else:
        levels = ", ".join(f"{r}px {manifest.encoding(r)}" for r in manifest.resolutions)
    shards = {s: len(manifest.shards(s, manifest.resolutions[-1])) for s in manifest.split_sizes}
    print(f"  source   {manifest.source}")
    print(f"  splits   {splits}  (shards per level: {', '.join(f'{s} {n}' for s, n in shards.items())})")
    print(f"  levels   {levels}")
    print(f"  labels   {'yes' if manifest.labels else 'no'}" + (f" ({', '.join(manifest.classes)})"
                                                                   if manifest.classes else ""))
    print(f"  digest   {manifest.digest}")
    skipped = manifest.skipped_sources
    if skipped:
        print(f"  skipped  {len(skipped)} unreadable input(s), listed in manifest.json:")
        for bad in skipped[:20]:
            print(f"           {bad['where']}: {bad['reason']}")
        if len(skipped) > 20:
            print(f"           ... and {len(skipped) - 20} more")


@_errors_to_exit
def _info(args: argparse.Namespace) -> int:
    from sivae.data_pipeline.manifest import load_manifest

    manifest = load_manifest(args.dir)
    print(f"data: {manifest.root}")
    _summary(manifest)
    if not args.verify:
        return 0
    from sivae.data_pipeline.manifest import verify_shards

    problems = verify_shards(manifest)
    for problem in problems:
        print(f"  BAD      {problem}")
    print(f"data: {len(problems)} bad shard(s)" if problems else "data: every shard matches its checksum")
    return 1 if problems else 0


@_errors_to_exit
def _bench(args: argparse.Namespace) -> int:
    import os

    from sivae.data_pipeline.bench import format_table, run_bench

    before = os.getloadavg()
    rows = run_bench(args.dir, args.resolution, args.workers, args.batch_size, args.images)
    print(format_table(rows))
    print(f"load average (1/5/15 min) before {before}, after {os.getloadavg()}; {os.cpu_count()} CPUs")
    return 0
