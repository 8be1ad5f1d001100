"""Image sources: each lists its samples (key, split, label) and loads one sample's image.

A source is a small picklable object (paths, not open files) so build workers can load samples
in parallel; the data-holding sources (digits, CIFAR-10, SVHN) put each image array in its item.
`parse_source("folder:PATH")` turns the command-line form into a source.
"""

from __future__ import annotations

import functools
import importlib
import io
import os
import pickle
import shutil
import subprocess
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, ClassVar

import numpy as np
from PIL import Image

from sivae.data_pipeline.errors import DataError
from sivae.data_pipeline.images import ImageProblem, to_rgb
from sivae.data_pipeline.source_base import Source, SourceItem, tar_key, unique_items

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
DEFAULT_EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
EMOJI_FONT_PACKAGE = "fonts-noto-color-emoji"
# Noto Color Emoji holds bitmaps of one size: 109 px type gives its 136 x 128 glyphs, each drawn in
# the centred 128 x 128 square (the 4 columns either side are empty).
_EMOJI_TYPE_SIZE, _EMOJI_CANVAS, _EMOJI_SIDE = 109, (136, 128), 128


@dataclass
class _PathSource(Source):
    """A source read from one path; its command-line form is KIND:PATH."""

    path: Path
    kind: ClassVar[str]

    @property
    def spec(self) -> str:
        return f"{self.kind}:{self.path}"


# sources in modules of their own that build on this one: kind -> "module:function of the text after KIND:"
SOURCE_MODULES = {"emoji-poses": "sivae.data_pipeline.poses:parse_poses_spec"}


def parse_source(spec: str) -> Source:
    """`emoji`, `emoji:FONT`, `emoji-poses[:OPTIONS]`, `digits`, `folder:PATH`, `zip:PATH`, `cifar10:PATH`,
    `svhn:PATH`, or the point clouds' `shapes3d[:PER_CLASS]` and `points:DIR` (sivae.data_pipeline.points)."""
    from sivae.data_pipeline.points import parse_point_source

    kind, _, arg = spec.partition(":")
    if kind in SOURCE_MODULES:
        module, name = SOURCE_MODULES[kind].split(":")
        return getattr(importlib.import_module(module), name)(arg)
    if (points := parse_point_source(kind, arg)) is not None:
        return points
    if kind == "emoji":
        return EmojiSource(Path(arg) if arg else DEFAULT_EMOJI_FONT)
    if kind == "digits" and not arg:
        return DigitsSource()
    makers = {cls.kind: cls for cls in (FolderSource, ZipSource, Cifar10Source, SvhnSource)}
    if kind in makers and arg:
        path = Path(arg).expanduser()
        if not path.exists():
            raise DataError(f"source {kind}: {path} does not exist")
        return makers[kind](path)
    raise DataError(
        f"unknown source {spec!r}: use emoji, emoji-poses, digits, folder:PATH, zip:PATH, cifar10:PATH, svhn:PATH, "
        "shapes3d or points:DIR"
    )


# ---------------------------------------------------------------------------------------------
# Emoji (the default data set: no download)


def ensure_emoji_font(font: Path, *, can_install: bool | None = None) -> Path:
    """The font file; the default one is installed with apt when missing and this process may."""
    if font.is_file():
        return font
    if font != DEFAULT_EMOJI_FONT:
        raise DataError("emoji font file not found", font)
    if can_install is None:
        can_install = os.geteuid() == 0 and shutil.which("apt-get") is not None
    how = f"install it with `sudo apt-get install -y --no-install-recommends {EMOJI_FONT_PACKAGE}`"
    if not can_install:
        raise DataError(f"emoji font not found: {how} (or give another: --source emoji:FONT.ttf)", font)
    print(f"emoji font missing: installing {EMOJI_FONT_PACKAGE} with apt-get")
    install = ["apt-get", "install", "-y", "--no-install-recommends", EMOJI_FONT_PACKAGE]
    if subprocess.run(install).returncode != 0:  # the package lists may be empty: update and retry once
        subprocess.run(["apt-get", "update"], check=False)
        subprocess.run(install, check=False)
    if not font.is_file():
        raise DataError(f"emoji font still missing after apt-get: {how}", font)
    return font


@functools.cache
def _emoji_font(path: str):  # -> ImageFont.FreeTypeFont, one per process
    from PIL import ImageFont

    return ImageFont.truetype(path, _EMOJI_TYPE_SIZE, layout_engine=ImageFont.Layout.BASIC)


@dataclass
class EmojiSource(Source):
    """Every single-codepoint colour glyph of an emoji font, composited on white, 128 x 128."""

    font: Path = DEFAULT_EMOJI_FONT
    native_size: int | None = _EMOJI_SIDE

    @property
    def spec(self) -> str:
        return "emoji" if self.font == DEFAULT_EMOJI_FONT else f"emoji:{self.font}"

    def items(self) -> list[SourceItem]:
        from fontTools.ttLib import TTFont

        font_path = ensure_emoji_font(self.font)
        try:
            codepoints = sorted(TTFont(font_path, lazy=True).getBestCmap())
        except Exception as exc:
            raise DataError(f"cannot read the font: {exc}", font_path) from None
        font = _emoji_font(str(font_path))
        out = []
        for cp in codepoints:
            left, top, right, bottom = font.getbbox(chr(cp))
            if right > left and bottom > top:  # spaces, joiners and selectors draw nothing
                out.append(SourceItem(key=f"emoji_u{cp:04x}", ref=cp))
        return unique_items(out, self.spec)

    def load(self, ref: int) -> np.ndarray:
        from PIL import ImageDraw

        glyph = Image.new("RGBA", _EMOJI_CANVAS, (0, 0, 0, 0))
        ImageDraw.Draw(glyph).text((0, 0), chr(ref), font=_emoji_font(str(self.font)), embedded_color=True)
        if glyph.getchannel("A").getbbox() is None:
            raise ImageProblem("renders as an empty glyph")
        margin = (_EMOJI_CANVAS[0] - _EMOJI_SIDE) // 2
        return to_rgb(glyph)[:, margin : margin + _EMOJI_SIDE]

    def where(self, item: SourceItem) -> str:
        return f"{self.font} glyph U+{item.ref:04X}"


# ---------------------------------------------------------------------------------------------
# Array sources: the images come in memory


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=-1)


@dataclass
class DigitsSource(Source):
    """scikit-learn's 1797 real 8 x 8 handwritten digits (levels 0-16 scaled to 0-255), white on black."""

    spec: str = "digits"
    native_size: int | None = 8

    def items(self) -> list[SourceItem]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
        return [
            SourceItem(key=f"digit_{i:04d}", ref=_gray_to_rgb(img), label=int(y))
            for i, (img, y) in enumerate(zip(images, digits.target))
        ]

    def load(self, ref: np.ndarray) -> np.ndarray:
        return ref


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays, nothing else: a data file cannot run code."""

    _ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # protocol-2 pickles spell bytes this way
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        if name == "_reconstruct":  # numpy 2 moved numpy.core to numpy._core: take this numpy's own
            return np.ndarray(0).__reduce__()[0]
        return super().find_class(module, name)


def _load_cifar_batch(data: bytes, where: str) -> tuple[np.ndarray, list[int]]:
    try:
        batch = _NumpyOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
        rows = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = [int(v) for v in batch[b"labels"]]
        images = rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # channel planes -> HWC
    except Exception as exc:
        raise DataError(f"not a CIFAR-10 python batch: {exc}", where) from None
    if len(labels) != len(images):
        raise DataError(f"{len(images)} images but {len(labels)} labels", where)
    return images, labels


@dataclass
class Cifar10Source(_PathSource):
    """CIFAR-10, python version: `cifar-10-python.tar.gz` or its extracted `cifar-10-batches-py` folder.
    Keeps the official split: data_batch_1..5 -> train, test_batch -> test."""

    kind: ClassVar[str] = "cifar10"
    native_size: int | None = 32

    BATCHES = (("train", [f"data_batch_{i}" for i in range(1, 6)]), ("test", ["test_batch"]))

    def _read_batches(self) -> dict[str, bytes]:
        wanted = {name for _, names in self.BATCHES for name in names}
        found: dict[str, bytes] = {}
        if self.path.is_dir():
            for name in wanted:
                for candidate in (self.path / name, self.path / "cifar-10-batches-py" / name):
                    if candidate.is_file():
                        found[name] = candidate.read_bytes()
                        break
        else:
            try:
                with tarfile.open(self.path) as tar:
                    for member in tar.getmembers():
                        if member.isfile() and Path(member.name).name in wanted:
                            found[Path(member.name).name] = tar.extractfile(member).read()
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise DataError(f"cannot read the CIFAR-10 archive: {exc}", self.path) from None
        missing = sorted(wanted - set(found))
        if missing:
            raise DataError(f"CIFAR-10 batches missing: {', '.join(missing)}", self.path)
        return found

    def items(self) -> list[SourceItem]:
        raw = self._read_batches()
        out = []
        for split, names in self.BATCHES:
            index = 0
            for name in names:
                images, labels = _load_cifar_batch(raw[name], f"{self.path} {name}")
                for img, label in zip(images, labels):
                    out.append(SourceItem(key=f"cifar10_{split}_{index:05d}", ref=img, split=split, label=label))
                    index += 1
        return out

    def load(self, ref: np.ndarray) -> np.ndarray:
        return ref


@dataclass
class SvhnSource(_PathSource):
    """SVHN cropped digits (.mat): a folder with train_32x32.mat and/or test_32x32.mat (their split kept),
    or one .mat file (split by --test-fraction). Label 10 means the digit 0 and becomes 0."""

    kind: ClassVar[str] = "svhn"
    native_size: int | None = 32

    SPLITS = ("train", "test")

    def _read(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        from scipy.io import loadmat

        try:
            mat = loadmat(path)
            images = np.asarray(mat["X"], dtype=np.uint8).transpose(3, 0, 1, 2)  # (32, 32, 3, N) -> N HWC
            labels = np.asarray(mat["y"]).reshape(-1).astype(np.int64) % 10
        except Exception as exc:
            raise DataError(f"not an SVHN .mat file with X (32x32x3xN) and y: {exc}", path) from None
        if images.shape[1:] != (32, 32, 3) or len(labels) != len(images):
            raise DataError(f"X has shape {images.shape[1:]} per image and {len(labels)} labels", path)
        return images, labels

    def items(self) -> list[SourceItem]:
        if self.path.is_dir():
            files = {s: self.path / f"{s}_32x32.mat" for s in self.SPLITS if (self.path / f"{s}_32x32.mat").is_file()}
            if not files:
                raise DataError("no train_32x32.mat or test_32x32.mat in this folder", self.path)
        else:
            files = {None: self.path}
        out = []
        for split, path in files.items():
            images, labels = self._read(path)
            prefix = f"svhn_{split}" if split else "svhn"
            out += [
                SourceItem(key=f"{prefix}_{i:06d}", ref=img, split=split, label=int(y))
                for i, (img, y) in enumerate(zip(images, labels))
            ]
        return out

    def load(self, ref: np.ndarray) -> np.ndarray:
        return ref


# ---------------------------------------------------------------------------------------------
# Files of any size: a folder tree or a zip archive


def _open_file(file: bytes | Path | IO[bytes], header_only: bool) -> np.ndarray | tuple[int, int]:
    """The decoded RGB image, or with `header_only` its (width, height) from the header alone."""
    try:
        with Image.open(io.BytesIO(file) if isinstance(file, bytes) else file) as image:
            if header_only:
                return image.size
            image.load()
            return to_rgb(image)
    except ImageProblem:
        raise
    except Exception as exc:  # PIL raises many types for broken files
        raise ImageProblem(f"cannot be decoded: {exc}") from None


@dataclass
class FolderSource(_PathSource):
    """Every image file under a folder (recursively, hidden ones skipped), keyed by its relative path."""

    kind: ClassVar[str] = "folder"

    def items(self) -> list[SourceItem]:
        if not self.path.is_dir():
            raise DataError("not a folder", self.path)
        files = sorted(
            p.relative_to(self.path).as_posix()
            for p in self.path.rglob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(self.path).parts)
        )
        return unique_items([SourceItem(key=tar_key(rel), ref=rel) for rel in files], self.spec)

    def load(self, ref: str) -> np.ndarray:
        return _open_file(self.path / ref, header_only=False)

    def size(self, ref: str) -> tuple[int, int]:
        return _open_file(self.path / ref, header_only=True)

    def where(self, item: SourceItem) -> str:
        return str(self.path / item.ref)


@functools.cache
def _open_zip(path: str) -> zipfile.ZipFile:  # one handle per process
    return zipfile.ZipFile(path)


@dataclass
class ZipSource(_PathSource):
    """Every image file inside a zip archive (macOS resource forks skipped), keyed by its member name."""

    kind: ClassVar[str] = "zip"

    def items(self) -> list[SourceItem]:
        try:
            names = _open_zip(str(self.path)).namelist()
        except (zipfile.BadZipFile, OSError) as exc:
            raise DataError(f"cannot read the zip archive: {exc}", self.path) from None
        members = sorted(
            n for n in names
            if n.lower().endswith(IMAGE_SUFFIXES) and not n.endswith("/")
            and not any(part.startswith(".") or part == "__MACOSX" for part in n.split("/"))
        )
        return unique_items([SourceItem(key=tar_key(name), ref=name) for name in members], self.spec)

    def load(self, ref: str) -> np.ndarray:
        return _open_file(self._read(ref), header_only=False)

    def size(self, ref: str) -> tuple[int, int]:
        try:
            with _open_zip(str(self.path)).open(ref) as member:  # PIL reads the header, not the whole member
                return _open_file(member, header_only=True)
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, KeyError) as exc:
            raise ImageProblem(f"cannot be read from the archive: {exc}") from None

    def _read(self, ref: str) -> bytes:
        try:
            return _open_zip(str(self.path)).read(ref)
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, KeyError) as exc:
            raise ImageProblem(f"cannot be read from the archive: {exc}") from None

    def where(self, item: SourceItem) -> str:
        return f"{self.path}:{item.ref}"
