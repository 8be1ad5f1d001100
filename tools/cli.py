"""`sivae generate | reconstruct | interpolate | mix | encode MODEL ...`: images and latents from any saved model.

MODEL is anything `sivae eval` loads: a snapshot, a checkpoint file, a DeepSpeed checkpoint directory. Under
torchrun or accelerate launch, generate, reconstruct and encode split their work across the processes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

ANIMATION_FORMATS = ("gif", "mp4", "png")


def _grid(text: str) -> tuple[int, int]:
    columns, x, rows = text.lower().partition("x")
    try:
        shape = int(columns), int(rows)
    except ValueError:
        shape = (0, 0) if x else (-1, -1)
    if min(shape) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: COLSxROWS with positive numbers, e.g. 8x4")
    return shape


def _psi(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text}: psi is between 0 (the average w) and 1 (no truncation)")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be >= 1")
    return value


def _common(p: argparse.ArgumentParser, out_help: str = "output directory") -> None:
    p.add_argument("model", type=Path, help="a snapshot, checkpoint file or DeepSpeed checkpoint directory")
    p.add_argument("--out", type=Path, required=True, help=out_help)
    p.add_argument("--resolution", type=int, help="work at this level in px (default: the level the model reached; "
                                                  "a lower level of a progressive model is taken at blend 1)")
    p.add_argument("--batch-size", type=_positive, default=32)
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda[:N]")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _html(p: argparse.ArgumentParser) -> None:
    p.add_argument("--html", action="store_true", help="also write OUT/index.html showing the images with captions")


def _image_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--non-square", choices=("error", "crop"), default="error",
                   help="non-square input images: refuse (default, as sivae data build) or take the centre square")
    p.add_argument("--upsample", action="store_true", help="enlarge input images smaller than the model's level")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="sample images from a saved model, one PNG per seed",
                       description="Decode the prior sample of each seed (z drawn from that seed alone, the decoder's "
                                   "constant noise), one PNG per seed named by seed and psi, listed in samples.json.")
    _common(p)
    p.add_argument("--seeds", default="0-99", help="seeds: 0-99, 1,5,9 or 0-9,20 (default 0-99)")
    p.add_argument("--truncation", type=_psi, metavar="PSI", help="pull w toward the average w (style models)")
    p.add_argument("--truncation-cutoff", type=_positive, metavar="SLOTS",
                   help="truncate the first SLOTS style slots (default: the model's truncation_cutoff)")
    p.add_argument("--grid", type=_grid, metavar="COLSxROWS", help="also write grid.png of the first seeds")
    _html(p)
    p.set_defaults(handler=lambda args: _run(args, _generate))

    p = sub.add_parser("reconstruct", help="encode and decode images; PSNR/SSIM; optional latent refinement",
                       description="Encode (posterior mean) and decode images of a data split or image files; writes "
                                   "input|reconstruction pairs, grid.png and per-image PSNR/SSIM in reconstruct.json. "
                                   "The encoder-alone numbers are those of sivae eval run --metrics recon.")
    _common(p)
    p.add_argument("images", nargs="*", type=Path, default=[], metavar="IMAGE", help="image files (or --data)")
    p.add_argument("--data", type=Path, help="a built data set directory (or IMAGE files)")
    p.add_argument("--split", default="test", help="split of --data (default test)")
    p.add_argument("--num", type=_positive, help="the first N samples of the split (default all)")
    p.add_argument("--seed", dest="noise_seed", type=int, default=0,
                   help="seed of the decoder noise (as sivae eval's --seed; default 0)")
    p.add_argument("--refine-steps", type=int, default=0, metavar="K",
                   help="refine each latent by K Adam steps on the pixel error, from the encoder's answer")
    p.add_argument("--refine-space", choices=("z", "w"), default="z", help="refine z, or w per style slot")
    p.add_argument("--refine-lr", type=float, default=0.03, help="Adam step size of the refinement (0.03)")
    p.add_argument("--workers", type=int, default=0, help="data loader processes per rank")
    _image_options(p)
    _html(p)
    p.set_defaults(handler=lambda args: _run(args, _reconstruct))

    p = sub.add_parser("interpolate", help="interpolate between seeds or images: animation and strip",
                       description="Frames between the endpoints (seeds, or images encoded to their posterior mean): "
                                   "spherical in z or linear in w; frames/, strip.png and an animation.")
    _common(p)
    p.add_argument("images", nargs="*", type=Path, default=[], metavar="IMAGE",
                   help="endpoint image files (or --seeds)")
    p.add_argument("--seeds", help="endpoint seeds A,B[,C...] (or IMAGE files)")
    p.add_argument("--steps", type=int, default=16, help="frames per segment, both endpoints counted (16)")
    p.add_argument("--space", choices=("z", "w"), default="z", help="z (spherical) or w (linear, style models)")
    p.add_argument("--format", choices=ANIMATION_FORMATS, default="gif",
                   help="animation format, or png for frames only")
    _image_options(p)
    _html(p)
    p.set_defaults(handler=lambda args: _run(args, _interpolate))

    p = sub.add_parser("mix", help="style-mixing grid: rows give the chosen layers' styles, columns the rest",
                       description="The style-mixing grid of StyleGAN's figures (style models).")
    _common(p)
    p.add_argument("--rows", required=True, help="row source seeds")
    p.add_argument("--cols", required=True, help="column source seeds")
    p.add_argument("--layers", default="coarse", help="coarse (4-8px), middle (16-32px), fine (64px+; a model "
                                                      "below 64px: its top level) or resolutions A-B (coarse)")
    _html(p)
    p.set_defaults(handler=lambda args: _run(args, _mix))

    p = sub.add_parser("encode", help="mu and logvar of every sample of a split, with keys, in an .npz",
                       description="Encode every readable sample of a data split: OUT (.npz) holds keys, mu, logvar.")
    _common(p, out_help="output .npz file")
    p.add_argument("--data", type=Path, required=True, help="a built data set directory")
    p.add_argument("--split", default="train", help="split to encode (default train)")
    p.add_argument("--workers", type=int, default=0, help="data loader processes per rank")
    p.set_defaults(handler=lambda args: _run(args, _encode))


# ------------------------------------------------------------------------------------------------


def _run(args: argparse.Namespace, work: Callable) -> int:
    """Open the model, run the tool; every input problem is one line on stderr and exit status 1."""
    from sivae.core.distributed import init_from_environment, leave_process_group
    from sivae.data_pipeline.errors import DataError
    from sivae.eval.loading import LoadError
    from sivae.tools.session import ToolError, ToolOptions, open_model

    env = init_from_environment(args.device)
    try:
        options = ToolOptions(seed=getattr(args, "noise_seed", 0), batch_size=args.batch_size,
                              workers=getattr(args, "workers", 0),
                              progress=not args.no_progress)
        out_dir = args.out.parent if args.command == "encode" else args.out
        tool = open_model(args.model, env, options, out_dir, args.resolution)
        message = work(tool, args)
    except (LoadError, ToolError, DataError, ValueError) as exc:
        print(f"sivae {args.command}: {exc}", file=sys.stderr)
        return 1
    finally:
        leave_process_group()
    if env.is_main and message:
        print(message)
    return 0


def _seeds(text: str, option: str) -> list[int]:
    from sivae.tools.latents import parse_seeds
    from sivae.tools.session import ToolError

    try:
        return parse_seeds(text)
    except ValueError as exc:
        raise ToolError(f"{option}: {exc}") from None


def _generate(tool, args: argparse.Namespace) -> str:
    from sivae.tools.generate import generate

    seeds = _seeds(args.seeds, "--seeds")
    if args.truncation_cutoff is not None and args.truncation is None:
        raise ValueError("--truncation-cutoff needs --truncation")
    summary = generate(tool, seeds, args.out, truncation_psi=args.truncation, cutoff=args.truncation_cutoff,
                       grid=args.grid, html=args.html)
    return f"{len(summary.get('samples', []))} samples at {tool.size_text} in {args.out}"


def _input_images(tool, args: argparse.Namespace):
    from sivae.tools.session import ToolError, read_image_files

    if tool.kind.name != "images":
        raise ToolError(f"image files are inputs of image models; {args.model} is a {tool.kind.name} model: "
                        "give --data DATA_DIR (a built data set) or --seeds")
    return read_image_files(args.images, tool.resolution, tool.loaded.config.model.max_resolution,
                            non_square=args.non_square, upsample=args.upsample)


def _reconstruct(tool, args: argparse.Namespace) -> str:
    from sivae.tools.reconstruct import image_batches, measured_names, reconstruct
    from sivae.tools.session import ToolError

    if args.refine_steps < 0:
        raise ValueError("--refine-steps must be >= 0")
    if (args.data is None) == (not args.images):
        raise ToolError("give either --data DATA_DIR or IMAGE files")
    notes: list[str] = []
    if args.data is not None:
        batches = tool.context.data_parts(args.data, args.split, args.num, desc=f"reconstruct ({args.split})")
    else:
        files = _input_images(tool, args)
        notes, batches = files.notes, tool.context.bar(image_batches(files, tool), desc="reconstruct")
    summary = reconstruct(tool, batches, args.out, refine_steps=args.refine_steps, refine_space=args.refine_space,
                          refine_lr=args.refine_lr, notes=notes, html=args.html)
    if not summary:
        return ""
    names = measured_names(summary["per_image"])
    scored = ", ".join(f"{name} {summary[name]:.4g}" for name in names)
    lines = [*notes, f"{summary['images']} samples at {tool.size_text}: {scored} (encoder alone, "
                     f"{summary['encoder_seconds_per_image']:.4f} s/sample)"]
    if args.refine_steps:
        refined = ", ".join(f"{name} {summary['refined_' + name]:.4g}" for name in names)
        primary = tool.kind.primary
        lines.append(f"refined ({args.refine_steps} steps in {args.refine_space}): {refined} ({primary} gain "
                     f"{summary[primary + '_gain']:+.4g}), {summary['refine_seconds_per_image']:.4f} s/sample")
    return "\n".join([*lines, f"pairs, grid.png and reconstruct.json in {args.out}"])


def _interpolate(tool, args: argparse.Namespace) -> str:
    from sivae.tools.interpolate import interpolate
    from sivae.tools.session import ToolError

    if (args.seeds is None) == (not args.images):
        raise ToolError("give either --seeds A,B[,C...] or IMAGE files")
    if args.seeds is not None:
        seeds = _seeds(args.seeds, "--seeds")
        endpoints, names, notes = tool.latents_of_seeds(seeds), [f"seed {s}" for s in seeds], []
    else:
        files = _input_images(tool, args)
        endpoints, _ = tool.encode(files.images.to(tool.env.device))
        names, notes = files.keys, files.notes
    if len(names) < 2:
        raise ToolError("an interpolation needs at least two endpoints (--seeds A,B or two images)")
    summary = interpolate(tool, endpoints, names, args.out, steps=args.steps, space=args.space, fmt=args.format,
                          html=args.html)
    return "\n".join([*notes, f"{summary.get('frames', 0)} frames in {args.out}"])


def _mix(tool, args: argparse.Namespace) -> str:
    from sivae.tools.mix import mix

    mix(tool, _seeds(args.rows, "--rows"), _seeds(args.cols, "--cols"), args.layers, args.out, html=args.html)
    return f"style-mixing grid in {args.out / 'mix.png'}"


def _encode(tool, args: argparse.Namespace) -> str:
    from sivae.tools.encode import encode_split

    summary = encode_split(tool, args.data, args.split, args.out)
    if not summary:
        return ""
    return (f"{summary['samples']} samples of {args.split} encoded ({summary['latent_dim']}-D mu and logvar, "
            f"{summary['unreadable']} unreadable) into {args.out}")
