"""Bones on the canvas: ribs, clavicles, spine, scapulae and humeral heads."""

from __future__ import annotations

import numpy as np

from anaxreport.data._anatomy import MU_BONE, Anatomy, Canvas, lateral_border

__all__ = ["render_bones"]


def _shell(d: np.ndarray, r: np.ndarray | float, inner: float = 0.72) -> np.ndarray:
    """Chord length through a hollow bone (bright cortex, lighter marrow) at distance ``d``."""
    outer = 2.0 * np.sqrt(np.clip(r * r - d * d, 0.0, None))
    ri = r * inner
    core = 2.0 * np.sqrt(np.clip(ri * ri - d * d, 0.0, None))
    return outer - 0.65 * core


def _band(
    out: np.ndarray,
    c: Canvas,
    xs: tuple[float, float],
    centre: np.ndarray,
    half: np.ndarray,
    weight: float,
) -> None:
    """Add a curved bone band whose centre line ``centre`` (y per canvas column) spans ``xs``."""
    x = c.x
    cols = np.flatnonzero((x >= xs[0]) & (x <= xs[1]))
    if cols.size < 2:
        return
    yc, hw = centre[cols], half[cols]
    slope = np.gradient(yc, c.step)
    cos = 1.0 / np.sqrt(1.0 + slope * slope)
    reach = hw / cos
    r0 = max(int(c.row(float(np.min(yc - reach)))) - 1, 0)
    r1 = min(int(c.row(float(np.max(yc + reach)))) + 2, c.rows)
    if r1 <= r0:
        return
    y = c.y[r0:r1, None]
    d = (y - yc[None, :]) * cos[None, :]
    out[r0:r1, cols[0] : cols[-1] + 1] += weight * _shell(d, hw[None, :])


def _ribs(a: Anatomy, c: Canvas, rng: np.random.Generator, out: np.ndarray) -> None:
    x = c.x
    ax = np.abs(x)
    for side in (-1, 1):
        sx = side * x
        for k in range(12):
            yk = -0.08 * a.height_r + k * a.rib_step + rng.normal(0.0, 0.6)
            lat_y = yk + 0.35 * a.rib_step
            lat = float(lateral_border(a, np.array([max(lat_y, 2.0)], np.float32), side)[0])
            lat = max(lat, a.apex_x + 10.0) + 7.0
            t = np.clip((ax - 14.0) / (lat - 14.0), 0.0, 1.0)
            rise = 1.1 * a.rib_step * (1.6 * t - 1.2 * t * t)
            drop = 1.5 * a.rib_step * np.clip((t - 0.55) / 0.45, 0.0, 1.0) ** 2.0
            centre = yk - rise + drop
            half = np.full_like(x, 0.2 * a.rib_step + 0.5)
            xs = (14.0, lat) if side > 0 else (-lat, -14.0)
            _band(out, c, xs, centre, half, 0.4 * MU_BONE)
            # Anterior rib: from the lateral wall down and in towards the costal cartilage.
            y_out = yk - rise[np.argmax(sx)] + 1.4 * a.rib_step
            end = 0.30 * a.width + 2.0 * k
            u = np.clip((lat - 4.0 - ax) / (lat - 4.0 - end), 0.0, 1.0)
            a_centre = y_out + 2.4 * a.rib_step * (0.75 * u + 0.25 * u * u)
            a_half = np.full_like(x, 0.27 * a.rib_step)
            xs = (end, lat - 4.0) if side > 0 else (-(lat - 4.0), -end)
            _band(out, c, xs, a_centre, a_half, 0.12 * MU_BONE)
        del sx


def _clavicles(a: Anatomy, c: Canvas, rng: np.random.Generator, out: np.ndarray) -> None:
    x = c.x
    for side in (-1, 1):
        x0, x1 = 16.0, a.width + rng.uniform(30.0, 45.0)
        t = np.clip((side * x - x0) / (x1 - x0), 0.0, 1.0)
        wiggle = 5.0 * np.sin(2.0 * np.pi * t)
        centre = a.clavicle_med + (a.clavicle_lat - a.clavicle_med) * t**1.2 - wiggle
        half = 9.0 - 3.0 * t + 2.0 * np.exp(-(((t - 0.04) / 0.06) ** 2))
        xs = (x0, x1) if side > 0 else (-x1, -x0)
        _band(out, c, xs, centre.astype(np.float32), half.astype(np.float32), 1.15 * MU_BONE)


def _spine(a: Anatomy, c: Canvas, out: np.ndarray) -> None:
    x, y = c.x[None, :], c.y[:, None]
    top = -0.08 * a.height_r
    level = (y - top) / a.rib_step
    frac = level - np.floor(level)
    body_half = 15.0 + 5.0 * np.clip(level / 12.0, 0.0, 1.0)
    disc = np.clip(np.abs(frac - 0.92) / 0.07, 0.0, 1.0)  # disc spaces are lucent
    column = _shell(x, body_half, inner=0.82) * (0.55 + 0.45 * disc)
    out += 0.22 * MU_BONE * column
    # Pedicles (paired rings) and spinous processes (midline teardrops).
    ped_y = (frac - 0.35) * a.rib_step
    for px in (-1.0, 1.0):
        r = np.hypot((x - px * (body_half - 4.0)) / 4.5, ped_y / 6.0)
        out += 0.10 * MU_BONE * 10.0 * np.clip(1.0 - np.abs(r - 0.8) / 0.3, 0.0, 1.0)
    sp = np.hypot(x / 3.5, (frac - 0.75) * a.rib_step / 7.0)
    out += 0.12 * MU_BONE * 10.0 * np.clip(1.0 - sp, 0.0, 1.0)


def _shoulders(a: Anatomy, c: Canvas, rng: np.random.Generator, out: np.ndarray) -> None:
    x, y = c.x[None, :], c.y[:, None]
    push = 0.22 * a.width if a.view == "PA" else 0.0  # PA rotates the scapulae off the lungs
    for side in (-1, 1):
        hx, hy, hr = side * (a.width + 58.0), -0.02 * a.height_r, rng.uniform(22.0, 28.0)
        d = np.hypot(x - hx, y - hy)
        out += 0.5 * MU_BONE * _shell(d, hr, inner=0.6)
        # Humeral shaft running down and out from the head.
        shaft_x = hx + side * 0.25 * (y - hy)
        fade = np.clip((y - hy) / hr, 0.0, 1.0)
        shaft = _shell(x - shaft_x, 12.0, inner=0.6) * fade
        out += 0.35 * MU_BONE * shaft
        # Scapula: a thin triangular plate with a visible medial border.
        p = [
            (side * (a.width + 40.0), -0.03 * a.height_r),
            (side * (0.70 * a.width + push), 0.10 * a.height_r),
            (side * (0.80 * a.width + push), 0.58 * a.height_r),
        ]
        inside = np.ones((c.rows, c.cols), bool)
        for (x1, y1), (x2, y2) in zip(p, p[1:] + p[:1], strict=True):
            cross = (x2 - x1) * (y - y1) - (y2 - y1) * (x - x1)
            inside &= (cross * side) <= 0
        out += 0.12 * MU_BONE * 10.0 * inside


def render_bones(a: Anatomy, c: Canvas, rng: np.random.Generator) -> np.ndarray:
    """All bones as one attenuation layer."""
    out = np.zeros((c.rows, c.cols), np.float32)
    _spine(a, c, out)
    _ribs(a, c, rng, out)
    _clavicles(a, c, rng, out)
    _shoulders(a, c, rng, out)
    return out
