"""Point clouds in the data pipeline: meshes sampled on their surface, normalisation, shard encoding, the
procedural `shapes3d` set, and the sources `shapes3d` and `points:DIR`.

A shape becomes N points sampled uniformly by area on its surface (trimesh), then is normalised as the
reference's data is: centred on its bounding box and scaled so that its farthest point lies on the sphere
of radius 0.5 (the region the reference's voxel JSD covers). Point arrays given as files (.npy, .npz)
are resampled to N points and normalised the same way. A shard member is KEY.npy, float32 [N, 3].
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from sivae.data_pipeline.errors import DataError
from sivae.data_pipeline.images import ImageProblem
from sivae.data_pipeline.source_base import Source, SourceItem, tar_key, unique_items

MESH_SUFFIXES = (".ply", ".off", ".obj")
ARRAY_SUFFIXES = (".npy", ".npz")
RADIUS = 0.5  # every normalised cloud lies in the sphere of this radius around the origin
DEFAULT_POINTS = 2048


class PointsProblem(ImageProblem):
    """A shape that cannot be used (an unreadable or empty mesh, a malformed array); the build skips it."""


def shape_seed(seed: int, key: str) -> int:
    """The sampling seed of one shape: fixed by the build seed and the shape's key, whatever the worker."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{key}".encode()).digest()[:8], "little")


def normalise(points: np.ndarray) -> np.ndarray:
    """Centred on the bounding box, scaled so the farthest point is at RADIUS; float32 [N, 3]."""
    points = np.asarray(points, np.float64)
    centred = points - (points.min(axis=0) + points.max(axis=0)) / 2.0
    extent = np.sqrt((centred**2).sum(axis=1)).max()
    if not np.isfinite(extent) or extent <= 0:
        raise PointsProblem("has no extent (all points coincide, or non-finite coordinates)")
    return (centred * (RADIUS / extent)).astype(np.float32)


def sample_surface(mesh, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` points uniformly by area on a trimesh.Trimesh and the face each lies on (trimesh's sampler)."""
    import trimesh

    if len(mesh.faces) == 0 or not mesh.area > 0:
        raise PointsProblem("has no faces with area")
    points, faces = trimesh.sample.sample_surface(mesh, count, seed=seed)
    return np.asarray(points, np.float64), np.asarray(faces, np.int64)


def resample(points: np.ndarray, count: int, seed: int) -> np.ndarray:
    """`count` of the given points: a random subset, or all of them and random repeats when there are fewer."""
    rng = np.random.default_rng(seed)
    if len(points) >= count:
        return points[np.sort(rng.choice(len(points), count, replace=False))]
    return np.concatenate([points, points[rng.integers(0, len(points), count - len(points))]])


def encode_points(points: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(points, np.float32), allow_pickle=False)
    return buf.getvalue()


def decode_points(data: bytes, encoding: str, count: int) -> np.ndarray:
    """Bytes written by `encode_points` -> float32 [count, 3], or PointsProblem if they are not that."""
    try:
        points = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise PointsProblem(f"is not a .npy array: {exc}") from None
    if points.dtype != np.float32 or points.shape != (count, 3):
        raise PointsProblem(f"is a {points.dtype} array of shape {points.shape}, expected float32 ({count}, 3)")
    return points


# ---------------------------------------------------------------------------------------------
# Sources


class PointSource(Source):
    """A source of shapes: `load_points` gives a shape's normalised cloud (load() is for image sources)."""

    modality: ClassVar[str] = "points"
    classes: list[str]  # class names, indexed by the items' labels

    def load_points(self, ref: Any, count: int, seed: int) -> np.ndarray:
        """The shape's `count` normalised points; PointsProblem or OSError when it cannot be read."""
        raise NotImplementedError

    def load(self, ref: Any) -> np.ndarray:
        raise TypeError(f"{self.spec} holds point clouds, not images")


@dataclass
class Shapes3DSource(PointSource):
    """Procedural shapes of five classes (sivae.data_pipeline.shapes3d), `per_class` of each, seeded by key."""

    per_class: int = 300
    native_size: int | None = None

    @property
    def spec(self) -> str:
        return f"shapes3d:{self.per_class}"

    @property
    def classes(self) -> list[str]:
        from sivae.data_pipeline.shapes3d import CLASSES

        return list(CLASSES)

    def items(self) -> list[SourceItem]:
        return [SourceItem(key=f"{name}_{i:05d}", ref=(name, i), label=label)
                for label, name in enumerate(self.classes) for i in range(self.per_class)]

    def load_points(self, ref: tuple[str, int], count: int, seed: int) -> np.ndarray:
        from sivae.data_pipeline.shapes3d import make_shape

        name, index = ref
        mesh = make_shape(name, np.random.default_rng([seed, self.classes.index(name), index]))
        return normalise(sample_surface(mesh, count, seed)[0])


def _load_array(path: Path) -> np.ndarray:
    try:
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                names = archive.files
                if not names:
                    raise PointsProblem("is an empty .npz archive")
                points = archive["points"] if "points" in names else archive[names[0]]
        else:
            points = np.load(path, allow_pickle=False)
    except PointsProblem:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise PointsProblem(f"cannot be read as a numpy array: {exc}") from None
    if points.ndim != 2 or points.shape[1] != 3 or len(points) == 0 or not np.issubdtype(points.dtype, np.number):
        raise PointsProblem(f"holds an array of shape {points.shape} ({points.dtype}), expected numbers [N, 3]")
    return points.astype(np.float64)


def load_mesh(path: Path):
    """The file as one trimesh.Trimesh (a scene's parts joined); PointsProblem when it is not a usable mesh."""
    import trimesh

    try:
        mesh = trimesh.load(path, force="mesh", process=False)
    except Exception as exc:  # trimesh's loaders raise many types for broken files
        raise PointsProblem(f"cannot be read as a mesh: {type(exc).__name__}: {exc}") from None
    if not isinstance(mesh, trimesh.Trimesh):
        raise PointsProblem(f"is not a triangle mesh (trimesh read a {type(mesh).__name__})")
    return mesh


@dataclass
class PointsFolderSource(PointSource):
    """Shapes under DIR: meshes (.ply, .off, .obj, sampled on the surface) and point arrays (.npy, .npz
    [N, 3]); the class of a file is the name of its top-level folder (files directly in DIR: no class)."""

    path: Path
    native_size: int | None = None

    @property
    def spec(self) -> str:
        return f"points:{self.path}"

    def _files(self) -> list[str]:
        suffixes = MESH_SUFFIXES + ARRAY_SUFFIXES
        return sorted(
            p.relative_to(self.path).as_posix() for p in self.path.rglob("*")
            if p.suffix.lower() in suffixes and p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(self.path).parts)
        )

    @property
    def classes(self) -> list[str]:
        return sorted({rel.split("/")[0] for rel in self._files() if "/" in rel})

    def items(self) -> list[SourceItem]:
        if not self.path.is_dir():
            raise DataError("not a folder", self.path)
        files, classes = self._files(), self.classes
        labelled = bool(classes)
        if labelled and any("/" not in rel for rel in files):
            loose = next(rel for rel in files if "/" not in rel)
            raise DataError(f"{loose} is not in a class folder: put every shape in a folder named by its class "
                            "(or none of them)", self.path)
        return unique_items([SourceItem(key=tar_key(rel), ref=rel,
                                        label=classes.index(rel.split("/")[0]) if labelled else None)
                             for rel in files], self.spec, what="shapes")

    def load_points(self, ref: str, count: int, seed: int) -> np.ndarray:
        path = self.path / ref
        if path.suffix.lower() in ARRAY_SUFFIXES:
            return normalise(resample(_load_array(path), count, seed))
        mesh = load_mesh(path)
        if len(mesh.faces) == 0 and len(mesh.vertices):  # a .ply of points only: its vertices are the cloud
            return normalise(resample(np.asarray(mesh.vertices, np.float64), count, seed))
        return normalise(sample_surface(mesh, count, seed)[0])

    def where(self, item: SourceItem) -> str:
        return str(self.path / item.ref)


def parse_point_source(kind: str, arg: str) -> PointSource | None:
    """`shapes3d`, `shapes3d:PER_CLASS` or `points:DIR`; None for other kinds."""
    if kind == "shapes3d":
        if arg and not (arg.isdigit() and int(arg) > 0):
            raise DataError(f"shapes3d:{arg}: the argument is the number of shapes per class, a positive integer")
        return Shapes3DSource(int(arg)) if arg else Shapes3DSource()
    if kind == "points" and arg:
        path = Path(arg).expanduser()
        if not path.exists():
            raise DataError(f"source points: {path} does not exist")
        return PointsFolderSource(path)
    return None
