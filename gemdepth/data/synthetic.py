"""The embedded synthetic corpus: seeded procedural scenes rendered by vectorised ray casting.

Scenes are rooms (the inside of a box) or open ground with sky, furnished with boxes and
spheres that carry solid procedural textures (checkers, stripes, value noise, gradients), some
of them moving on their own. The camera follows a smooth path with translation and strong
rotation. Every frame comes with exact z-depth in metres (0 on sky), intrinsics and
world-to-camera OpenCV extrinsics, written as clip dicts through
:func:`gemdepth.data.shards.write_corpus`.

Shading is Lambertian (a sun plus a headlight at the camera) with distance fog, and texture
scale is fixed in world units, so brightness, foreshortening and texture frequency all carry
depth cues a small network can learn quickly.

Hand-written (no renderer library) because none of the available libraries ray-casts
analytic primitives on CPU this cheaply; everything is numpy over all pixels of a chunk of
frames at once, with Python loops only over the few objects of a scene.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "SynthConfig",
    "render_sequence",
    "iter_synthetic_clips",
    "make_synthetic_corpus",
    "CORPUS_NAME",
    "POSE_FREE_CORPUS_NAME",
    "CAMERA_FLAVOURS",
]

CORPUS_NAME = "synthetic"
POSE_FREE_CORPUS_NAME = "synthetic_posefree"
LICENCE = "CC0-1.0"
_NEAR = 1e-3
_MAX_CHUNK_RAYS = 1 << 17  # rays per vectorised chunk (bounds memory, keeps arrays cache-sized)
CAMERA_FLAVOURS = ("smooth", "fast", "static")
_FAST_SPEED_UP = 3.0  # "fast" camera: the smooth path's motion, three times as fast


@dataclass
class SynthConfig:
    """Options of one synthetic sequence (sizes in pixels, distances in metres)."""

    height: int = 168
    width: int = 224
    frames: int = 32
    kind: str = "mixed"  # "room", "open" or "mixed" (chosen per sequence)
    min_objects: int = 3
    max_objects: int = 8
    moving_fraction: float = 0.4
    fov_range: tuple[float, float] = (50.0, 90.0)  # horizontal field of view in degrees
    max_yaw_step: float = 4.0  # degrees per frame at most (strong but overlapping rotation)
    ground_radius: float = 150.0  # open scenes: ground disc radius around the scene origin
    # "smooth" (the default path), "fast" (CAMERA_FLAVOURS: ~3x the rotation and translation
    # speed plus per-frame shake: drastic view changes) or "static" (a fixed camera, moving objects)
    camera: str = "smooth"


# --------------------------------------------------------------------------- scene sampling
_TEXTURES = ("checker", "stripes", "noise", "gradient")
_SPHERE, _BOX, _ROOM, _GROUND = 0, 1, 2, 3


def _rot_y(angle: np.ndarray) -> np.ndarray:
    """Rotations about the world y axis, ``(..., 3, 3)``."""
    c, s = np.cos(angle), np.sin(angle)
    z, o = np.zeros_like(angle), np.ones_like(angle)
    return np.stack([np.stack([c, z, s], -1), np.stack([z, o, z], -1), np.stack([-s, z, c], -1)], -2)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    x, y, z, w = q
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def _material(rng: np.random.Generator, scale_range: tuple[float, float]) -> dict:
    """A random solid texture: kind, two colours, world-unit scale, direction, seed."""
    hue = rng.uniform(0, 1, size=2)
    base = 0.25 + 0.75 * rng.uniform(0, 1, size=(2, 3))
    base[1] = np.clip(base[1] * rng.uniform(0.3, 0.7), 0, 1)  # contrast between the two colours
    axis = rng.normal(size=3)
    return {
        "texture": _TEXTURES[rng.integers(len(_TEXTURES))],
        "colours": base.astype(np.float32) * (0.6 + 0.4 * hue[:, None].astype(np.float32)),
        "scale": float(rng.uniform(*scale_range)),
        "axis": (axis / np.linalg.norm(axis)).astype(np.float32),
        "seed": int(rng.integers(1 << 30)),
    }


def _camera_path(rng: np.random.Generator, frames: int, kind: str, room: np.ndarray | None,
                 cfg: SynthConfig) -> tuple[np.ndarray, np.ndarray]:
    """Camera centres ``(F, 3)`` and camera-to-world rotations ``(F, 3, 3)`` (OpenCV axes).

    World: y up. Yaw sweeps with a drift plus oscillation (strong rotation, bounded per-frame
    step); pitch and roll oscillate gently.
    """
    if cfg.camera not in CAMERA_FLAVOURS:
        raise ValueError(f"camera must be one of {CAMERA_FLAVOURS}, got {cfg.camera!r}")
    fast = cfg.camera == "fast"
    speed_up = _FAST_SPEED_UP if fast else 1.0  # scales time: same path shapes, traversed faster
    t = np.arange(frames, dtype=np.float64) * speed_up
    step = np.deg2rad(cfg.max_yaw_step)
    drift = rng.uniform(-0.6, 0.6) * step
    amp = rng.uniform(0.2, 0.4) * step / max(rng.uniform(0.05, 0.2), 1e-3)
    w = rng.uniform(0.05, 0.2)
    yaw = rng.uniform(0, 2 * np.pi) + drift * t + amp * np.sin(w * t + rng.uniform(0, 2 * np.pi))
    pitch = np.deg2rad(rng.uniform(-8, 8)) + np.deg2rad(rng.uniform(3, 12)) * np.sin(
        rng.uniform(0.03, 0.12) * t + rng.uniform(0, 2 * np.pi))
    roll = np.deg2rad(rng.uniform(2, 8)) * np.sin(rng.uniform(0.03, 0.1) * t + rng.uniform(0, 6.3))
    if fast:  # hand-held shake on top: a random walk of yaw rate, jittered pitch and roll
        shake = np.deg2rad(cfg.max_yaw_step) * 0.5
        yaw = yaw + np.cumsum(rng.normal(0.0, shake, frames))
        pitch = pitch + rng.normal(0.0, shake * 0.5, frames)
        roll = roll * 2.0 + rng.normal(0.0, shake * 0.5, frames)
    if kind == "room":
        lo, hi = room
        margin = 1.0
        centre = (lo + hi) / 2
        half = (hi - lo) / 2 - margin
        ph = rng.uniform(0, 2 * np.pi, size=3)
        freq = rng.uniform(0.01, 0.05, size=3)
        amp_xyz = half * rng.uniform(0.3, 1.0, size=3) * np.array([1.0, 0.3, 1.0])
        pos = centre + amp_xyz * np.sin(freq * t[:, None] + ph)
        pos[:, 1] = np.clip(pos[:, 1], lo[1] + 0.8, hi[1] - 0.4)
    else:
        speed = rng.uniform(0.05, 0.4) * speed_up
        heading = yaw - amp * np.sin(w * t + 0) * 0.5  # move roughly where the camera looks
        vel = speed * np.stack([np.sin(heading), np.zeros_like(t), np.cos(heading)], -1)
        pos = np.cumsum(vel, 0) - vel[0]
        pos[:, 1] = rng.uniform(1.2, 3.0) + 0.2 * np.sin(rng.uniform(0.02, 0.1) * t)
    fwd = np.stack([np.sin(yaw) * np.cos(pitch), np.sin(pitch), np.cos(yaw) * np.cos(pitch)], -1)
    right = np.cross(fwd, np.array([0.0, 1.0, 0.0]))
    right /= np.linalg.norm(right, axis=-1, keepdims=True)
    down = np.cross(fwd, right)
    c, s = np.cos(roll)[:, None], np.sin(roll)[:, None]
    right, down = c * right + s * down, -s * right + c * down
    rot = np.stack([right, down, fwd], -1)  # columns: camera axes in world
    if cfg.camera == "static":  # the control: the first pose held for every frame
        pos, rot = np.repeat(pos[:1], frames, 0), np.repeat(rot[:1], frames, 0)
    return pos, rot


def _sample_scene(rng: np.random.Generator, cfg: SynthConfig) -> dict:
    """Room or open scene, camera path and objects kept clear of the camera at every frame."""
    kind = cfg.kind if cfg.kind != "mixed" else ("room" if rng.random() < 0.5 else "open")
    if kind not in ("room", "open"):
        raise ValueError(f"scene kind must be 'room', 'open' or 'mixed', got {cfg.kind!r}")
    f = cfg.frames
    room = None
    statics: list[dict] = []
    if kind == "room":
        size = np.array([rng.uniform(5, 12), rng.uniform(2.5, 4), rng.uniform(5, 14)])
        room = np.stack([-size / 2 * np.array([1, 0, 1]), size / 2 * np.array([1, 2, 1])])
        statics.append({"type": _ROOM, "lo": room[0].astype(np.float32),
                        "hi": room[1].astype(np.float32), "materials": [
                            _material(rng, (0.3, 1.0)) for _ in range(3)]})  # floor, ceiling, walls
        fog = rng.uniform(8, 20)
    else:
        statics.append({"type": _GROUND, "material": _material(rng, (0.5, 3.0))})
        fog = rng.uniform(40, 120)
    cam_pos, cam_rot = _camera_path(rng, f, kind, room, cfg)

    n_obj = int(rng.integers(cfg.min_objects, cfg.max_objects + 1)) * (2 if kind == "open" else 1)
    objects: list[dict] = []
    t = np.arange(f, dtype=np.float64)
    tries = 0
    while len(objects) < n_obj and tries < 50 * n_obj:
        tries += 1
        is_box = rng.random() < 0.5
        moving = rng.random() < cfg.moving_fraction
        if kind == "room":
            lo, hi = room
            size = rng.uniform(0.2, 0.9)
            a = rng.integers(f)  # in front of the camera at a random frame, inside the room
            heading = np.arctan2(cam_rot[a, 0, 2], cam_rot[a, 2, 2]) + rng.uniform(-0.7, 0.7)
            centre = cam_pos[a] + rng.uniform(1.2, 6.0) * np.array(
                [np.sin(heading), 0, np.cos(heading)])
            centre[1] = rng.uniform(lo[1], hi[1])
            centre = np.clip(centre, lo + size, hi - size)
            if rng.random() < 0.6:
                centre[1] = lo[1] + size * (0.7 if is_box else 1.0)  # resting on the floor
        else:
            size = rng.uniform(0.5, 4.0)
            a = rng.integers(f)  # in front of the camera at a random frame
            heading = np.arctan2(cam_rot[a, 0, 2], cam_rot[a, 2, 2]) + rng.uniform(-0.8, 0.8)
            dist = rng.uniform(3, 40)
            centre = cam_pos[a] + dist * np.array([np.sin(heading), 0, np.cos(heading)])
            centre[1] = size * rng.uniform(0.5, 2.0) if is_box else size
        half = (size * rng.uniform(0.4, 1.0, size=3)) if is_box else np.full(3, size)
        if kind == "open" and is_box and rng.random() < 0.3:
            half[1] *= rng.uniform(2, 5)  # towers
            centre[1] = half[1]
        vel = rng.normal(size=3) * (0.01 if kind == "room" else 0.05) * moving
        vel[1] *= 0.3
        wob = rng.normal(size=3) * (0.3 if kind == "room" else 1.0) * size * moving * 0.3
        wfreq = rng.uniform(0.05, 0.2)
        centres = centre + vel * t[:, None] + wob * np.sin(wfreq * t[:, None])
        spin = rng.uniform(-0.08, 0.08) * moving
        rot0 = _rot_y(np.array(rng.uniform(0, 2 * np.pi))) if (is_box and rng.random() < 0.7) \
            else _random_rotation(rng)
        rots = _rot_y(spin * t) @ rot0
        radius = float(np.linalg.norm(half))
        clearance = np.linalg.norm(cam_pos - centres, axis=-1).min()
        if clearance < radius + 0.5:
            continue
        objects.append({
            "type": _BOX if is_box else _SPHERE, "centre": centres.astype(np.float32),
            "rot": rots.astype(np.float32), "half": half.astype(np.float32), "radius": float(size),
            "bound": radius if is_box else float(size),
            "moving": bool(moving), "material": _material(rng, (0.1, 0.6) if kind == "room"
                                                          else (0.3, 2.0)),
        })
    fov = np.deg2rad(rng.uniform(*cfg.fov_range))
    fx = (cfg.width / 2) / np.tan(fov / 2)
    jitter = rng.uniform(-0.03, 0.03, size=2) * np.array([cfg.width, cfg.height])
    intr = np.array([[fx, 0, (cfg.width - 1) / 2 + jitter[0]],
                     [0, fx, (cfg.height - 1) / 2 + jitter[1]], [0, 0, 1]], dtype=np.float32)
    sun = np.array([rng.uniform(-1, 1), rng.uniform(0.5, 1.5), rng.uniform(-1, 1)])
    return {
        "kind": kind, "statics": statics, "objects": objects, "cam_pos": cam_pos.astype(np.float32),
        "cam_rot": cam_rot.astype(np.float32), "intrinsics": intr, "fog": float(fog),
        "sun": (sun / np.linalg.norm(sun)).astype(np.float32),
        "fog_colour": (0.55 + 0.3 * rng.uniform(0, 1, 3)).astype(np.float32),
        "ground_radius": cfg.ground_radius,
    }


# --------------------------------------------------------------------------- textures
_LATTICE = 32  # value-noise lattice period (in texture units)


def _lattice(seed: int) -> np.ndarray:
    """Random lattice values ``(32³,)`` in [0, 1) of one noise seed (cached per seed)."""
    table = _LATTICE_CACHE.get(seed)
    if table is None:
        table = np.random.default_rng(seed).random(_LATTICE ** 3, dtype=np.float32)
        if len(_LATTICE_CACHE) > 256:
            _LATTICE_CACHE.clear()
        _LATTICE_CACHE[seed] = table
    return table


_LATTICE_CACHE: dict[int, np.ndarray] = {}


def _value_noise(p: np.ndarray, seed: int) -> np.ndarray:
    """Smooth 3D value noise in [0, 1) of points ``(N, 3)`` (trilinear with smoothstep weights,
    lattice values looked up in a seeded periodic table)."""
    table = _lattice(seed)
    fl = np.floor(p)
    f = p - fl
    f = f * f * (3 - 2 * f)
    i = fl.astype(np.int64) & (_LATTICE - 1)
    j = (i + 1) & (_LATTICE - 1)
    xs = (i[:, 0] * _LATTICE * _LATTICE, j[:, 0] * _LATTICE * _LATTICE)
    ys = (i[:, 1] * _LATTICE, j[:, 1] * _LATTICE)
    zs = (i[:, 2], j[:, 2])
    wx = (1 - f[:, 0], f[:, 0])
    wy = (1 - f[:, 1], f[:, 1])
    wz = (1 - f[:, 2], f[:, 2])
    out = np.zeros(len(p), np.float32)
    for a in (0, 1):  # 8 lattice corners
        for b in (0, 1):
            wab = wx[a] * wy[b]
            xy = xs[a] + ys[b]
            out += wab * (wz[0] * table[xy + zs[0]] + wz[1] * table[xy + zs[1]])
    return out


def _texture(p: np.ndarray, mat: dict) -> np.ndarray:
    """RGB albedo ``(N, 3)`` of a solid texture at texture-space points ``(N, 3)``."""
    q = p / mat["scale"]
    kind = mat["texture"]
    if kind == "checker":
        a = (np.floor(q).astype(np.int64) @ np.ones(3, np.int64) & 1).astype(np.float32)
    elif kind == "stripes":
        a = (np.sin(2 * np.pi * (q @ mat["axis"])) > 0).astype(np.float32)
    elif kind == "noise":
        a = 0.65 * _value_noise(q, mat["seed"]) + 0.35 * _value_noise(q * 2.7, mat["seed"] + 1)
        a = np.clip((a - 0.5) * 2.0 + 0.5, 0, 1)
    else:  # gradient: smooth ramp along an axis, repeating every 4 scales
        a = 0.5 + 0.5 * np.sin(0.5 * np.pi * (q @ mat["axis"]))
    c0, c1 = mat["colours"]
    return c0 + a[:, None] * (c1 - c0)


# --------------------------------------------------------------------------- ray casting
# Rays are kept as separate x/y/z component arrays of shape (T, H, W) (structure of arrays):
# numpy is slow at reducing over a trailing axis of length 3, fast at elementwise work.
class _Rays:
    """World rays ``o + t·d`` of a chunk of frames; ``t`` is z-depth since ``d`` has z_cam = 1.

    Components are ``(T, H, W)`` arrays (or a rectangular window of them, see :meth:`window`).
    """

    def __init__(self, o: np.ndarray, d: list[np.ndarray], inv: list[np.ndarray],
                 dd: np.ndarray) -> None:
        self.o, self.d, self.inv, self.dd = o, d, inv, dd
        self.shape = dd.shape

    @classmethod
    def build(cls, cam_pos: np.ndarray, cam_rot: np.ndarray, rays_cam: np.ndarray) -> "_Rays":
        """Rays of camera-frame directions ``rays_cam (H, W, 3)`` for every frame's pose."""
        rx, ry, rz = (rays_cam[None, ..., i] for i in range(3))  # (1, H, W)
        r = cam_rot[:, :, :, None, None]  # (T, 3, 3, 1, 1): columns are camera axes in world
        d = [r[:, j, 0] * rx + r[:, j, 1] * ry + r[:, j, 2] * rz for j in range(3)]
        with np.errstate(divide="ignore"):
            inv = [1.0 / c for c in d]
        return cls(cam_pos, d, inv, d[0] * d[0] + d[1] * d[1] + d[2] * d[2])

    def window(self, rect: tuple[int, int, int, int]) -> "_Rays":
        """The rays of pixel rows ``v0:v1`` and columns ``u0:u1`` (views, no copies)."""
        v0, v1, u0, u1 = rect
        sl = (slice(None), slice(v0, v1), slice(u0, u1))
        return _Rays(self.o, [c[sl] for c in self.d], [c[sl] for c in self.inv], self.dd[sl])


_CUBE = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], np.float32)


def _screen_rect(obj: dict, fr: np.ndarray, cam_pos: np.ndarray, cam_rot: np.ndarray,
                 intr: np.ndarray, h: int, w: int) -> tuple[int, int, int, int] | None:
    """Pixel window holding an object in every frame of the chunk (``None``: out of view).

    The object's bounding sphere lies in a cube whose projected corners bound it (projection
    keeps convex hulls for points in front of the camera); a cube reaching behind the camera
    gets the full frame. Rooms and ground always get the full frame.
    """
    full = (0, h, 0, w)
    if obj["type"] in (_ROOM, _GROUND):
        return full
    centre = np.einsum("tk,tkj->tj", obj["centre"][fr] - cam_pos, cam_rot)  # camera frame
    pts = centre[:, None, :] + obj["bound"] * _CUBE
    z = pts[..., 2]
    if (z <= _NEAR).any():
        return None if (centre[:, 2] + obj["bound"] <= _NEAR).all() else full
    u = intr[0, 0] * pts[..., 0] / z + intr[0, 2]
    v = intr[1, 1] * pts[..., 1] / z + intr[1, 2]
    u0, u1 = max(int(np.floor(u.min())) - 1, 0), min(int(np.ceil(u.max())) + 2, w)
    v0, v1 = max(int(np.floor(v.min())) - 1, 0), min(int(np.ceil(v.max())) + 2, h)
    return (v0, v1, u0, u1) if u0 < u1 and v0 < v1 else None


def _intersect(obj: dict, rays: _Rays, fr: np.ndarray, ground_radius: float) -> np.ndarray:
    """Ray parameter ``(T, h, w)`` of each ray's first hit with one object (``inf`` on miss)."""
    dx, dy, dz = rays.d
    o = rays.o[:, :, None, None]  # (T, 3, 1, 1): broadcasts against (T, h, w)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if obj["type"] == _SPHERE:
            oc = o - obj["centre"][fr][:, :, None, None]
            b = dx * oc[:, 0]
            b += dy * oc[:, 1]
            b += dz * oc[:, 2]
            cc = (oc * oc).sum(1) - obj["radius"] ** 2
            disc = b * b - rays.dd * cc
            hit = disc > 0
            np.sqrt(np.maximum(disc, 0, out=disc), out=disc)
            t = -(b + disc) / rays.dd
            t[~(hit & (t > _NEAR))] = np.inf
            return t
        if obj["type"] == _BOX:
            rot = obj["rot"][fr][..., None, None]  # (T, 3, 3, 1, 1) local -> world
            ol = np.einsum("tk,tkj->tj", rays.o - obj["centre"][fr], obj["rot"][fr])
            ol = ol[:, :, None, None]
            tmin = tmax = None
            for j in range(3):
                dl = dx * rot[:, 0, j] + dy * rot[:, 1, j] + dz * rot[:, 2, j]
                inv = 1.0 / dl
                ta = (-obj["half"][j] - ol[:, j]) * inv
                tb = (obj["half"][j] - ol[:, j]) * inv
                lo, hi = np.fmin(ta, tb), np.fmax(ta, tb)
                tmin = lo if tmin is None else np.fmax(tmin, lo, out=tmin)
                tmax = hi if tmax is None else np.fmin(tmax, hi, out=tmax)
            tmin[~((tmax >= tmin) & (tmin > _NEAR))] = np.inf
            return tmin
        if obj["type"] == _ROOM:
            t = None
            for j in range(3):
                ta = (obj["lo"][j] - o[:, j]) * rays.inv[j]
                tb = (obj["hi"][j] - o[:, j]) * rays.inv[j]
                far = np.fmax(ta, tb, out=ta)
                t = far if t is None else np.fmin(t, far, out=t)
            return t
        # ground plane y = 0, limited to a disc around the scene origin
        t = -o[:, 1] * rays.inv[1]
        hx = o[:, 0] + t * dx
        hz = o[:, 2] + t * dz
        t[~((t > _NEAR) & (hx * hx + hz * hz < ground_radius ** 2))] = np.inf
        return t


def _surface(obj: dict, p: np.ndarray, fi: np.ndarray) -> tuple[np.ndarray, np.ndarray, object]:
    """World normals ``(N, 3)``, texture-space points ``(N, 3)`` and material at hits ``p``."""
    if obj["type"] in (_SPHERE, _BOX):
        rel = p - obj["centre"][fi]
        rot = obj["rot"][fi]  # (N, 3, 3)
        local = rel[:, 0:1] * rot[:, 0] + rel[:, 1:2] * rot[:, 1] + rel[:, 2:3] * rot[:, 2]
        if obj["type"] == _SPHERE:
            return rel / obj["radius"], local, obj["material"]
        rel_abs = np.abs(local) / obj["half"]
        axis = rel_abs.argmax(-1)
        idx = np.arange(len(p))
        sign = np.sign(local[idx, axis])[:, None]
        return rot[idx, :, axis] * sign, local, obj["material"]
    if obj["type"] == _ROOM:
        to_lo, to_hi = np.abs(p - obj["lo"]), np.abs(p - obj["hi"])
        dist = np.minimum(to_lo, to_hi)
        axis = dist.argmin(-1)
        idx = np.arange(len(p))
        n = np.zeros_like(p)
        n[idx, axis] = np.where(to_lo[idx, axis] < to_hi[idx, axis], 1.0, -1.0)
        face = np.where(axis == 1, np.where(n[:, 1] > 0, 0, 1), 2)  # floor, ceiling, walls
        return n, p, face
    return np.broadcast_to(np.array([0, 1, 0], np.float32), p.shape), p, obj["material"]


def _shade_chunk(scene: dict, fr: np.ndarray, rays_cam: np.ndarray) -> dict:
    """Render frames ``fr``: rgb float ``(T, H, W, 3)``, depth, sky and dynamic masks."""
    cam_pos, cam_rot = scene["cam_pos"][fr], scene["cam_rot"][fr]
    rays = _Rays.build(cam_pos, cam_rot, rays_cam)
    _, h, w = rays.shape
    everything = scene["statics"] + scene["objects"]
    best = np.full(rays.shape, np.inf, np.float32)
    ident = np.full(rays.shape, -1, np.int16)
    for k, obj in enumerate(everything):
        rect = _screen_rect(obj, fr, cam_pos, cam_rot, scene["intrinsics"], h, w)
        if rect is None:
            continue
        sub = (slice(None), slice(rect[0], rect[1]), slice(rect[2], rect[3]))
        t = _intersect(obj, rays.window(rect), fr, scene["ground_radius"])
        closer = t < best[sub]
        np.copyto(best[sub], t, where=closer)
        ident[sub][closer] = k
    n_pix = h * w
    flat_id = ident.ravel()
    flat_best = best.ravel()
    rgb = np.empty((flat_id.size, 3), np.float32)
    dynamic = np.zeros(flat_id.size, bool)
    dirs = np.stack([c.ravel() for c in rays.d], -1)
    flat_dd = rays.dd.ravel()
    order = np.argsort(flat_id, kind="stable")  # group pixels by object once
    bounds = np.searchsorted(flat_id[order], np.arange(-1, len(everything) + 1))
    for k in range(-1, len(everything)):
        flat = order[bounds[k + 1]:bounds[k + 2]]
        if flat.size == 0:
            continue
        ti = flat // n_pix
        d = dirs[flat]
        dnorm = np.sqrt(flat_dd[flat])
        view = d / dnorm[:, None]
        if k < 0:  # sky: fog colour blending to blue with elevation
            top = np.array([0.25, 0.45, 0.85], np.float32)
            up = np.clip(view[:, 1:2], 0, 1)
            rgb[flat] = scene["fog_colour"] + up * (top - scene["fog_colour"])
            continue
        obj = everything[k]
        tk = flat_best[flat]
        p = cam_pos[ti] + tk[:, None] * d
        n, q, mat = _surface(obj, p, fr[ti])
        if obj["type"] == _ROOM:
            albedo = np.empty_like(p)
            for m in range(3):
                sel = mat == m
                albedo[sel] = _texture(q[sel], obj["materials"][m])
        else:
            albedo = _texture(q, mat)
        head = np.abs(np.einsum("ij,ij->i", n, view))  # headlight at the camera
        sun = np.maximum(n @ scene["sun"], 0)
        light = 0.25 + 0.45 * head + 0.45 * sun
        fog = np.exp(-tk * dnorm / scene["fog"])[:, None]
        rgb[flat] = albedo * (light[:, None] * fog) + scene["fog_colour"] * (1 - fog)
        if obj.get("moving"):
            dynamic[flat] = True
    sky = ident < 0
    depth = np.where(sky, 0.0, best).astype(np.float32)
    return {"rgb": rgb.reshape(*rays.shape, 3), "depth": depth, "sky": sky,
            "dynamic": dynamic.reshape(rays.shape)}


def render_sequence(seed: int | np.random.SeedSequence, cfg: SynthConfig) -> dict:
    """Render one seeded sequence of ``cfg.frames`` frames.

    Returns ``rgb`` uint8 ``(F, H, W, 3)``, ``depth`` float32 z-depth in metres (0 on sky),
    ``sky`` and ``dynamic`` (pixels of independently moving objects) bool ``(F, H, W)``,
    ``intrinsics`` ``(F, 3, 3)``, ``extrinsics`` world-to-camera OpenCV ``(F, 4, 4)`` and
    ``kind``. The same seed and config always give the same arrays.
    """
    rng = np.random.default_rng(seed)
    scene = _sample_scene(rng, cfg)
    h, w, f = cfg.height, cfg.width, cfg.frames
    v, u = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32),
                       indexing="ij")
    pix = np.stack([u, v, np.ones_like(u)], -1).reshape(-1, 3)
    rays_cam = (pix @ np.linalg.inv(scene["intrinsics"]).T).astype(np.float32).reshape(h, w, 3)
    chunk = max(1, _MAX_CHUNK_RAYS // (h * w))
    parts = [_shade_chunk(scene, np.arange(s, min(s + chunk, f)), rays_cam)
             for s in range(0, f, chunk)]
    rgb = np.concatenate([p["rgb"] for p in parts]).reshape(f, h, w, 3)
    rot_c2w = scene["cam_rot"]
    extr = np.zeros((f, 4, 4), np.float32)
    extr[:, :3, :3] = rot_c2w.transpose(0, 2, 1)
    extr[:, :3, 3] = -np.einsum("tji,tj->ti", rot_c2w, scene["cam_pos"])
    extr[:, 3, 3] = 1.0
    return {
        "rgb": np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8),
        "depth": np.concatenate([p["depth"] for p in parts]).reshape(f, h, w),
        "sky": np.concatenate([p["sky"] for p in parts]).reshape(f, h, w),
        "dynamic": np.concatenate([p["dynamic"] for p in parts]).reshape(f, h, w),
        "intrinsics": np.broadcast_to(scene["intrinsics"], (f, 3, 3)).copy(),
        "extrinsics": extr,
        "kind": scene["kind"],
    }


# --------------------------------------------------------------------------- corpus
def _sequence_clips(args: tuple[int, int, SynthConfig, int, bool]) -> list[dict]:
    """Clips of sequence ``index`` (a top-level function so process pools can run it)."""
    seed, index, cfg, clip_length, pose_free = args
    seq = render_sequence(np.random.SeedSequence([seed, index]), cfg)
    name = f"scene-{index:06d}"
    corpus = POSE_FREE_CORPUS_NAME if pose_free else CORPUS_NAME
    clips = []
    for start in range(0, cfg.frames - clip_length + 1, clip_length):
        sl = slice(start, start + clip_length)
        clips.append({
            "rgb": seq["rgb"][sl], "depth": seq["depth"][sl],
            "intrinsics": seq["intrinsics"][sl],
            "extrinsics": None if pose_free else seq["extrinsics"][sl],
            "sky": seq["sky"][sl],
            "meta": {
                "corpus": corpus, "sequence": name,
                "frame_indices": list(range(start, start + clip_length)),
                "depth_kind": "metric", "has_pose": not pose_free, "licence": LICENCE,
                "image_size": [cfg.height, cfg.width], "scene_kind": seq["kind"],
                "sky_handling": "sky mask, depth 0", "seed": [seed, index],
            },
        })
    return clips


def iter_synthetic_clips(sequences: int, frames: int = 32, clip_length: int = 32,
                         size: tuple[int, int] = (168, 224), seed: int = 0,
                         pose_free: bool = False, workers: int = 1,
                         config: SynthConfig | None = None) -> Iterator[dict]:
    """Clip dicts of ``sequences`` seeded sequences, each cut into non-overlapping clips.

    Sequence ``i`` depends only on ``(seed, i)`` and the config, so results do not depend on
    ``workers`` (processes rendering sequences in parallel). Frames beyond the last whole clip
    are not rendered into clips.
    """
    if clip_length < 1 or frames < clip_length:
        raise ValueError(f"need 1 <= clip_length <= frames, got clip_length={clip_length}, "
                         f"frames={frames}")
    base = config or SynthConfig()
    cfg = SynthConfig(**{**base.__dict__, "height": size[0], "width": size[1], "frames": frames})
    jobs = [(seed, i, cfg, clip_length, pose_free) for i in range(sequences)]
    if workers <= 1:
        for job in jobs:
            yield from _sequence_clips(job)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for clips in pool.map(_sequence_clips, jobs):
            yield from clips


def make_synthetic_corpus(out: str | os.PathLike, sequences: int, frames: int = 32,
                          clip_length: int = 32, size: tuple[int, int] = (168, 224),
                          seed: int = 0, pose_free: bool = False, workers: int = 1,
                          clips_per_shard: int = 8, progress: bool = True,
                          config: SynthConfig | None = None, *, resume: bool = False,
                          resume_hint: str | None = None, depth_codec: str = "png16") -> dict:
    """Render a synthetic corpus into ``out`` as shards; return its index.

    ``resume=True`` finishes an interrupted run with the same arguments (its verified shards
    are kept; see :func:`~gemdepth.data.shards.write_corpus`); ``resume_hint`` is the command
    that does so, shown by readers that refuse the unfinished folder. ``depth_codec``: how
    depth is stored (``png16`` default, ``raw16``, ``zlib16``: see :mod:`gemdepth.data.shards`).
    """
    from dataclasses import asdict

    from gemdepth.data.shards import write_corpus

    clips = iter_synthetic_clips(sequences, frames, clip_length, size, seed, pose_free, workers,
                                 config)
    corpus = POSE_FREE_CORPUS_NAME if pose_free else CORPUS_NAME
    source = {"format": "synthetic", "sequences": sequences, "frames": frames,
              "clip_length": clip_length, "size": list(size), "seed": seed,
              "pose_free": pose_free, "config": asdict(config or SynthConfig())}
    if depth_codec != "png16":  # the default leaves the recorded source as it always was
        source["depth_codec"] = depth_codec
    return write_corpus(clips, Path(out), corpus, clips_per_shard=clips_per_shard,
                        progress=progress, total=sequences * (frames // clip_length),
                        resume=resume, source=json.loads(json.dumps(source, default=str)),
                        resume_hint=resume_hint, depth_codec=depth_codec)
