"""`sivae translate MODEL --out DIR (--data DATA_DIR | --pairs A.png,B.png ...)`: a translation model's swap grid."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "translate", help="swap grid of a translation model: the class of each row in the content of each column",
        description="Decode the class code of each class source with the content code of each content source and "
        "write OUT/swaps.png: content sources along the top, class sources down the left. With --data: test "
        "images of a data set with identity and pose metadata (emoji-poses; every pose of one held-out identity "
        "along the top, other identities down the left). With --pairs: image files, each pair A,B making A a "
        "row and B a column. Scores against ground truth: sivae eval run MODEL --metrics translation.",
    )
    p.add_argument("model", type=Path, help="a snapshot or checkpoint of a translation model (any saved form)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--data", type=Path, help="a built data set with identity and pose metadata")
    what.add_argument("--pairs", nargs="+", metavar="A.png,B.png", help="class source A, content source B")
    p.add_argument("--split", default="test", help="split of --data (default test: identities never trained on)")
    p.add_argument("--rows", type=int, default=8, help="class sources taken from --data (default 8)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    p.set_defaults(handler=main)


def _read_image(path: Path, resolution: int):
    """An image file -> uint8 [R, R, 3] as the data builder would store it (centre square, box filter)."""
    from PIL import Image

    from sivae.data_pipeline.images import ImageProblem, resize_box, square, to_rgb

    try:
        with Image.open(path) as image:
            image.load()
            rgb = to_rgb(image)
        return resize_box(square(rgb, "crop"), resolution, upsample=True)
    except (OSError, ImageProblem) as exc:
        raise ValueError(f"{path}: cannot be read as an image ({exc})") from None


def _parse_pairs(pairs: list[str]) -> tuple[list[Path], list[Path]]:
    rows: list[Path] = []
    columns: list[Path] = []
    for pair in pairs:
        parts = pair.split(",")
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"--pairs {pair!r}: expected CLASS_SOURCE,CONTENT_SOURCE")
        a, b = Path(parts[0]), Path(parts[1])
        rows += [a] if a not in rows else []
        columns += [b] if b not in columns else []
    return rows, columns


def main(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from sivae.core.images import save_png
    from sivae.data_pipeline.errors import DataError
    from sivae.data_pipeline.samples import read_split
    from sivae.eval.loading import LoadError, load_model
    from sivae.eval.translation import as_input, grid_sources, swap_grid
    from sivae.models.translation import TranslationModel

    try:
        if args.rows < 1:
            raise ValueError(f"--rows must be >= 1, got {args.rows}")
        loaded = load_model(args.model, device=torch.device(args.device))
        if not isinstance(loaded.model, TranslationModel):
            raise ValueError(f"{args.model}: a {type(loaded.model).__name__}, not a translation model")
        if args.data is not None:
            samples = read_split(args.data, args.split, loaded.resolution)
            if not samples.meta or any("identity" not in m or "pose" not in m for m in samples.meta):
                raise ValueError(f"{args.data}: its {args.split} samples carry no identity and pose (use --pairs)")
            rows, columns = grid_sources(samples.meta, args.rows)
            class_sources, content_sources = samples.images[rows], samples.images[columns]
        else:
            row_paths, column_paths = _parse_pairs(args.pairs)
            class_sources = np.stack([_read_image(p, loaded.resolution) for p in row_paths])
            content_sources = np.stack([_read_image(p, loaded.resolution) for p in column_paths])
    except (LoadError, DataError, ValueError) as exc:
        print(f"sivae translate: error: {exc}", file=sys.stderr)
        return 2
    device = loaded.device
    figure = swap_grid(loaded.model, as_input(class_sources, device), as_input(content_sources, device))
    path = save_png(figure, args.out / "swaps.png", upscale_to=512)
    print(f"translate: {len(class_sources)} class sources x {len(content_sources)} content sources -> {path}")
    return 0
