"""`sivae reconstruct`: encode (posterior mean), decode, score; optionally refine the latent by gradient descent.

The encoder-alone reconstruction is the eval context's (`EvalContext.reconstruct`: the same batches,
noise and quantisation as `sivae eval run --metrics recon`), so the mean PSNR here is that metric's.
Refinement starts from the encoder's answer and minimises the pixel MSE to the input in z, or in w per
style slot (`space="w"`), with Adam, under the very noise the encoder's reconstruction was decoded with;
each image keeps its best iterate, so it never ends worse than the encoder alone.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sivae.core.distributed import gather_lists, part
from sivae.data_pipeline.sources import IMAGE_SUFFIXES
from sivae.eval.context import DataPart, key_seed
from sivae.tools.outputs import save_grid, save_image, side_by_side, write_index, write_json
from sivae.tools.session import InputImages, ToolError, ToolModel


def refine_latents(tool: ToolModel, images: Tensor, keys: list[str], steps: int, *, space: str = "z",
                   lr: float = 0.03) -> Tensor:
    """The decoder's outputs after `steps` Adam steps on the latent (z, or per-slot w) of each sample."""
    ctx, model = tool.context, tool.model
    if space == "w":
        tool.require_style("refinement in w")
    target = ctx.as_model_input(images)
    with torch.no_grad():
        mu, _ = ctx.encode(target)
        start = tool.styles(mu) if space == "w" else mu
    latent = start.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([latent], lr=lr)
    device = tool.env.device
    seed = key_seed(tool.options.seed, keys[0] if keys else "")

    def decode(latent: Tensor) -> Tensor:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)  # the noise of the encoder's reconstruction, at every step
            if space == "w":
                return model.decoder.synthesize(latent, tool.lod, tool.blend)
            return model.decode(latent, tool.lod, tool.blend)

    best = best_error = None
    for step in range(steps + 1):
        output = decode(latent)
        error = tool.kind.error(output, target)
        with torch.no_grad():
            if best is None:
                best, best_error = output.detach().clone(), error.detach().clone()
            else:
                better = error < best_error
                best[better], best_error[better] = output.detach()[better], error.detach()[better]
        if step == steps:
            break
        optimizer.zero_grad(set_to_none=True)
        error.sum().backward()  # samples are independent: the sum gives each its own gradient
        optimizer.step()
    return best


def image_batches(files: InputImages, tool: ToolModel) -> Iterator[DataPart]:
    """This rank's share of the given image files, in batches."""
    mine = part(len(files.keys), tool.env.rank, tool.env.world_size)
    for start in range(mine.start, mine.stop, tool.options.batch_size):
        stop = min(start + tool.options.batch_size, mine.stop)
        yield DataPart(files.images[start:stop], files.keys[start:stop], 0)


def reconstruct(tool: ToolModel, batches: Iterator[DataPart], out: Path, *, refine_steps: int = 0,
                refine_space: str = "z", refine_lr: float = 0.03, notes: list[str] = (), grid_images: int = 32,
                html: bool = False) -> dict[str, Any]:
    ctx, env = tool.context, tool.env
    (out / "pairs").mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    shown: list[Tensor] = []
    seconds = {"encoder": 0.0, "refine": 0.0}
    unreadable = 0
    kind = tool.kind
    for data in batches:
        started = time.perf_counter()
        encoded = ctx.reconstruct(data.images, data.keys)
        seconds["encoder"] += time.perf_counter() - started
        outputs = [encoded]
        if refine_steps:
            started = time.perf_counter()
            outputs.append(refine_latents(tool, data.images, data.keys, refine_steps, space=refine_space,
                                          lr=refine_lr))
            seconds["refine"] += time.perf_counter() - started
        measured = [kind.scores(ctx, data.images, output) for output in outputs]
        pictures = [kind.shown_inputs(ctx, data.images), *(kind.pictures(output) for output in outputs)]
        for i, key in enumerate(data.keys):
            row = {"key": key, "file": f"pairs/{_file_name(key)}.png"}
            row |= {name: float(values[i]) for name, values in measured[0].items()}
            if refine_steps:
                row |= {f"refined_{name}": float(values[i]) for name, values in measured[1].items()}
            rows.append(row)
            pair = side_by_side(*(p[i] for p in pictures))
            save_image(pair, out / row["file"])
            if len(shown) < grid_images:
                shown.append(pair)
        unreadable += data.unreadable
    rows = gather_lists(rows, env.world_size)
    shown = gather_lists(shown, env.world_size)[:grid_images]
    totals = gather_lists([(seconds["encoder"], seconds["refine"], unreadable)], env.world_size)
    if not env.is_main:
        return {}
    if not rows:
        raise ToolError("no readable images to reconstruct")
    count, names = len(rows), measured_names(rows)
    summary: dict[str, Any] = {
        "model": str(tool.loaded.path), "kimg": tool.loaded.kimg, "resolution": tool.resolution,
        "images": count, "unreadable": sum(t[2] for t in totals), "notes": list(notes),
        **{name: float(np.mean([r[name] for r in rows])) for name in names},
        "encoder_seconds_per_image": sum(t[0] for t in totals) / count,
    }
    if refine_steps:
        summary |= {"refine_steps": refine_steps, "refine_space": refine_space, "refine_lr": refine_lr,
                    **{f"refined_{name}": float(np.mean([r[f"refined_{name}"] for r in rows])) for name in names},
                    "refine_seconds_per_image": sum(t[1] for t in totals) / count}
        change = summary[f"refined_{kind.primary}"] - summary[kind.primary]
        summary[f"{kind.primary}_gain"] = change if kind.higher_is_better else -change  # > 0: refinement helped
    summary["per_image"] = rows
    write_json(out / "reconstruct.json", summary)
    columns = 4 if refine_steps else 6
    save_grid(torch.stack(shown), columns, out / "grid.png")
    if html:
        layout = "input | encoder | refined" if refine_steps else "input | reconstruction"
        primary = kind.primary
        figures = [("grid.png", layout)] + [(r["file"], f"{r['key']}: {primary} {r[primary]:.4g}"
                                             + (f" -> {r['refined_' + primary]:.4g}" if refine_steps else ""))
                                            for r in rows]
        write_index(out, f"Reconstructions by {tool.loaded.path.name}", figures,
                    [f"{tool.size_text}, {tool.loaded.kimg:g} kimg; {layout}", *notes])
    return summary


def _file_name(key: str) -> str:
    """A sample key or image file name as a file name: folder separators replaced, an image suffix dropped."""
    name = key.replace("/", "_")
    stem, dot, suffix = name.rpartition(".")
    return stem if dot and f".{suffix.lower()}" in IMAGE_SUFFIXES else name



def measured_names(rows: list[dict[str, Any]]) -> list[str]:
    """The score names of the per-sample rows (what is neither the key, the file nor a refined score)."""
    return [name for name in rows[0] if name not in ("key", "file") and not name.startswith("refined_")]
