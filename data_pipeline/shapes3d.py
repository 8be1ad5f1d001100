"""Procedural furniture and vehicles for `--source shapes3d`: meshes assembled from boxes, cylinders, cones
and spheres (trimesh primitives) with seeded random proportions, y up, in units of about one.

Each class has its own silhouette (a chair's back, a table's flat top, a lamp's thin pole under a shade,
an airplane's wings, a car's wheels), and the proportions vary enough within a class that a generative
model has a distribution to learn, not five fixed shapes.
"""

from __future__ import annotations

import numpy as np

CLASSES = ("chair", "table", "lamp", "airplane", "car")


def _moved(mesh, x: float, y: float, z: float):
    mesh.apply_translation((x, y, z))
    return mesh


def _box(extents: tuple[float, float, float], at: tuple[float, float, float]):
    import trimesh

    return _moved(trimesh.creation.box(extents=extents), *at)


def _upright_cylinder(radius: float, height: float, at: tuple[float, float, float], sections: int = 24):
    """A cylinder along y centred at `at` (trimesh's cylinders run along z)."""
    import trimesh

    mesh = trimesh.creation.cylinder(radius=radius, height=height, sections=sections)
    mesh.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, (1, 0, 0)))
    return _moved(mesh, *at)


def _four_legs(side: float, height: float, width: float, depth: float) -> list:
    """Square legs from the floor to `height` at the corners of a width x depth top."""
    return [_box((side, height, side), (sx * (width / 2 - side), height / 2, sz * (depth / 2 - side)))
            for sx in (-1, 1) for sz in (-1, 1)]


def _chair(rng: np.random.Generator) -> list:
    width, depth = rng.uniform(0.8, 1.1), rng.uniform(0.8, 1.1)
    seat_h, seat_t = rng.uniform(0.8, 1.1), rng.uniform(0.06, 0.12)
    leg = rng.uniform(0.05, 0.09)
    back_h = rng.uniform(0.7, 1.2)
    parts = [_box((width, seat_t, depth), (0, seat_h, 0)),
             _box((width, back_h, seat_t), (0, seat_h + back_h / 2, -depth / 2 + seat_t / 2))]
    return parts + _four_legs(leg, seat_h, width, depth)


def _table(rng: np.random.Generator) -> list:
    width, depth = rng.uniform(1.4, 2.2), rng.uniform(0.8, 1.3)
    height, top_t = rng.uniform(0.8, 1.1), rng.uniform(0.05, 0.1)
    parts = [_box((width, top_t, depth), (0, height, 0))]
    if rng.random() < 0.3:  # a pedestal table
        parts.append(_upright_cylinder(rng.uniform(0.08, 0.15), height, (0, height / 2, 0)))
        parts.append(_upright_cylinder(rng.uniform(0.3, 0.45), 0.05, (0, 0.025, 0)))
        return parts
    leg = rng.uniform(0.06, 0.1)
    return parts + _four_legs(leg, height, width, depth)


def _lamp(rng: np.random.Generator) -> list:
    import trimesh

    base_r, pole_h = rng.uniform(0.25, 0.4), rng.uniform(1.2, 2.0)
    shade_r, shade_h = rng.uniform(0.3, 0.55), rng.uniform(0.3, 0.6)
    parts = [_upright_cylinder(base_r, 0.08, (0, 0.04, 0)),
             _upright_cylinder(rng.uniform(0.03, 0.05), pole_h, (0, pole_h / 2, 0), sections=12)]
    shade = trimesh.creation.cone(radius=shade_r, height=shade_h, sections=24)
    shade.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, (1, 0, 0)))  # apex up
    parts.append(_moved(shade, 0, pole_h - shade_h * 0.3, 0))
    return parts


def _airplane(rng: np.random.Generator) -> list:
    import trimesh

    length, radius = rng.uniform(2.4, 3.2), rng.uniform(0.14, 0.22)
    span, chord = rng.uniform(2.2, 3.2), rng.uniform(0.35, 0.6)
    body = trimesh.creation.capsule(height=length - 2 * radius, radius=radius, count=(12, 12))
    body.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, (0, 1, 0)))  # along x
    tail_x = -length / 2 + 0.25
    return [body,
            _box((chord, 0.04, span), (rng.uniform(-0.1, 0.3), 0, 0)),
            _box((0.3, 0.03, span * rng.uniform(0.3, 0.45)), (tail_x, 0.02, 0)),
            _box((0.35, rng.uniform(0.35, 0.6), 0.04), (tail_x, 0.3, 0))]


def _car(rng: np.random.Generator) -> list:
    import trimesh

    length, width = rng.uniform(2.2, 3.0), rng.uniform(1.0, 1.3)
    body_h, cabin_h = rng.uniform(0.35, 0.5), rng.uniform(0.3, 0.45)
    wheel_r = rng.uniform(0.2, 0.28)
    cabin_l = length * rng.uniform(0.4, 0.6)
    parts = [_box((length, body_h, width), (0, wheel_r + body_h / 2, 0)),
             _box((cabin_l, cabin_h, width * 0.9), (rng.uniform(-0.3, 0.1), wheel_r + body_h + cabin_h / 2, 0))]
    for sx in (-1, 1):
        for sz in (-1, 1):
            wheel = trimesh.creation.cylinder(radius=wheel_r, height=0.15, sections=20)  # axis z: across the car
            parts.append(_moved(wheel, sx * length * 0.33, wheel_r, sz * width / 2))
    return parts


_MAKERS = {"chair": _chair, "table": _table, "lamp": _lamp, "airplane": _airplane, "car": _car}


def make_shape(name: str, rng: np.random.Generator):
    """One random shape of class `name` as a single trimesh.Trimesh (its parts joined, not merged)."""
    import trimesh

    if name not in _MAKERS:
        raise ValueError(f"unknown shapes3d class {name!r}; known: {', '.join(CLASSES)}")
    return trimesh.util.concatenate(_MAKERS[name](rng))
