"""A saved model opened for the tools: the level it works at, the device, and latents <-> images.

Every image the tools make from a latent is decoded with the style decoder's constant noise maps
(`noise="const"`), so that it depends on its latent alone: a seed gives the same image in any batch,
on any number of processes. Reconstructions (`reconstruct`, `encode`) follow `sivae eval`'s
convention instead (the eval context's seeded noise), so that their numbers are the recon metric's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from sivae.core.distributed import DistEnv
from sivae.data_pipeline.images import ImageProblem, box_downsample, resize_box, square, to_rgb
from sivae.eval.context import EvalContext, EvalOptions
from sivae.eval.loading import LoadedModel, load_model
from sivae.models.progressive import lod_of
from sivae.tools.kinds import kind_of


class ToolError(RuntimeError):
    """Input a tool cannot work with (a path, a level, an image, an option): reported, exit status 1."""


@dataclass(frozen=True)
class ToolOptions:
    seed: int = 0
    batch_size: int = 32
    workers: int = 0
    progress: bool = True


class ToolModel:
    """A loaded model at the level a tool works at, with the eval context of that level."""

    def __init__(self, loaded: LoadedModel, env: DistEnv, options: ToolOptions, out_dir: Path | None):
        self.loaded, self.env, self.options = loaded, env, options
        self.model = loaded.model
        self.kind = kind_of(loaded.config.data.kind)
        self.context = EvalContext(loaded, EvalOptions(seed=options.seed, batch_size=options.batch_size,
                                                       workers=options.workers, progress=options.progress),
                                   env, out_dir)  # fmt: skip

    # ---- what the model is -----------------------------------------------------------------------
    @property
    def lod(self) -> int:
        return self.loaded.lod

    @property
    def blend(self) -> float:
        return self.loaded.blend

    @property
    def resolution(self) -> int:
        """Image side in pixels, or the points of a point cloud (what `sivae eval` calls the resolution)."""
        return self.context.resolution

    @property
    def size_text(self) -> str:
        return f"{self.resolution} points" if self.kind.name == "points" else f"{self.resolution}px"

    @property
    def arch(self) -> str:
        return self.loaded.config.model.arch

    @property
    def is_style(self) -> bool:
        """Whether the decoder has a mapping network and style slots (w space, truncation, mixing)."""
        return hasattr(self.model.decoder, "synthesize")

    def require_style(self, what: str) -> None:
        if not self.is_style:
            raise ToolError(f"{what} needs a style-based decoder (model.arch: style); {self.loaded.path} is "
                            f"model.arch: {self.arch}")

    @property
    def slots(self) -> int:
        """Style slots at this level: two per level from 4px up."""
        return 2 * (self.lod + 1)

    # ---- latents -> images ---------------------------------------------------------------------
    def latent_of_seed(self, seed: int) -> Tensor:
        """z of one seed, drawn on the CPU (the same numbers on every device)."""
        generator = torch.Generator().manual_seed(int(seed))
        return torch.randn(self.model.latent_dim, generator=generator)

    def latents_of_seeds(self, seeds: list[int]) -> Tensor:
        return torch.stack([self.latent_of_seed(s) for s in seeds]).to(self.env.device)

    @torch.no_grad()
    def decode(self, z: Tensor, truncation_psi: float | None = None, cutoff: int | None = None) -> Tensor:
        """Images in [-1, 1] of latents z [B, latent], each a function of its z alone."""
        if not self.is_style:
            if truncation_psi is not None:
                self.require_style("--truncation")
            return self.model.decode(z, self.lod, self.blend)
        styles = self.styles(z)
        if truncation_psi is not None:
            styles = self.model.decoder.truncate(styles, truncation_psi, cutoff)
        return self.synthesize(styles)

    def styles(self, z: Tensor) -> Tensor:
        """Per-slot w [B, slots, latent] of latents z (no mixing, no truncation)."""
        return self.model.decoder.styles(z, self.lod, False, None)

    def synthesize(self, styles: Tensor) -> Tensor:
        return self.model.decoder.synthesize(styles, self.lod, self.blend, noise="const")

    @torch.no_grad()
    def encode(self, batch: Tensor) -> tuple[Tensor, Tensor]:
        """(mu, logvar) of a batch as the data stores it (images: uint8, faded in at this level as in training)."""
        return self.context.encode(self.context.as_model_input(batch))

    def pictures(self, output: Tensor) -> Tensor:
        """uint8 pictures [B, 3, H, W] (CPU) of decoder outputs."""
        return self.kind.pictures(output)


def open_model(path: Path, env: DistEnv, options: ToolOptions, out_dir: Path | None = None,
               resolution: int | None = None) -> ToolModel:
    """The model saved at `path` (any format eval loads) at `resolution` px (None: the level it reached).

    A lower level of a progressive model is taken at blend 1; a level above the one it reached was never
    trained and is refused, as is any other resolution of a model that does not grow."""
    loaded = load_model(path, env.device)  # LoadError names the path
    if resolution is not None and loaded.resolution is None:
        raise ToolError(f"--resolution {resolution}: {path} has no levels (data.kind {loaded.config.data.kind})")
    if resolution is not None and resolution != loaded.resolution:
        if resolution < 4 or resolution & (resolution - 1):
            raise ToolError(f"--resolution {resolution}: not a level (levels are powers of two from 4px)")
        if resolution > loaded.resolution:
            raise ToolError(f"--resolution {resolution}: {path} reached {loaded.resolution}px "
                            f"(levels 4..{loaded.resolution}px); {resolution}px was never trained")
        if not hasattr(loaded.model.decoder, "synthesize"):
            raise ToolError(f"--resolution {resolution}: {path} (model.arch: {loaded.config.model.arch}) does not "
                            f"grow progressively; it works at {loaded.resolution}px only")
        loaded = dataclasses.replace(loaded, lod=lod_of(resolution), blend=1.0, resolution=resolution)
    return ToolModel(loaded, env, options, out_dir)


# ------------------------------------------------------------------------------------------------
# Images from files


@dataclass
class InputImages:
    images: Tensor  # uint8 [N, 3, R, R]
    keys: list[str]  # file names without their folder
    notes: list[str]  # what was done to make them fit (said in the output)


def read_image_files(paths: list[Path], resolution: int, top: int, *, non_square: str = "error",
                     upsample: bool = False) -> InputImages:
    """Image files as the data build makes a level of them: square RGB, box-resized to the largest level
    the image allows (at most `top`, the model's largest), box-averaged down to `resolution`.

    Like `sivae data build`: a non-square image is refused unless `non_square` is "crop" (its centre
    square), a smaller one unless `upsample`. A file that is not an image is an error naming it."""
    images, keys, resized = [], [], []
    for path in paths:
        path = Path(path)
        try:
            with Image.open(path) as image:
                rgb = to_rgb(image)
        except FileNotFoundError:
            raise ToolError(f"{path}: no such file") from None
        except (UnidentifiedImageError, OSError) as exc:
            raise ToolError(f"{path}: not an image file this tool can read ({exc})") from None
        height, width = rgb.shape[:2]
        try:
            rgb = square(rgb, non_square)  # type: ignore[arg-type]
            side = rgb.shape[0]
            if side < resolution and not upsample:
                raise ImageProblem(f"is {side}x{side}, smaller than the model's {resolution}px (pass --upsample "
                                   f"to enlarge it)")
            largest = max(resolution, min(top, 1 << (side.bit_length() - 1)))
            level = box_downsample(resize_box(rgb, largest, upsample=True), largest // resolution)
        except ImageProblem as exc:
            raise ToolError(f"{path}: {exc} (non-square images: --non-square crop)") from None
        if (height, width) != (resolution, resolution):
            resized.append(f"{path.name} ({width}x{height}{', centre square' if height != width else ''})")
        images.append(torch.from_numpy(np.array(level)).permute(2, 0, 1))
        keys.append(path.name)
    if not images:
        raise ToolError("no images given")
    notes = []
    if resized:
        notes.append(f"resized to the model's {resolution}px with the data build's box filter: " + ", ".join(resized))
    return InputImages(torch.stack(images), keys, notes)
