"""Pure-NumPy ray caster for the procedural "synthetic scenes" dataset (docs/data.md §3).

A sample is a pure function of ``(dataset_seed, split, index)``: :func:`sample_scene` draws every scene
parameter up front from its own generator (§3.2-3.3), :func:`render` casts the rays (§3.4-3.8), and
:func:`mirror_scene` mirrors a scene in x for the flip-equivariance test (§3.13). 3-vectors are tuples of
component arrays and all vector algebra is written out by component, so no result depends on BLAS.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

GENERATOR_VERSION = 1
CLASS_NAMES = ("floor", "wall", "ceiling", "rug", "picture", "box", "sphere", "cylinder")
FLOOR, WALL, CEILING, RUG, PICTURE, BOX, SPHERE, CYLINDER = range(8)
IGNORE_LABEL = -1
FOCAL_RATIO = 0.81
EPS = 1e-4
SURFACE_OFFSET = 1e-3
EMITTER_BASELINE = 0.075
MAX_RANGE = 10.0
LIGHT_INTENSITY = 6.0
NOISE, STRIPES, CHECKER, SOLID, TILES, DECAL = range(6)
PLANE_CLASS = (FLOOR, CEILING, WALL, WALL, WALL, WALL)
PLANE_MATERIAL = (0, 1, 2, 2, 2, 2)
RUG_MATERIAL, PICTURE_MATERIAL, FIRST_OBJECT_MATERIAL = 3, 4, 5
N_PLANES, PARTS_PER_OBJECT = 6, 8


@dataclass(frozen=True)
class SceneObject:
    """A primitive resting on the floor at footprint centre ``(x, z)``.

    ``size`` is ``(ex, ey, ez)`` half-extents for a box, ``(radius,)`` for a sphere and ``(radius, height)``
    for a cylinder; ``yaw`` only matters for boxes.
    """

    kind: int
    x: float
    z: float
    size: tuple[float, ...]
    yaw: float = 0.0

    def bounding_sphere(self) -> tuple[tuple[float, float, float], float]:
        if self.kind == BOX:
            ex, ey, ez = self.size
            return (self.x, ey, self.z), math.sqrt(ex * ex + ey * ey + ez * ez)
        if self.kind == SPHERE:
            return (self.x, self.size[0], self.z), self.size[0]
        radius, height = self.size
        return (self.x, height / 2, self.z), math.hypot(radius, height / 2)


@dataclass(frozen=True, eq=False)
class Scene:
    """All parameters of one scene (docs/data.md §3.3); world frame y up, floor y = 0, camera at z = 0.

    ``picture`` is ``(x_centre, y_bottom, width, height)`` on the back wall; ``rug`` is the floor ellipse
    ``(x, z, radius_x, radius_z, angle)``; material arrays are indexed floor, ceiling, walls, rug, picture,
    then one per object.
    """

    room: tuple[float, float, float]
    camera: tuple[float, float, float]
    angles: tuple[float, float, float]
    objects: tuple[SceneObject, ...]
    picture: tuple[float, float, float, float]
    rug: tuple[float, float, float, float, float]
    light: tuple[float, float, float]
    ambient: float
    colour1: np.ndarray
    colour2: np.ndarray
    family: np.ndarray
    frequency: np.ndarray
    offset: np.ndarray
    lattice: np.ndarray
    emitter_side: float = 1.0


def scene_rng(dataset_seed: int, split: int, index: int) -> np.random.Generator:
    """The per-sample generator of docs/data.md §3.2."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([dataset_seed, split, index, GENERATOR_VERSION])))


def _sample_object(rng: np.random.Generator) -> tuple[int, tuple[float, ...], float, float]:
    kind = (BOX, SPHERE, CYLINDER)[int(rng.integers(3))]
    s = rng.uniform(0.2, 0.6)
    if kind == BOX:
        size = (s, rng.uniform(0.15, 0.7), s * rng.uniform(0.5, 1.0))
        return kind, size, rng.uniform(0.0, math.pi), math.hypot(size[0], size[2])
    if kind == SPHERE:
        return kind, (s,), 0.0, s
    return kind, (s, rng.uniform(0.3, 1.5)), 0.0, s


def sample_scene(dataset_seed: int, split: int, index: int) -> Scene:
    """Draw one scene (docs/data.md §3.3) in a fixed order from its own generator."""
    rng = scene_rng(dataset_seed, split, index)
    rw, rd, rh = rng.uniform(4.0, 7.0), rng.uniform(5.0, 9.0), rng.uniform(2.5, 3.2)
    camera = (rng.uniform(-0.25, 0.25) * rw, rng.uniform(1.0, 1.7), 0.0)
    angles = tuple(math.radians(rng.uniform(lo, hi)) for lo, hi in ((-25, 25), (-30, -5), (-3, 3)))
    objects, footprints = [], []
    for _ in range(int(rng.integers(3, 8))):
        kind, size, yaw, foot = _sample_object(rng)
        for _try in range(100):
            x, z = rng.uniform(-rw / 2 + foot, rw / 2 - foot), rng.uniform(1.2, rd - foot)
            if all(math.hypot(x - ox, z - oz) > foot + of for ox, oz, of in footprints):
                objects.append(SceneObject(kind, x, z, size, yaw))
                footprints.append((x, z, foot))
                break
    pw, ph = rng.uniform(1.0, 1.8), rng.uniform(0.4, 0.9)
    picture = (rng.uniform(-1, 1) * (rw / 2 - pw / 2 - 0.1), rng.uniform(0.4, 1.2), pw, ph)
    rug = (rng.uniform(-0.2, 0.2) * rw, rng.uniform(1.5, rd - 1.5), rng.uniform(0.9, 1.9),
           rng.uniform(1.0, 2.2), rng.uniform(0.0, math.pi))
    light = (rng.uniform(-1.0, 1.0), rh - 0.05, rng.uniform(1.0, rd - 1.0))
    ambient = rng.uniform(0.2, 0.4)
    m = FIRST_OBJECT_MATERIAL + len(objects)
    colour1, colour2 = rng.uniform(0.15, 0.95, (m, 3)), rng.uniform(0.15, 0.95, (m, 3))
    family, frequency = rng.integers(0, 4, m), rng.uniform(2.0, 8.0, m)
    offset, lattice = rng.uniform(0.0, 16.0, (m, 3)), rng.random((16, 16, 16))
    family[0], frequency[0] = TILES, 2.0
    family[[RUG_MATERIAL, PICTURE_MATERIAL]] = DECAL
    return Scene((rw, rd, rh), camera, angles, tuple(objects), picture, rug, light, ambient,
                 colour1, colour2, family, frequency, offset, lattice)


def mirror_scene(scene: Scene) -> Scene:
    """Mirror the scene in world x (docs/data.md §3.13 item 5); the texture lattice is left unchanged."""
    (cx, cy, cz), (yaw, pitch, roll) = scene.camera, scene.angles
    px, py, pw, ph = scene.picture
    rx, rz, rrx, rrz, rangle = scene.rug
    objects = tuple(dataclasses.replace(o, x=-o.x, yaw=-o.yaw) for o in scene.objects)
    return dataclasses.replace(
        scene, camera=(-cx, cy, cz), angles=(-yaw, pitch, -roll), objects=objects,
        picture=(-px, py, pw, ph), rug=(-rx, rz, rrx, rrz, -rangle),
        light=(-scene.light[0], *scene.light[1:]), emitter_side=-scene.emitter_side)


def camera_frame(scene: Scene) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """World-frame camera axes (right, down, forward) = the columns of R (docs/data.md §3.4)."""
    yaw, pitch, roll = scene.angles
    fx, fy, fz = math.sin(yaw) * math.cos(pitch), math.sin(pitch), math.cos(yaw) * math.cos(pitch)
    norm = math.hypot(fz, fx)
    rx, ry, rz = fz / norm, 0.0, -fx / norm
    dx, dy, dz = ry * fz - rz * fy, rz * fx - rx * fz, rx * fy - ry * fx
    c, s = math.cos(roll), math.sin(roll)
    right = (c * rx + s * dx, c * ry + s * dy, c * rz + s * dz)
    down = (c * dx - s * rx, c * dy - s * ry, c * dz - s * rz)
    return right, down, (fx, fy, fz)


def focal_length(width: int) -> float:
    """Focal length in pixels, f = κ W with NYU's Kinect ratio κ (docs/data.md §3.3)."""
    return FOCAL_RATIO * width


def room_planes(scene: Scene) -> tuple[tuple[tuple[float, float, float], float], ...]:
    """The six room planes n·p = c with n pointing into the room: floor, ceiling, left, right, back, front."""
    rw, rd, rh = scene.room
    return (((0.0, 1.0, 0.0), 0.0), ((0.0, -1.0, 0.0), -rh), ((1.0, 0.0, 0.0), -rw / 2),
            ((-1.0, 0.0, 0.0), -rw / 2), ((0.0, 0.0, -1.0), -rd), ((0.0, 0.0, 1.0), -1.0))


def _dot(a, b):
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _sub(v, idx):
    return tuple(c[idx] if isinstance(c, np.ndarray) else c for c in v)


def _along(o, d, t):
    return (o[0] + t * d[0], o[1] + t * d[1], o[2] + t * d[2])


def _candidates(obj: SceneObject, o, d) -> np.ndarray:
    """Broad phase (docs/data.md §3.5): indices of rays that cross the object's bounding sphere."""
    (bx, by, bz), radius = obj.bounding_sphere()
    q = (o[0] - bx, o[1] - by, o[2] - bz)
    b = _dot(d, q)
    return np.flatnonzero(b * b - _dot(d, d) * (_dot(q, q) - radius * radius) > 0)


def _hit_object(obj: SceneObject, o, d) -> tuple[np.ndarray, np.ndarray]:
    """Entry distance t > EPS (inf on a miss) and part index of the rays o + t d (docs/data.md §3.5)."""
    qx, qz = o[0] - obj.x, o[2] - obj.z
    with np.errstate(divide="ignore", invalid="ignore"):
        if obj.kind == BOX:
            c, s = math.cos(obj.yaw), math.sin(obj.yaw)
            lo = (c * qx - s * qz, o[1] - obj.size[1], s * qx + c * qz)
            ld = (c * d[0] - s * d[2], d[1], s * d[0] + c * d[2])
            t1 = np.stack([(-e - p) / v for e, p, v in zip(obj.size, lo, ld, strict=True)])
            t2 = np.stack([(e - p) / v for e, p, v in zip(obj.size, lo, ld, strict=True)])
            near, far = np.minimum(t1, t2), np.maximum(t1, t2)
            k = np.argmax(near, axis=0)
            t_near = np.take_along_axis(near, k[None], 0)[0]
            hit = (far.min(axis=0) >= t_near) & (t_near > EPS)
            facing_negative = np.take_along_axis(np.stack(ld), k[None], 0)[0] < 0
            return np.where(hit, t_near, np.inf), 2 * k + facing_negative
        if obj.kind == SPHERE:
            q = (qx, o[1] - obj.size[0], qz)
            a, b = _dot(d, d), _dot(d, q)
            disc = b * b - a * (_dot(q, q) - obj.size[0] ** 2)
            t = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
            return np.where((disc > 0) & (t > EPS), t, np.inf), np.zeros(t.shape, np.int64)
        radius, height = obj.size
        a, b = d[0] * d[0] + d[2] * d[2], d[0] * qx + d[2] * qz
        disc = b * b - a * (qx * qx + qz * qz - radius * radius)
        t_side = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
        y_side = o[1] + t_side * d[1]
        side = (disc > 0) & (t_side > EPS) & (y_side >= 0) & (y_side <= height)
        t_cap = (height - o[1]) / d[1]
        cx, cz = qx + t_cap * d[0], qz + t_cap * d[2]
        t = np.where(side, t_side, np.inf)
        cap = (t_cap > EPS) & (cx * cx + cz * cz <= radius * radius) & (t_cap < t)
        return np.where(cap, t_cap, t), cap.astype(np.int64)


def _object_normal(obj: SceneObject, part: np.ndarray, p) -> tuple[np.ndarray, ...]:
    if obj.kind == SPHERE:
        r = obj.size[0]
        return ((p[0] - obj.x) / r, (p[1] - r) / r, (p[2] - obj.z) / r)
    if obj.kind == CYLINDER:
        r, side = obj.size[0], part == 0
        return (np.where(side, (p[0] - obj.x) / r, 0.0), np.where(side, 0.0, 1.0),
                np.where(side, (p[2] - obj.z) / r, 0.0))
    c, s = math.cos(obj.yaw), math.sin(obj.yaw)
    axis, sign = part // 2, np.where(part % 2 == 1, 1.0, -1.0)
    return (sign * np.choose(axis, (c, 0.0, s)), sign * np.choose(axis, (0.0, 1.0, 0.0)),
            sign * np.choose(axis, (-s, 0.0, c)))


def _occluded(scene: Scene, o, d) -> np.ndarray:
    """Whether an object blocks the segments o + t d, t in (EPS, 1) (shadow rays, docs/data.md §3.7-3.8)."""
    blocked = np.zeros(d[0].shape, bool)
    for obj in scene.objects:
        idx = _candidates(obj, o, d)
        t, _ = _hit_object(obj, _sub(o, idx), _sub(d, idx))
        blocked[idx[t < 1.0]] = True
    return blocked


def _trace(scene: Scene, o, d) -> tuple[np.ndarray, np.ndarray]:
    """Closest hit of camera rays: z-depth t and surface id (planes 0-5, then 8 parts per object)."""
    ts = []
    for n, c in room_planes(scene):
        with np.errstate(divide="ignore"):
            denom = _dot(n, d)
            ts.append(np.where(denom < 0, (c - _dot(n, o)) / denom, np.inf))
    ts = np.stack(ts)
    surface = np.argmin(ts, axis=0)
    t = np.take_along_axis(ts, surface[None], 0)[0]
    for i, obj in enumerate(scene.objects):
        idx = _candidates(obj, o, d)
        t_obj, part = _hit_object(obj, o, _sub(d, idx))
        closer = t_obj < t[idx]
        t[idx[closer]] = t_obj[closer]
        surface[idx[closer]] = N_PLANES + PARTS_PER_OBJECT * i + part[closer]
    return t, surface


def _surface_attributes(scene: Scene, surface: np.ndarray, p) -> tuple[tuple, np.ndarray, np.ndarray]:
    """World normal, class and material of each hit, decals included (docs/data.md §3.6)."""
    normal = tuple(np.zeros(surface.shape) for _ in range(3))
    plane = np.minimum(surface, N_PLANES - 1)
    for axis in range(3):
        normal[axis][:] = np.array([n[axis] for n, _ in room_planes(scene)])[plane]
    label = np.array(PLANE_CLASS)[plane]
    material = np.array(PLANE_MATERIAL)[plane]
    rx, rz, rrx, rrz, angle = scene.rug
    c, s = math.cos(angle), math.sin(angle)
    ux, uz = p[0] - rx, p[2] - rz
    on_rug = (surface == 0) & (((c * ux - s * uz) / rrx) ** 2 + ((s * ux + c * uz) / rrz) ** 2 <= 1)
    px, py, pw, ph = scene.picture
    on_picture = (surface == 4) & (np.abs(p[0] - px) <= pw / 2) & (p[1] >= py) & (p[1] <= py + ph)
    label[on_rug], material[on_rug] = RUG, RUG_MATERIAL
    label[on_picture], material[on_picture] = PICTURE, PICTURE_MATERIAL
    for i, obj in enumerate(scene.objects):
        base = N_PLANES + PARTS_PER_OBJECT * i
        idx = np.flatnonzero((surface >= base) & (surface < base + PARTS_PER_OBJECT))
        for axis, value in enumerate(_object_normal(obj, surface[idx] - base, _sub(p, idx))):
            normal[axis][idx] = value
        label[idx], material[idx] = obj.kind, FIRST_OBJECT_MATERIAL + i
    return normal, label, material


def _value_noise(lattice: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Trilinear value noise on a periodic 16³ lattice with smoothstep weights (docs/data.md §3.7)."""
    base = np.floor(q)
    f = q - base
    w = f * f * (3.0 - 2.0 * f)
    i0 = base.astype(np.int64) % 16
    i1 = (i0 + 1) % 16
    out = np.zeros(q.shape[0])
    for corner in range(8):
        bits = [(corner >> axis) & 1 for axis in range(3)]
        idx = [np.where(b, i1[:, a], i0[:, a]) for a, b in enumerate(bits)]
        weight = np.prod([w[:, a] if b else 1.0 - w[:, a] for a, b in enumerate(bits)], axis=0)
        out += weight * lattice[idx[0], idx[1], idx[2]]
    return out


def _albedo(scene: Scene, material: np.ndarray, p) -> np.ndarray:
    """Solid-texture albedo at the hit points, shape (N, 3) (docs/data.md §3.7)."""
    centre = np.zeros((len(scene.family), 3))
    yaw = np.zeros(len(scene.family))
    for i, obj in enumerate(scene.objects):
        centre[FIRST_OBJECT_MATERIAL + i] = (obj.x, 0.0, obj.z)
        yaw[FIRST_OBJECT_MATERIAL + i] = obj.yaw
    c, s = np.cos(yaw[material]), np.sin(yaw[material])
    ux, uz = p[0] - centre[material, 0], p[2] - centre[material, 2]
    local = np.stack([c * ux - s * uz, p[1], s * ux + c * uz], axis=1)
    freq = scene.frequency[material][:, None]
    n = _value_noise(scene.lattice, local * freq + scene.offset[material])[:, None]
    c1, c2 = scene.colour1[material], scene.colour2[material]
    cells = np.floor(local * freq)
    parity = (cells.sum(axis=1) % 2 == 0)[:, None]
    tiles = ((cells[:, 0] + cells[:, 2]) % 2 == 0)[:, None]
    stripes = (np.sin(2.0 * freq[:, 0] * local[:, 1]) > 0)[:, None]
    choices = (c1 * (0.6 + 0.8 * n), np.where(stripes, c1, c2), np.where(parity, c1, c2),
               c1 * (0.9 + 0.2 * n), np.where(tiles, c1, c2) * (0.7 + 0.6 * n), n * c1 + (1 - n) * c2)
    family = scene.family[material][:, None]
    return np.select([family == k for k in range(len(choices))], choices)


def _shade(scene: Scene, p, normal, albedo: np.ndarray) -> np.ndarray:
    """Lambertian point light with distance falloff and shadow rays (docs/data.md §3.7), linear RGB (N, 3)."""
    to_light = tuple(lc - pc for lc, pc in zip(scene.light, p, strict=True))
    dist2 = _dot(to_light, to_light)
    cosine = _dot(normal, to_light) / np.sqrt(dist2)
    idx = np.flatnonzero(cosine > 0)
    origin = _along(_sub(p, idx), _sub(normal, idx), SURFACE_OFFSET)
    visible = ~_occluded(scene, origin, tuple(lc - oc for lc, oc in zip(scene.light, origin, strict=True)))
    direct = np.zeros_like(dist2)
    direct[idx] = LIGHT_INTENSITY * cosine[idx] * visible / (1.0 + dist2[idx])
    return albedo * (scene.ambient + direct)[:, None]


def _pixels(x: np.ndarray, height: int, width: int, s: int) -> np.ndarray:
    """(H s · W s, ...) subsample array -> (H, W, s², ...)."""
    x = x.reshape(height, s, width, s, *x.shape[1:]).swapaxes(1, 2)
    return x.reshape(height, width, s * s, *x.shape[4:])


def render(scene: Scene, height: int, width: int, supersample: int = 2) -> dict[str, np.ndarray]:
    """Render a scene with s×s supersampling and Kinect-like validity (docs/data.md §3.4-3.8)."""
    s = supersample
    right, down, forward = camera_frame(scene)
    scale = focal_length(width) * s
    u = (np.arange(width * s) + 0.5 - width * s / 2) / scale
    v = (np.arange(height * s) + 0.5 - height * s / 2) / scale
    u, v = np.tile(u, height * s), np.repeat(v, width * s)
    d = tuple(r * u + w * v + f for r, w, f in zip(right, down, forward, strict=True))
    o = scene.camera
    z, surface = _trace(scene, o, d)
    p = _along(o, d, z)
    normal, label, material = _surface_attributes(scene, surface, p)
    emitter = tuple(oc + scene.emitter_side * EMITTER_BASELINE * rc for oc, rc in zip(o, right, strict=True))
    origin = _along(p, normal, SURFACE_OFFSET)
    shadowed = _occluded(scene, origin, tuple(ec - oc for ec, oc in zip(emitter, origin, strict=True)))
    sensor_ok = ~shadowed & (z <= MAX_RANGE)
    rgb = _shade(scene, p, normal, _albedo(scene, material, p))
    n_cam = np.stack([_dot(axis, normal) for axis in (right, down, forward)], axis=1)

    label, surface, sensor_ok = (_pixels(x, height, width, s) for x in (label, surface, sensor_ok))
    valid = (surface == surface[..., :1]).all(-1) & sensor_ok.all(-1)
    depth = np.where(valid, s * s / (1.0 / _pixels(z, height, width, s)).sum(-1), 0.0)
    n_sum = _pixels(n_cam, height, width, s).sum(2)
    n_len = np.sqrt((n_sum * n_sum).sum(-1, keepdims=True))
    n_out = np.where(valid[..., None], n_sum / np.where(n_len > 0, n_len, 1.0), 0.0)
    image = np.clip(_pixels(rgb, height, width, s), 0.0, 1.0).mean(2) ** (1 / 2.2)
    return {
        "image": np.ascontiguousarray(image.transpose(2, 0, 1), np.float32),
        "label": np.where((label == label[..., :1]).all(-1), label[..., 0], IGNORE_LABEL).astype(np.int64),
        "depth": depth[None].astype(np.float32),
        "normal": np.ascontiguousarray(n_out.transpose(2, 0, 1), np.float32),
    }


def render_scene(dataset_seed: int, split: int, index: int, height: int, width: int,
                 supersample: int = 2) -> dict[str, np.ndarray]:
    """Sample ``index`` of ``split`` (train 0, val 1, test 2): image, label, depth and normal maps."""
    return render(sample_scene(dataset_seed, split, index), height, width, supersample)


def quantise(sample: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Compact storage dtypes (docs/data.md §3.2): uint8 image, int8 label, uint32 depth in 0.1 mm, float16 normals."""
    return {
        "image": np.round(sample["image"] * 255.0).astype(np.uint8),
        "label": sample["label"].astype(np.int8),
        "depth": np.round(sample["depth"].astype(np.float64) * 1e4).astype(np.uint32),
        "normal": sample["normal"].astype(np.float16),
    }


def render_quantised(job: tuple[int, int, int, int, int, int]) -> dict[str, np.ndarray]:
    """Pool worker: ``job = (dataset_seed, split, index, height, width, supersample)``."""
    return quantise(render_scene(*job))
