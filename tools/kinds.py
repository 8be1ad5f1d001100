"""What the tools do differently per kind of data (the run config's `data.kind`): pictures of outputs, the
refinement's error and the reconstruction scores (model inputs and reconstructions are the eval context's,
which knows the kinds). A new kind is one class and one entry in `KINDS`.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from sivae.core.images import to_uint8
from sivae.core.points import chamfer_distance, render_point_clouds
from sivae.eval.context import EvalContext
from sivae.eval.measures import psnr, ssim


class ImageKind:
    """Images (data.kind images): pictures are the images, the error the pixel MSE, the scores PSNR and SSIM."""

    name = "images"
    arrays = False  # whether a generated sample is also saved as its raw array (.npy)
    primary = "psnr"  # the score whose gain a refinement reports
    higher_is_better = True

    def shown_inputs(self, ctx: EvalContext, batch: Tensor) -> Tensor:
        """uint8 pictures of the inputs as the model saw them (mid-fade: faded)."""
        return ctx.as_reals(batch)

    def pictures(self, output: Tensor) -> Tensor:
        """uint8 pictures [B, 3, H, W] (CPU) of model outputs."""
        return to_uint8(output).cpu()

    def error(self, output: Tensor, target: Tensor) -> Tensor:
        """Per-sample error the refinement minimises: the pixel MSE."""
        return (output.float() - target.float()).pow(2).flatten(1).mean(dim=1)

    def scores(self, ctx: EvalContext, batch: Tensor, output: Tensor) -> dict[str, np.ndarray]:
        """Per-image PSNR and SSIM of the quantised output against the input, as the recon metric computes them."""
        x, y = self.shown_inputs(ctx, batch).double() / 255.0, self.pictures(output).double() / 255.0
        return {"psnr": psnr(x, y).numpy(), "ssim": ssim(x, y).numpy()}


class PointKind:
    """Point clouds [B, N, 3] (data.kind points): pictures are renders, the error and score the Chamfer distance."""

    name = "points"
    arrays = True
    primary = "chamfer"
    higher_is_better = False

    def shown_inputs(self, ctx: EvalContext, batch: Tensor) -> Tensor:
        return self.pictures(batch)

    def pictures(self, output: Tensor) -> Tensor:
        return to_uint8(render_point_clouds(output))

    def error(self, output: Tensor, target: Tensor) -> Tensor:
        return chamfer_distance(output, target, reduce="mean")

    def scores(self, ctx: EvalContext, batch: Tensor, output: Tensor) -> dict[str, np.ndarray]:
        """The point-cloud literature's Chamfer distance (mean-reduced, both directions) of each shape."""
        distance = chamfer_distance(ctx.as_model_input(batch), output.float(), reduce="mean")
        return {"chamfer": distance.double().cpu().numpy()}


KINDS = {"images": ImageKind, "points": PointKind}


def kind_of(data_kind: str):
    if data_kind not in KINDS:
        raise ValueError(f"the tools do not handle data.kind {data_kind!r} (they handle {', '.join(KINDS)})")
    return KINDS[data_kind]()
