"""Tubes on the canvas: pulmonary vessel trees fanning from the hila, and lung texture."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from anaxreport.data._anatomy import MU_SOFT, Anatomy, Canvas, Masks

__all__ = ["blur", "draw_tubes", "lung_texture", "render_vessels", "smooth_noise"]


def draw_tubes(out: np.ndarray, c: Canvas, segs: np.ndarray, weight: float = 1.0) -> None:
    """Draw tapered cylinders ``x1, y1, x2, y2, r1, r2`` (mm) into ``out`` as chord lengths (mm).

    Overlaps take the maximum, so branch joints do not light up as beads.
    """
    step = c.step
    for x1, y1, x2, y2, r1, r2 in segs:
        r = max(r1, r2)
        c0 = max(int((min(x1, x2) - r - c.x0) / step), 0)
        c1 = min(int((max(x1, x2) + r - c.x0) / step) + 2, c.cols)
        q0 = max(int((min(y1, y2) - r - c.y0) / step), 0)
        q1 = min(int((max(y1, y2) + r - c.y0) / step) + 2, c.rows)
        if c1 <= c0 or q1 <= q0:
            continue
        px = (c.x0 + (np.arange(c0, c1, dtype=np.float32) + 0.5) * step)[None, :]
        py = (c.y0 + (np.arange(q0, q1, dtype=np.float32) + 0.5) * step)[:, None]
        dx, dy = x2 - x1, y2 - y1
        length2 = dx * dx + dy * dy + 1e-6
        t = np.clip(((px - x1) * dx + (py - y1) * dy) / length2, 0.0, 1.0)
        d2 = (px - x1 - t * dx) ** 2 + (py - y1 - t * dy) ** 2
        rad = r1 + (r2 - r1) * t
        chord = weight * 2.0 * np.sqrt(np.clip(rad * rad - d2, 0.0, None))
        np.maximum(out[q0:q1, c0:c1], chord, out=out[q0:q1, c0:c1])


def _tree(
    rng: np.random.Generator,
    start: tuple[float, float],
    angle: float,
    length: float,
    radius: float,
    depth: int,
    segs: list[tuple[float, ...]],
) -> None:
    """A branching, tapering vessel: each branch bends a little and splits in two."""
    x, y = start
    n = 2
    for _ in range(n):
        angle += rng.normal(0.0, 0.12)
        nx = x + math.cos(angle) * length / n
        ny = y + math.sin(angle) * length / n
        r2 = radius * 0.9
        segs.append((x, y, nx, ny, radius, r2))
        x, y, radius = nx, ny, r2
    if depth <= 0 or radius < 0.45:
        return
    spread = rng.uniform(0.3, 0.6)
    for sign in (-1.0, 1.0):
        share = rng.uniform(0.72, 0.86)
        _tree(
            rng,
            (x, y),
            angle + sign * spread * rng.uniform(0.6, 1.2),
            length * rng.uniform(0.7, 0.85),
            radius * share,
            depth - 1,
            segs,
        )


def vessel_segments(a: Anatomy, m: Masks, rng: np.random.Generator) -> np.ndarray:
    """Segments of the pulmonary arteries and veins, fanning from both hila."""
    segs: list[tuple[float, ...]] = []
    for side, (hx, hy) in zip((-1, 1), m.hila, strict=True):
        # Directions measured from +x (patient's left) with y down; mirror for the right side.
        fan = [(-1.25, 0.9), (-0.75, 1.0), (-0.25, 1.0), (0.25, 1.0), (0.75, 1.1), (1.15, 1.0)]
        for base, scale in fan:
            ang = base + rng.normal(0.0, 0.08)
            ang = ang if side > 0 else math.pi - ang
            length = a.width * 0.32 * scale * rng.uniform(0.85, 1.15)
            _tree(rng, (hx, hy), ang, length, rng.uniform(4.0, 5.5), 5, segs)
        # The main hilar arteries: right descending interlobar, left arching over the bronchus.
        if side < 0:
            segs.append((hx + 6, hy - 8, hx - 4, hy + 18, 7.0, 6.0))
            segs.append((hx - 4, hy + 18, hx - 10, hy + 55, 6.0, 4.0))
        else:
            segs.append((hx - 14, hy - 14, hx + 2, hy - 16, 7.0, 7.0))
            segs.append((hx + 2, hy - 16, hx + 10, hy + 8, 7.0, 5.5))
            segs.append((hx + 10, hy + 8, hx + 12, hy + 45, 5.5, 3.5))
    return np.asarray(segs, np.float32)


def render_vessels(a: Anatomy, c: Canvas, m: Masks, rng: np.random.Generator) -> np.ndarray:
    """Vascular markings as attenuation, visible only over aerated lung and the hila."""
    out = np.zeros((c.rows, c.cols), np.float32)
    draw_tubes(out, c, vessel_segments(a, m, rng))
    lungs = (m.lung_r | m.lung_l).astype(np.float32)
    hilum = (m.hilum_r | m.hilum_l).astype(np.float32)
    # Peripheral vessels fade out: the outer third of the lung shows few markings.
    fade = np.ones_like(out)
    y = c.y[:, None]
    x = c.x[None, :]
    for side, (hx, hy) in zip((-1, 1), m.hila, strict=True):
        d = np.hypot((x - hx) / (0.95 * a.width), (y - hy) / (0.7 * a.height_r))
        sel = (x < 0) if side < 0 else (x >= 0)
        fade = np.where(sel, np.clip(1.45 - d, 0.2, 1.0), fade)
    visible = np.clip(lungs + 0.7 * hilum, 0.0, 1.0) * fade
    return (1.4 * MU_SOFT * out * visible).astype(np.float32)


def smooth_noise(shape: tuple[int, int], scale: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean unit-ish noise with a correlation length of ``scale`` pixels."""
    rows, cols = shape
    f = max(scale / 2.0, 1.0)
    small = (max(int(rows / f) + 3, 4), max(int(cols / f) + 3, 4))
    base = torch.from_numpy(rng.standard_normal(small).astype(np.float32))[None, None]
    up = F.interpolate(base, size=(rows, cols), mode="bicubic", align_corners=False)
    return up[0, 0].numpy()


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur (``sigma`` in pixels); large sigmas are done on a decimated copy."""
    if sigma < 0.3:
        return image
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    factor = max(int(sigma // 3), 1)
    if factor > 1:
        t = F.avg_pool2d(t, factor, ceil_mode=True)
        sigma_small = math.sqrt(max(sigma**2 - factor**2 / 4.0, 0.25)) / factor
    else:
        sigma_small = sigma
    radius = max(int(3 * sigma_small + 0.5), 1)
    k = torch.exp(
        -0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float32) / sigma_small) ** 2
    )
    k = k / k.sum()
    t = F.pad(t, (radius, radius, radius, radius), mode="replicate")
    t = F.conv2d(t, k.view(1, 1, 1, -1))
    t = F.conv2d(t, k.view(1, 1, -1, 1))
    if factor > 1:
        t = F.interpolate(t, size=image.shape, mode="bilinear", align_corners=False)
    return t[0, 0].numpy()


def lung_texture(c: Canvas, m: Masks, rng: np.random.Generator) -> np.ndarray:
    """Faint mottled parenchyma, so lungs are not a flat gradient."""
    lungs = (m.lung_r | m.lung_l).astype(np.float32)
    fine = smooth_noise((c.rows, c.cols), 3.0 / c.step, rng)
    coarse = smooth_noise((c.rows, c.cols), 12.0 / c.step, rng)
    return (MU_SOFT * (0.6 * fine + 2.0 * coarse) * lungs).astype(np.float32)
