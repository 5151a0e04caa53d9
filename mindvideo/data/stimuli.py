"""Procedural stimulus clips for the simulated dataset: 12 semantic classes with object motion and camera moves.

Each class is a small vectorised renderer: time ``t`` (n, 1, 1) in seconds and image coordinates ``x, y``
(1, H, W) in [-1, 1] (y pointing down) in, frames ``(n, H, W, 3)`` float32 in [0, 1] and a caption out. Random
parameters (colour, direction, speed, position) come from the caller's generator, so a seed fixes every clip.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

COLOURS = {
    "red": (0.9, 0.15, 0.1),
    "green": (0.1, 0.75, 0.2),
    "blue": (0.15, 0.3, 0.95),
    "yellow": (0.95, 0.85, 0.1),
    "purple": (0.6, 0.2, 0.8),
    "orange": (1.0, 0.55, 0.1),
    "white": (0.95, 0.95, 0.95),
    "cyan": (0.1, 0.8, 0.85),
}
DIRECTIONS = {"right": (1.0, 0.0), "left": (-1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}

Frames = np.ndarray
Renderer = Callable[[np.ndarray, np.ndarray, np.ndarray, np.random.Generator], tuple[Frames, str]]


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _colour(rng: np.random.Generator) -> tuple[str, np.ndarray]:
    name = str(rng.choice(list(COLOURS)))
    return name, np.asarray(COLOURS[name], np.float32)


def _direction(rng: np.random.Generator) -> tuple[str, np.ndarray]:
    name = str(rng.choice(list(DIRECTIONS)))
    return name, np.asarray(DIRECTIONS[name], np.float32)


def _canvas(t: np.ndarray, x: np.ndarray, grey: float) -> Frames:
    return np.full((t.shape[0], x.shape[1], x.shape[2], 3), grey, np.float32)


def _paint(frames: Frames, mask: np.ndarray, colour: np.ndarray) -> Frames:
    frames[np.broadcast_to(mask, frames.shape[:3])] = colour
    return frames


def _grey(values: np.ndarray, tint: np.ndarray | None = None) -> Frames:
    """(n, H, W) luminance in [0, 1] → RGB, optionally tinted."""
    rgb = np.repeat(values[..., None], 3, axis=-1).astype(np.float32)
    return rgb if tint is None else rgb * (0.5 + 0.5 * tint)


# --------------------------------------------------------------------------------------------------- objects


def circle(t, x, y, rng):
    name, colour = _colour(rng)
    way, d = _direction(rng)
    speed, offset = rng.uniform(0.25, 0.45), rng.uniform(-0.4, 0.4)
    cx, cy = -0.7 * d[0] + offset * d[1] + speed * d[0] * t, -0.7 * d[1] + offset * d[0] + speed * d[1] * t
    mask = (x - cx) ** 2 + (y - cy) ** 2 < 0.3**2
    return _paint(_canvas(t, x, 0.45), mask, colour), f"{_a(name)} {name} ball moving {way}"


def square(t, x, y, rng):
    name, colour = _colour(rng)
    spin = rng.choice([-1.0, 1.0]) * rng.uniform(0.8, 1.6)
    angle = spin * t
    xr, yr = x * np.cos(angle) + y * np.sin(angle), -x * np.sin(angle) + y * np.cos(angle)
    mask = (np.abs(xr) < 0.35) & (np.abs(yr) < 0.35)
    way = "clockwise" if spin > 0 else "counter-clockwise"
    return _paint(_canvas(t, x, 0.4), mask, colour), f"{_a(name)} {name} square rotating {way}"


def triangle(t, x, y, rng):
    name, colour = _colour(rng)
    cx, height = rng.uniform(-0.4, 0.4), np.abs(np.sin(np.pi * rng.uniform(0.6, 1.0) * t))
    cy = 0.5 - 0.9 * height
    u, v = (x - cx) / 0.35, (y - cy) / 0.35
    mask = (v < 0.5) & (v > -1.0 + 1.5 * np.abs(u))
    return _paint(_canvas(t, x, 0.5), mask, colour), f"{_a(name)} {name} triangle bouncing"


def star(t, x, y, rng):
    name, colour = _colour(rng)
    spin = rng.uniform(1.5, 3.0)
    radius, phi = np.sqrt(x**2 + y**2), np.arctan2(y, x)
    mask = radius < 0.3 * (1.0 + 0.6 * np.cos(5.0 * (phi - spin * t)))
    return _paint(_canvas(t, x, 0.3), mask, colour), f"a spinning {name} star"


def cross(t, x, y, rng):
    name, colour = _colour(rng)
    sx, sy = rng.choice([-1.0, 1.0], size=2)
    cx, cy = sx * (-0.6 + 0.3 * t), sy * (-0.6 + 0.3 * t)
    u, v = np.abs(x - cx), np.abs(y - cy)
    mask = ((u < 0.1) & (v < 0.4)) | ((u < 0.4) & (v < 0.1))
    return _paint(_canvas(t, x, 0.55), mask, colour), f"{_a(name)} {name} cross sliding diagonally"


# --------------------------------------------------------------------------------------------------- textures


def grating(t, x, y, rng):
    theta, freq, speed = rng.uniform(0, np.pi), rng.uniform(2.0, 4.0), rng.uniform(2.0, 4.0)
    phase = 2 * np.pi * freq * (x * np.cos(theta) + y * np.sin(theta)) - speed * t
    return _grey(0.5 + 0.45 * np.sin(phase)), "black and white stripes drifting"


def checkerboard(t, x, y, rng):
    checks, rate = rng.integers(3, 6), rng.uniform(2.0, 4.0)
    board = np.sign(np.sin(np.pi * checks * x) * np.sin(np.pi * checks * y))
    flip = np.sign(np.sin(2 * np.pi * rate * t) + 1e-6)
    return _grey(0.5 + 0.45 * board * flip), "a flickering checkerboard"


def rings(t, x, y, rng):
    name, colour = _colour(rng)
    freq, speed = rng.uniform(2.0, 3.5), rng.uniform(3.0, 6.0)
    values = 0.5 + 0.45 * np.sin(2 * np.pi * freq * np.sqrt(x**2 + y**2) - speed * t)
    return _grey(values, colour), f"{name} rings expanding from the centre"


def dots(t, x, y, rng):
    name, colour = _colour(rng)
    way, d = _direction(rng)
    size, count = x.shape[1], 60
    start = rng.uniform(-1, 1, size=(1, count, 2))
    pos = (start + 0.5 * d * t.reshape(-1, 1, 1) + 1.0) % 2.0 - 1.0  # (n, N, 2), wrapping around
    frames = _canvas(t, x, 0.15)
    px = np.clip(((pos + 1.0) / 2.0 * size).astype(int), 0, size - 2)
    rows = np.arange(len(frames))[:, None]
    for dy in (0, 1):
        for dx in (0, 1):
            frames[rows, px[..., 1] + dy, px[..., 0] + dx] = colour
    return frames, f"{name} dots drifting {way}"


# --------------------------------------------------------------------------------------------------- camera moves


def landscape(t, x, y, rng):
    way = str(rng.choice(["left", "right"]))
    pan = (0.4 if way == "right" else -0.4) * t
    freqs, phases = rng.uniform(1.0, 3.0, size=3), rng.uniform(0, 2 * np.pi, size=3)
    u = x + pan
    horizon = 0.1 + sum(0.12 * np.sin(f * np.pi * u + p) for f, p in zip(freqs, phases))
    frames = np.empty((t.shape[0], x.shape[1], x.shape[2], 3), np.float32)
    sky = (0.35 + 0.3 * (y + 1) / 2)[..., None] * np.asarray([0.6, 0.8, 1.0], np.float32)
    frames[:] = np.broadcast_to(sky, frames.shape)
    frames = _paint(frames, y > horizon, np.asarray([0.15, 0.55, 0.15], np.float32))
    sun = (u - 0.5) ** 2 + (y + 0.6) ** 2 < 0.15**2
    return _paint(frames, sun & (y <= horizon), np.asarray([1.0, 0.9, 0.3], np.float32)), (
        f"green hills under a blue sky, the camera panning {way}"
    )


def clouds(t, x, y, rng):
    waves = rng.normal(size=(8, 2)) * 2.5
    phases = rng.uniform(0, 2 * np.pi, size=8)
    zoom = 1.0 / (1.0 + 0.25 * t)  # the camera zooms in: coordinates shrink over time
    field = sum(np.sin(w[0] * x * zoom + w[1] * y * zoom + p) for w, p in zip(waves, phases)) / math.sqrt(8)
    values = 0.6 + 0.25 * np.tanh(field)
    return _grey(values, np.asarray([0.7, 0.8, 1.0], np.float32)), "white clouds, the camera zooming in"


def plaid(t, x, y, rng):
    name, colour = _colour(rng)
    roll = rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 0.6) * t  # camera roll
    xr, yr = x * np.cos(roll) + y * np.sin(roll), -x * np.sin(roll) + y * np.cos(roll)
    values = 0.5 + 0.22 * (np.sin(2 * np.pi * 2.5 * xr) + np.sin(2 * np.pi * 2.5 * yr))
    return _grey(values, colour), f"{_a(name)} {name} plaid pattern, the camera rolling"


CLASSES: dict[str, Renderer] = {
    "ball": circle,
    "square": square,
    "stripes": grating,
    "checkerboard": checkerboard,
    "triangle": triangle,
    "rings": rings,
    "dots": dots,
    "star": star,
    "landscape": landscape,
    "clouds": clouds,
    "cross": cross,
    "plaid": plaid,
}
CLASS_NAMES = tuple(CLASSES)


def render_clip(class_id: int, n_frames: int, size: int, fps: float, rng: np.random.Generator) -> tuple[Frames, str]:
    """``n_frames`` frames ``(n, size, size, 3)`` float32 in [0, 1] of class ``class_id`` and its caption."""
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    y, x = np.meshgrid(coords, coords, indexing="ij")
    t = (np.arange(n_frames, dtype=np.float32) / fps).reshape(-1, 1, 1)
    frames, caption = CLASSES[CLASS_NAMES[class_id]](t, x[None], y[None], rng)
    return np.clip(frames, 0.0, 1.0).astype(np.float32), caption
