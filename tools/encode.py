"""`sivae encode`: the posterior (mu, logvar) of every sample of a split, with its key, in one .npz."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from sivae.core.distributed import gather_lists, gather_rows
from sivae.core.fileio import atomic_write_bytes
from sivae.tools.session import ToolError, ToolModel


def encode_split(tool: ToolModel, data_dir: Path, split: str, out: Path) -> dict[str, Any]:
    """Encode every readable sample of `split` (this rank its share); rank 0 writes `out`, rows in manifest order."""
    ctx, latent = tool.context, tool.model.latent_dim
    mus, logvars, keys, unreadable = [np.zeros((0, latent), np.float32)], [np.zeros((0, latent), np.float32)], [], 0
    for data in ctx.data_parts(data_dir, split, None, desc=f"encode ({split})"):
        mu, logvar = tool.encode(data.images)
        mus.append(mu.float().cpu().numpy())
        logvars.append(logvar.float().cpu().numpy())
        keys += data.keys
        unreadable += data.unreadable
    mu, logvar = gather_rows(np.concatenate(mus), tool.env), gather_rows(np.concatenate(logvars), tool.env)
    keys = gather_lists(keys, tool.env.world_size)
    unreadable = sum(gather_lists([unreadable], tool.env.world_size))
    if not tool.env.is_main:
        return {}
    if not keys:
        raise ToolError(f"{data_dir}: no readable {split} samples to encode")
    buffer = io.BytesIO()
    np.savez(buffer, keys=np.array(keys), mu=mu, logvar=logvar, resolution=tool.resolution, kimg=tool.loaded.kimg)
    atomic_write_bytes(out, buffer.getvalue())
    return {"samples": len(keys), "latent_dim": latent, "unreadable": unreadable, "out": str(out)}
