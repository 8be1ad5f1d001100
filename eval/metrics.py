"""The metric registry: each metric is one function of an `EvalContext` returning its results.

    fid    Frechet distance between features of generated images and of the reference split (the run
           config's eval protocol: how many of each; reals faded like the fakes in a snapshot taken
           mid-fade, or no FID at all there when the protocol says skip)
    kid    kernel (polynomial MMD^2) distance between the same two feature sets
    recon  MSE, PSNR, SSIM (and LPIPS when its weights are given) of test images against their
           reconstructions, reconstruction FID, and a grid of originals over reconstructions
    ood    importance-weighted log-likelihood and ELBO of the test split and of every OOD data set;
           AUROC, AUPRC and FPR at 95% TPR per OOD set; a histogram of the scores per set
    translation  (translation models, on a data set with identity and pose metadata: emoji-poses) swaps of
           held-out identities against their ground truth, the unchanged-image baseline, leakage probes
           and reconstruction (eval.translation); a swap grid of test images

Point clouds (models trained with data.kind points):

    points        the reference's voxel JSD (3 trials of 3x as many samples as reference shapes), and
                  MMD, COV and 1-NNA with Chamfer distance between as many samples as reference shapes
                  and the reference (the test split); a grid of rendered samples
    points_recon  mean Chamfer distance of test shapes to their reconstructions; a rendered grid

A metric applies to one kind of data (`kinds`); `all` asks for every metric of the model's kind (but
translation, which needs a translation model and a data set with poses: ask for it by name).

Results (plain numbers, strings and dicts) are complete on rank 0; other ranks take part in the work
and return what they know. Register a new metric with `@metric("name")`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sivae.core.distributed import gather_lists, gather_rows, part
from sivae.core.images import grid, save_png, to_uint8
from sivae.core.points import chamfer_distance, pairwise_chamfer, point_cloud_grid
from sivae.data_pipeline.samples import read_split
from sivae.eval.context import EvalContext, key_seed
from sivae.eval.likelihood import log_likelihood_estimates
from sivae.eval.measures import (
    auprc,
    auroc,
    feature_statistics,
    fpr_at_tpr,
    frechet_distance,
    kernel_inception_distance,
    mean_squared_error,
    psnr,
    ssim,
)
from sivae.eval.plots import score_histograms
from sivae.eval.point_measures import distance_set_metrics, voxel_jsd
from sivae.eval.translation import grid_sources, swap_grid, translation_scores
from sivae.models.translation import TranslationModel

Metric = Callable[[EvalContext], dict[str, Any]]
METRICS: dict[str, Metric] = {}
METRIC_KINDS: dict[str, tuple[str, ...]] = {}  # metric -> the data kinds (data.kind) it applies to
ALL = "all"  # every metric of the model's kind
BY_NAME_ONLY: set[str] = set()  # metrics `all` leaves out
JSD_TRIALS, JSD_SAMPLES_PER_REFERENCE = 3, 3  # the reference's protocol


def metric(name: str, kinds: tuple[str, ...] = ("images",), in_all: bool = True) -> Callable[[Metric], Metric]:
    """Register a metric for data of `kinds`; `in_all=False`: run only when asked by name (it needs a
    particular model family or data set, e.g. translation)."""
    def register(fn: Metric) -> Metric:
        METRICS[name] = fn
        METRIC_KINDS[name] = kinds
        if not in_all:
            BY_NAME_ONLY.add(name)
        return fn

    return register


def metrics_for(names: list[str], kind: str) -> tuple[list[str], list[str]]:
    """(the asked metrics that apply to data of `kind`, `all` expanded; those that do not)."""
    if ALL in names:
        names = [n for n in names if n != ALL] + [n for n in METRICS
                                                  if kind in METRIC_KINDS[n] and n not in BY_NAME_ONLY]
    names = list(dict.fromkeys(names))
    return [n for n in names if kind in METRIC_KINDS[n]], [n for n in names if kind not in METRIC_KINDS[n]]


def _reference_info(ref) -> dict[str, Any]:
    return {"cache_file": str(ref.path), "reused": ref.reused, "count": int(ref.features.shape[0])}


def _skipped(ctx: EvalContext) -> dict[str, Any] | None:
    """The result of FID/KID for a snapshot the protocol skips (said in the warnings and the report)."""
    if (reason := ctx.fid_skipped) is None:
        return None
    ctx.warn(f"FID/KID skipped: {ctx.loaded.path.name} was {reason}")
    return {"fid_skipped": reason}


@metric("fid")
def fid(ctx: EvalContext) -> dict[str, Any]:
    if (skipped := _skipped(ctx)) is not None:
        return skipped
    protocol = ctx.protocol
    reference = ctx.reference(protocol.reference_split, protocol.reference_count)
    generated = ctx.generated_features
    if not ctx.env.is_main:
        return {}
    if (path := ctx.output("samples.png")) is not None:
        save_png(grid(ctx.generate(0, ctx.options.grid_images).float() / 127.5 - 1.0, columns=8), path,
                 upscale_to=512)
    mu, sigma = feature_statistics(generated)
    return {
        "fid": frechet_distance(mu, sigma, reference.mu, reference.sigma),
        "fid_num_samples": int(generated.shape[0]),
        "fid_reference": {"split": protocol.reference_split, "blend": ctx.loaded.blend, **_reference_info(reference)},
    }


@metric("kid")
def kid(ctx: EvalContext) -> dict[str, Any]:
    if (skipped := _skipped(ctx)) is not None:
        return skipped
    opts, protocol = ctx.options, ctx.protocol
    reference = ctx.reference(protocol.reference_split, protocol.reference_count)
    generated = ctx.generated_features
    if not ctx.env.is_main:
        return {}
    mean, std = kernel_inception_distance(reference.features, generated, subsets=opts.kid_subsets,
                                          subset_size=opts.kid_subset_size, seed=opts.seed)
    return {"kid": mean, "kid_std": std, "kid_subset_size": min(opts.kid_subset_size, generated.shape[0],
                                                                 reference.features.shape[0])}


@metric("recon")
@torch.no_grad()
def recon(ctx: EvalContext) -> dict[str, Any]:
    opts = ctx.options
    lpips = torch.jit.load(str(opts.lpips), map_location=ctx.env.device).eval() if opts.lpips else None
    per_image: dict[str, list[np.ndarray]] = {"mse": [], "psnr": [], "ssim": [], "lpips": []}
    features, shown, unreadable = [np.zeros((0, ctx.extractor.dim), np.float32)], [], 0
    for data in ctx.data_parts(ctx.data_dir, opts.test_split, opts.test_count, desc="reconstructions"):
        originals = ctx.as_reals(data.images)  # at blend < 1: the faded image it saw
        reconstructions = to_uint8(ctx.reconstruct(data.images, data.keys)).cpu()
        x, y = originals.double() / 255.0, reconstructions.double() / 255.0
        per_image["mse"].append(mean_squared_error(x, y).numpy())
        per_image["psnr"].append(psnr(x, y).numpy())
        per_image["ssim"].append(ssim(x, y).numpy())
        if lpips is not None:
            unit = (originals.float() / 127.5 - 1.0, reconstructions.float() / 127.5 - 1.0)
            per_image["lpips"].append(lpips(*(t.to(ctx.env.device) for t in unit)).flatten().cpu().numpy())
        features.append(ctx.features(reconstructions))
        unreadable += data.unreadable
        if len(shown) < opts.grid_images:
            shown += list(zip(originals, reconstructions))[: opts.grid_images - len(shown)]
    # float64 everywhere: a rank with no images must offer the same dtype to the collective
    values = {k: gather_rows(np.concatenate([np.zeros(0), *v]).astype(np.float64), ctx.env)
              for k, v in per_image.items()}
    reconstruction_features = gather_rows(np.concatenate(features), ctx.env)
    reference = ctx.reference(opts.test_split, opts.test_count)  # the originals' features, cached
    unreadable = sum(gather_lists([unreadable], ctx.env.world_size))
    if not ctx.env.is_main:
        return {}
    if (path := ctx.output("reconstructions.png")) is not None and shown:
        columns = min(8, len(shown))
        rows = [torch.stack(row) for row in zip(*shown)]  # originals, then reconstructions
        blocks = [torch.cat([rows[0][i:i + columns], rows[1][i:i + columns]]) for i in range(0, len(shown), columns)]
        save_png(grid(torch.cat(blocks).float() / 127.5 - 1.0, columns=columns), path, upscale_to=512)
    count = int(values["mse"].shape[0])
    if count == 0:
        raise ValueError(f"no readable {opts.test_split} images in {ctx.data_dir}")
    out: dict[str, Any] = {name: float(v.mean()) for name, v in values.items() if v.size}
    out["recon_num_images"] = count
    out["recon_unreadable"] = unreadable
    if count >= 2:
        mu, sigma = feature_statistics(reconstruction_features)
        out["rfid"] = frechet_distance(mu, sigma, reference.mu, reference.sigma)
    return out


@torch.no_grad()
def likelihood_scores(ctx: EvalContext, data_dir: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(IW log-likelihood, ELBO) per readable test image of `data_dir`, all ranks' in order (every rank)."""
    opts, model, loaded = ctx.options, ctx.model, ctx.loaded
    reconstruction = loaded.config.reconstruction
    if reconstruction != "mse":
        raise ValueError(f"log-likelihoods need the Gaussian observation model (reconstruction 'mse'); "
                         f"{loaded.path} was trained with {reconstruction!r}")
    device = ctx.env.device

    def decode(z: torch.Tensor) -> torch.Tensor:
        return model.decode(z, loaded.lod, loaded.blend)

    iw, elbo = [np.zeros(0)], [np.zeros(0)]
    for data in ctx.data_parts(data_dir, opts.test_split, opts.test_count, desc=f"log-likelihood ({name})"):
        noise = torch.stack([
            torch.randn(opts.iw_samples, model.latent_dim, generator=torch.Generator().manual_seed(key_seed(
                opts.seed, key)))
            for key in data.keys
        ])  # fmt: skip
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(key_seed(opts.seed, data.keys[0]))
            batch_iw, batch_elbo = log_likelihood_estimates(
                ctx.as_model_input(data.images), ctx.encode, decode, noise.to(device),
                beta_rec=loaded.config.beta_rec, decode_batch=opts.batch_size)
        iw.append(batch_iw.cpu().numpy())
        elbo.append(batch_elbo.cpu().numpy())
    return gather_rows(np.concatenate(iw), ctx.env), gather_rows(np.concatenate(elbo), ctx.env)


def unique_names(paths: list[Path]) -> list[str]:
    """Short distinct names for data set directories: the last path component, or as many of the last
    components as it takes to tell them apart (data/emoji/set, data/digits/set -> emoji/set, digits/set)."""
    parts = [Path(p).resolve().parts for p in paths]
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [f"{name}#{i}" for i, name in enumerate(names)]  # the same directory given twice


@metric("ood")
def ood(ctx: EvalContext) -> dict[str, Any]:
    opts = ctx.options
    names = unique_names([ctx.data_dir, *opts.ood_data])
    scores = {names[0]: likelihood_scores(ctx, ctx.data_dir, names[0])}
    for name, path in zip(names[1:], opts.ood_data):
        scores[name] = likelihood_scores(ctx, Path(path), name)
    if not ctx.env.is_main:
        return {}
    inside = scores[names[0]]
    if inside[0].size == 0:
        raise ValueError(f"no readable {opts.test_split} images in {ctx.data_dir}")
    per_set: dict[str, dict[str, Any]] = {}
    for name in names:
        iw, elbo = scores[name]
        entry: dict[str, Any] = {"count": int(iw.size), "log_likelihood": float(iw.mean()) if iw.size else None,
                                 "elbo": float(elbo.mean()) if elbo.size else None}
        if name != names[0] and iw.size:
            entry |= {
                "auroc": auroc(inside[0], iw), "auprc": auprc(inside[0], iw), "fpr95": fpr_at_tpr(inside[0], iw),
                "auroc_elbo": auroc(inside[1], elbo), "auprc_elbo": auprc(inside[1], elbo),
                "fpr95_elbo": fpr_at_tpr(inside[1], elbo),
            }  # fmt: skip
        per_set[name] = entry
    if (path := ctx.output("ood_histogram.png")) is not None:
        score_histograms(scores, path, in_distribution=names[0], data_dim=ctx.model.input_dim(ctx.loaded.lod),
                         iw_samples=opts.iw_samples)
    out: dict[str, Any] = {
        "log_likelihood": per_set[names[0]]["log_likelihood"],
        "elbo": per_set[names[0]]["elbo"],
        "iw_samples": opts.iw_samples,
        "ood": per_set,
    }
    scored = [per_set[n] for n in names[1:] if "auroc" in per_set[n]]
    if scored:  # over several OOD sets: the mean, each set's own figures are under "ood"
        for key in ("auroc", "auprc", "fpr95", "auroc_elbo"):
            out[key] = float(np.mean([entry[key] for entry in scored]))
    else:
        ctx.warn("ood: no OOD data set given (--ood-data): only the test split's likelihoods are reported")
    return out


@metric("translation", in_all=False)
@torch.no_grad()
def translation(ctx: EvalContext) -> dict[str, Any]:
    """Rank 0 alone: the test split of a translation data set is small (emoji-poses: 1160 images)."""
    if not isinstance(ctx.model, TranslationModel):
        raise ValueError(f"the translation metric needs a translation model, not {type(ctx.model).__name__}")
    if not ctx.env.is_main:
        return {}
    samples = read_split(ctx.data_dir, ctx.options.test_split, ctx.resolution)
    scores = translation_scores(ctx.model, samples, ctx.features, seed=ctx.options.seed)
    if (path := ctx.output("swaps.png")) is not None:
        rows, columns = grid_sources(samples.meta)
        shown = ctx.as_model_input(torch.from_numpy(samples.images).permute(0, 3, 1, 2))
        save_png(swap_grid(ctx.model, shown[rows], shown[columns]), path, upscale_to=512)
    return {"translation": scores, "translation_unreadable": samples.skipped}


# ---------------------------------------------------------------------------------------------
# Point clouds


def _test_clouds(ctx: EvalContext, desc: str) -> tuple[np.ndarray, int]:
    """The readable test clouds (all ranks', in order; every rank) and how many could not be read."""
    opts = ctx.options
    rows, unreadable = [np.zeros((0, ctx.resolution, 3), np.float32)], 0
    for data in ctx.data_parts(ctx.data_dir, opts.test_split, opts.test_count, desc=desc):
        rows.append(data.images.numpy())
        unreadable += data.unreadable
    return gather_rows(np.concatenate(rows), ctx.env), sum(gather_lists([unreadable], ctx.env.world_size))


def _generated_clouds(ctx: EvalContext, count: int, stream: int) -> np.ndarray:
    """`count` generated clouds of an independent set `stream` (every rank; the same at any world size)."""
    size = ctx.options.batch_size
    rows = [np.zeros((0, ctx.resolution, 3), np.float32)]
    for chunk in ctx.bar(part(-(-count // size), ctx.env.rank, ctx.env.world_size), desc=f"samples ({stream})"):
        rows.append(ctx.decoded(chunk, min(size, count - chunk * size), stream).float().cpu().numpy())
    return gather_rows(np.concatenate(rows), ctx.env)


@metric("points", kinds=("points",))
@torch.no_grad()
def point_generation(ctx: EvalContext) -> dict[str, Any]:
    reference, unreadable = _test_clouds(ctx, "reference shapes")
    count = len(reference)
    if count < 2:
        raise ValueError(f"points: {count} readable {ctx.options.test_split} shapes in {ctx.data_dir}; need >= 2")
    trials = [_generated_clouds(ctx, JSD_SAMPLES_PER_REFERENCE * count, stream) for stream in range(JSD_TRIALS)]
    if not ctx.env.is_main:
        return {}
    if (path := ctx.output("samples.png")) is not None:
        save_png(point_cloud_grid(trials[0][: ctx.options.grid_images], columns=8), path)
    jsd = [voxel_jsd(generated, reference) for generated in trials]
    device = ctx.env.device
    samples, ref = torch.from_numpy(trials[0][:count]).to(device), torch.from_numpy(reference).to(device)
    sets = distance_set_metrics(pairwise_chamfer(samples, ref), pairwise_chamfer(samples), pairwise_chamfer(ref))
    return {"jsd": float(np.mean(jsd)), "jsd_std": float(np.std(jsd)), "mmd_cd": sets["mmd"],
            "cov_cd": sets["cov"], "1nna_cd": sets["1nna"], "points_reference_count": count,
            "points_reference_unreadable": unreadable, "points_jsd_samples": JSD_SAMPLES_PER_REFERENCE * count,
            "points_jsd_trials": JSD_TRIALS}


@metric("points_recon", kinds=("points",))
@torch.no_grad()
def point_reconstruction(ctx: EvalContext) -> dict[str, Any]:
    opts = ctx.options
    distances, shown, unreadable = [np.zeros(0)], [], 0
    wanted = opts.grid_images // 2
    # shown: shapes evenly spaced over the split (its shards hold a class after another)
    count = ctx.split_count(ctx.manifest(ctx.data_dir, opts.test_split), opts.test_split, opts.test_count)
    stride, position = max(1, count // max(1, wanted)), 0
    for data in ctx.data_parts(ctx.data_dir, opts.test_split, opts.test_count, desc="reconstructions"):
        x = ctx.as_model_input(data.images)
        reconstructions = ctx.reconstruct(data.images, data.keys)
        distances.append(chamfer_distance(x, reconstructions).double().cpu().numpy())
        unreadable += data.unreadable
        for pair in zip(x.cpu(), reconstructions.cpu()):
            if position % stride == 0 and len(shown) < wanted:
                shown.append(pair)
            position += 1
    values = gather_rows(np.concatenate(distances), ctx.env)
    unreadable = sum(gather_lists([unreadable], ctx.env.world_size))
    if not ctx.env.is_main:
        return {}
    if values.size == 0:
        raise ValueError(f"no readable {opts.test_split} shapes in {ctx.data_dir}")
    if (path := ctx.output("reconstructions.png")) is not None and shown:
        columns = min(8, len(shown))
        originals, rebuilt = (torch.stack(row) for row in zip(*shown))
        rows = [torch.cat([originals[i:i + columns], rebuilt[i:i + columns]]) for i in range(0, len(shown), columns)]
        save_png(point_cloud_grid(torch.cat(rows), columns=columns), path)
    return {"recon_cd": float(values.mean()), "recon_num_shapes": int(values.size), "recon_unreadable": unreadable}
