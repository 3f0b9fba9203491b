"""Geometry and attenuation of a synthetic frontal chest, in an upright anatomical frame.

Everything here lives on a *canvas*: an axis-aligned grid in millimetres whose x runs from the
patient's right (image left) to the patient's left, with x = 0 on the midline, and whose y runs
down from the lung apices (y = 0). Because the canvas is axis-aligned, every outline is a 1-D
function of y (or x) and masks are cheap broadcasts; :mod:`anaxreport.data.phantom` then rotates
and places the canvas into the source image with one resampling.

Attenuation is accumulated as line integrals (mm of tissue times an effective coefficient), so
bone adds, air subtracts, and overlapping structures sum the way they do on a radiograph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Anatomy", "Canvas", "Layers", "Masks", "build_masks", "render_layers", "sample_anatomy"]

MU_SOFT = 0.020  # effective soft-tissue attenuation, 1/mm
MU_BONE = 0.045  # extra attenuation of cortical bone over soft tissue, 1/mm
LUNG_TISSUE = 0.22  # fraction of aerated lung volume that is tissue


@dataclass(frozen=True)
class Anatomy:
    """One patient's chest, in mm of the anatomical frame (see module docstring)."""

    view: str  # "PA" or "AP"
    sex: str  # "M" or "F"
    width: float  # half-width of the thorax at the widest lung level (inner rib margin)
    height_r: float  # apex -> right costophrenic angle
    height_l: float  # apex -> left costophrenic angle (the left dome sits lower)
    dome_r: float  # right dome height above its costophrenic angle
    dome_l: float
    apex_x: float  # distance of each apex centre from the midline
    heart_right: float  # heart extent right of the midline
    heart_left: float  # heart extent left of the midline
    heart_top: float  # y of the top of the cardiac silhouette
    knob_y: float
    knob_r: float
    carina_y: float
    trachea_r: float
    rib_step: float  # vertical spacing of posterior ribs at the spine
    body_depth: float  # antero-posterior thickness of the chest
    lung_depth: float  # antero-posterior thickness of the lungs
    clavicle_med: float  # y of the medial clavicle heads
    clavicle_lat: float  # y of the acromial ends

    @property
    def height(self) -> float:
        return max(self.height_r, self.height_l)


def sample_anatomy(rng: np.random.Generator, view: str, ctr: float) -> Anatomy:
    """Draw a patient; ``ctr`` is the target cardiothoracic ratio (heart width / thorax width)."""
    size = rng.uniform(0.86, 1.14)
    width = 138.0 * size * rng.uniform(0.93, 1.07)
    inspiration = rng.uniform(0.86, 1.08)
    height_r = width * rng.uniform(1.62, 1.92) * inspiration
    dome_r = height_r * rng.uniform(0.11, 0.19) * (1.25 - 0.35 * inspiration)
    height_l = height_r + rng.uniform(4.0, 18.0)
    heart_w = ctr * 2.0 * width
    right_share = rng.uniform(0.28, 0.36) - (0.03 if ctr > 0.5 else 0.0)
    ap = view == "AP"
    clav_med = height_r * (rng.uniform(-0.04, 0.04) if ap else rng.uniform(0.08, 0.14))
    clav_lat = clav_med - height_r * (rng.uniform(0.10, 0.18) if ap else rng.uniform(0.02, 0.08))
    return Anatomy(
        view=view,
        sex="F" if rng.random() < 0.45 else "M",
        width=width,
        height_r=height_r,
        height_l=height_l,
        dome_r=dome_r,
        dome_l=dome_r * rng.uniform(0.8, 1.0),
        apex_x=width * rng.uniform(0.38, 0.46),
        heart_right=heart_w * right_share,
        heart_left=heart_w * (1.0 - right_share),
        heart_top=height_r * rng.uniform(0.40, 0.46),
        knob_y=height_r * rng.uniform(0.20, 0.26),
        knob_r=rng.uniform(12.0, 19.0),
        carina_y=height_r * rng.uniform(0.29, 0.35),
        trachea_r=rng.uniform(7.5, 10.0),
        rib_step=height_r / rng.uniform(9.3, 10.8) * (1.0 / inspiration) ** 0.3,
        body_depth=width * rng.uniform(1.45, 1.75),
        lung_depth=width * rng.uniform(0.95, 1.15),
        clavicle_med=clav_med,
        clavicle_lat=clav_lat,
    )


@dataclass(frozen=True)
class Canvas:
    """An axis-aligned mm grid: ``x`` per column, ``y`` per row, both cell centres."""

    x0: float
    y0: float
    step: float
    rows: int
    cols: int

    @property
    def x(self) -> np.ndarray:
        return (self.x0 + (np.arange(self.cols) + 0.5) * self.step).astype(np.float32)

    @property
    def y(self) -> np.ndarray:
        return (self.y0 + (np.arange(self.rows) + 0.5) * self.step).astype(np.float32)

    def col(self, x: float) -> float:
        return (x - self.x0) / self.step

    def row(self, y: float) -> float:
        return (y - self.y0) / self.step


def _smooth(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def lateral_border(a: Anatomy, y: np.ndarray, side: int) -> np.ndarray:
    """Distance of the lateral lung border from the midline (rounded apex, convex flank)."""
    h = a.height_r if side < 0 else a.height_l
    s = np.clip(y / (0.84 * h), 0.0, 1.0)
    lat = a.apex_x + (a.width - a.apex_x) * (2.0 * s - s * s) ** 0.55
    t = np.clip((y - 0.84 * h) / (0.16 * h), 0.0, 1.0)
    return (lat - 0.05 * a.width * t * t).astype(np.float32)


def medial_border(a: Anatomy, y: np.ndarray, side: int, cap: bool = True) -> np.ndarray:
    """Distance of the mediastinal lung border from the midline (heart, knob, vessels).

    ``cap`` includes the rounded medial side of the apex; without it the border is the
    mediastinal contour alone (what the mediastinum boxes are cut from).
    """
    s = np.clip(y / (0.22 * a.height_r), 0.0, 1.0)
    apex = a.apex_x - (a.apex_x - 12.0) * (2.0 * s - s * s) ** 0.55
    if side < 0:
        band = 20.0 + 9.0 * _smooth((y - 0.12 * a.height_r) / (0.25 * a.height_r))
    else:
        band = 19.0 + 4.0 * _smooth((y - 0.30 * a.height_r) / (0.1 * a.height_r))
        dy = (y - a.knob_y) / (1.4 * a.knob_r)
        knob = 10.0 + a.knob_r * (0.7 + 0.8 * np.sqrt(np.clip(1.0 - dy * dy, 0.0, None)))
        band = np.maximum(band, np.where(np.abs(dy) < 1.0, knob, 0.0))
    parts = [band, heart_border(a, y, side)] + ([apex] if cap else [])
    return np.maximum.reduce(parts).astype(np.float32)


def heart_border(a: Anatomy, y: np.ndarray, side: int) -> np.ndarray:
    """Half-width of the cardiac silhouette on one side (0 above the heart)."""
    h = a.height_r if side < 0 else a.height_l
    dome = a.dome_r if side < 0 else a.dome_l
    bottom = h - 0.5 * dome
    t = (y - a.heart_top) / (bottom - a.heart_top)
    if side < 0:
        r = a.heart_right * (0.5 + 0.5 * np.sin(np.pi * np.clip(t, 0.0, 1.0) * 0.8))
    else:
        b0 = min(0.45, 24.0 / a.heart_left)
        rise = np.sin(0.5 * np.pi * np.clip(t / 0.88, 0.0, 1.0)) ** 0.9
        r = a.heart_left * (b0 + (1.0 - b0) * rise)
        r = r - 0.10 * a.heart_left * np.clip((t - 0.88) / 0.12, 0.0, 1.0) ** 2
    return np.where(t >= 0.0, r, 0.0).astype(np.float32)


def diaphragm(a: Anatomy, x: np.ndarray) -> np.ndarray:
    """y of the diaphragm surface (domes, sharp costophrenic recesses) for every x."""
    out = np.empty_like(x, dtype=np.float32)
    for side, h, dome in ((-1, a.height_r, a.dome_r), (1, a.height_l, a.dome_l)):
        sel = (x < 0) if side < 0 else (x >= 0)
        lat = float(lateral_border(a, np.array([h], np.float32), side)[0])
        inner = 0.12 * a.width
        u = (side * x[sel] - inner) / (lat - inner)
        peak = 0.45
        outer = (
            np.clip(np.cos(0.5 * np.pi * np.clip((u - peak) / (1.0 - peak), 0.0, 1.0)), 0.0, 1.0)
            ** 0.75
        )
        medial = 1.0 - 0.4 * ((peak - np.clip(u, 0.0, peak)) / peak) ** 2
        out[sel] = h - dome * np.where(u > peak, outer, medial)
    return out


@dataclass(frozen=True)
class Masks:
    """Boolean canvas masks the boxes are cut from and the findings are planted in."""

    lung_r: np.ndarray
    lung_l: np.ndarray
    heart: np.ndarray
    mediastinum: np.ndarray
    upper_mediastinum: np.ndarray
    trachea: np.ndarray
    hilum_r: np.ndarray
    hilum_l: np.ndarray
    hila: tuple[tuple[float, float], tuple[float, float]]  # (x, y) of right, left hilum

    def lung(self, side: int) -> np.ndarray:
        return self.lung_r if side < 0 else self.lung_l


def _ellipse(c: Canvas, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    x, y = c.x[None, :], c.y[:, None]
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0


def build_masks(a: Anatomy, c: Canvas) -> Masks:
    """The pleural cavities, heart, mediastinum, trachea and hila as canvas masks."""
    x, y = c.x, c.y
    dia = diaphragm(a, x)[None, :]
    lungs = []
    for side, h in ((-1, a.height_r), (1, a.height_l)):
        lat, med = lateral_border(a, y, side)[:, None], medial_border(a, y, side)[:, None]
        sx = side * x[None, :]
        inside = (sx <= lat) & (sx >= med) & (y[:, None] >= 0) & (y[:, None] <= h)
        lungs.append(inside & (y[:, None] <= dia))
    hr, hl = heart_border(a, y, -1)[:, None], heart_border(a, y, 1)[:, None]
    heart = (x[None, :] >= -hr) & (x[None, :] <= hl) & (hr > 0) & (y[:, None] <= dia)
    mr = medial_border(a, y, -1, cap=False)[:, None]
    ml = medial_border(a, y, 1, cap=False)[:, None]
    inlet = -0.04 * a.height_r
    central = (x[None, :] >= -mr) & (x[None, :] <= ml) & (y[:, None] >= inlet) & (y[:, None] <= dia)
    central &= ~lungs[0] & ~lungs[1]
    upper = central & (y[:, None] <= a.heart_top - 0.02 * a.height_r)
    tx = trachea_x(a, y)[:, None]
    trachea = (np.abs(x[None, :] - tx) <= a.trachea_r) & (y[:, None] >= -0.22 * a.height_r)
    trachea &= y[:, None] <= a.carina_y
    hila = []
    for side, hy in ((-1, 0.40 * a.height_r), (1, 0.36 * a.height_r)):
        hx = side * (float(medial_border(a, np.array([hy], np.float32), side)[0]) + 16.0)
        hila.append((hx, hy))
    masks = [_ellipse(c, hx, hy + 8.0, 0.16 * a.width, 0.11 * a.height_r) for hx, hy in hila]
    return Masks(
        lung_r=lungs[0],
        lung_l=lungs[1],
        heart=heart,
        mediastinum=central,
        upper_mediastinum=upper,
        trachea=trachea,
        hilum_r=masks[0] & ~lungs[1],
        hilum_l=masks[1] & ~lungs[0],
        hila=(hila[0], hila[1]),
    )


def trachea_x(a: Anatomy, y: np.ndarray) -> np.ndarray:
    """Tracheal axis: midline, nudged to the right by the aortic knob."""
    return (-3.0 * np.exp(-(((y - a.knob_y) / 25.0) ** 2))).astype(np.float32)


@dataclass
class Layers:
    """Attenuation line integrals on the canvas, kept apart so findings can edit them."""

    soft: np.ndarray  # body soft tissue minus lung air (and lung tissue)
    bone: np.ndarray
    vessels: np.ndarray  # lung vascular markings and hila
    texture: np.ndarray  # faint parenchymal texture
    lung_air: np.ndarray  # mm of aerated lung along each ray (for findings that replace air)

    def total(self) -> np.ndarray:
        return self.soft + self.bone + self.vessels + self.texture


def body_thickness(a: Anatomy, c: Canvas) -> np.ndarray:
    """mm of soft tissue along each ray: neck, shoulders, chest wall, abdomen."""
    y = c.y
    neck = 0.36 * a.width
    shoulder = a.width + 62.0
    s0, s1 = -0.30 * a.height_r, 0.02 * a.height_r
    half = neck + (shoulder - neck) * np.sqrt(np.clip((y - s0) / (s1 - s0), 0.0, 1.0))
    waist = a.width + 30.0 + 10.0 * np.clip(y / a.height, 0.0, 1.5)
    half = np.where(y > 0.45 * a.height_r, waist, half)
    blend = _smooth((y - 0.15 * a.height_r) / (0.3 * a.height_r))
    half = np.where(y > s1, (1 - blend) * shoulder + blend * waist, half)
    depth = 0.55 * a.body_depth + 0.45 * a.body_depth * _smooth((y - s0) / (s1 - s0 + 40.0))
    r = c.x[None, :] / half[:, None]
    trunk = depth[:, None] * np.sqrt(np.clip(1.0 - r * r, 0.0, None))
    # Arms hang down and out from the shoulders, soft tissue around the humerus.
    arms = np.zeros_like(trunk)
    hy = -0.02 * a.height_r
    for side in (-1, 1):
        axis = side * (a.width + 58.0) + side * 0.25 * (c.y[:, None] - hy)
        d = (c.x[None, :] - axis) / 42.0
        top = _smooth((c.y[:, None] - hy + 40.0) / 40.0)
        arms += 84.0 * np.sqrt(np.clip(1.0 - d * d, 0.0, None)) * top
    return np.maximum(trunk, arms).astype(np.float32)


def lung_thickness(a: Anatomy, c: Canvas, m: Masks) -> np.ndarray:
    """mm of aerated lung along each ray: thin at the apex and the lateral tangent, thick below."""
    x, y = c.x, c.y
    out = np.zeros((c.rows, c.cols), np.float32)
    for side in (-1, 1):
        lat, med = lateral_border(a, y, side)[:, None], medial_border(a, y, side)[:, None]
        w = np.clip((lat - side * x[None, :]) / np.maximum(lat - med, 1.0), 0.0, 1.0)
        px = np.sqrt(np.clip(w / 0.28, 0.0, 1.0)) * (1.0 - 0.35 * w * w)
        py = 0.35 + 0.65 * np.sqrt(np.clip(y / (0.45 * a.height_r), 0.0, 1.0))
        out += np.where(m.lung(side), px * py[:, None], 0.0)
    out *= a.lung_depth
    dia = diaphragm(a, x)
    below = (y[:, None] - dia[None, :]) / (0.7 * max(a.dome_r, 8.0))
    recess = 0.3 * a.lung_depth * (1.0 - _smooth(below)) ** 2 * (below > 0)
    lateral = _smooth((0.95 * a.width - np.abs(x)) / 25.0) * _smooth((np.abs(x) - 25.0) / 30.0)
    out += recess * lateral[None, :]
    ramp = _smooth((y - a.heart_top) / (0.25 * a.height_r))[:, None]
    out += 0.3 * a.lung_depth * m.heart * ramp * _smooth((np.abs(x) - 10.0) / 20.0)[None, :]
    return out


def render_layers(a: Anatomy, c: Canvas, m: Masks, rng: np.random.Generator) -> Layers:
    """All normal anatomy as attenuation layers."""
    from anaxreport.data import _bones, _vessels  # local: keep module import light

    air = lung_thickness(a, c, m)
    soft = MU_SOFT * (body_thickness(a, c) - (1.0 - LUNG_TISSUE) * air)
    soft -= MU_SOFT * _airways(a, c)
    soft -= MU_SOFT * _gastric_bubble(a, c, rng)
    if a.sex == "F":
        soft += MU_SOFT * _breasts(a, c, rng)
    bone = _bones.render_bones(a, c, rng)
    vessels = _vessels.render_vessels(a, c, m, rng)
    texture = _vessels.lung_texture(c, m, rng)
    return Layers(
        soft=soft.astype(np.float32), bone=bone, vessels=vessels, texture=texture, lung_air=air
    )


def _airways(a: Anatomy, c: Canvas) -> np.ndarray:
    """mm of air in the trachea and main bronchi."""
    x, y = c.x[None, :], c.y[:, None]
    tx = trachea_x(a, c.y)[:, None]
    d = np.abs(x - tx) / a.trachea_r
    column = 2 * a.trachea_r * np.sqrt(np.clip(1 - d * d, 0, None)) * (y <= a.carina_y)
    column = column * _smooth((y + 0.6 * a.height_r) / 40.0)
    out = 1.6 * column.astype(np.float32)
    from anaxreport.data._vessels import draw_tubes

    cy = a.carina_y
    segs = [
        (-1.5, cy - 2, -22.0, cy + 22.0, 0.8 * a.trachea_r, 0.7 * a.trachea_r),
        (1.5, cy - 2, 34.0, cy + 26.0, 0.7 * a.trachea_r, 0.6 * a.trachea_r),
    ]
    draw_tubes(out, c, np.array(segs, np.float32), 1.6)
    return out


def _gastric_bubble(a: Anatomy, c: Canvas, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros((c.rows, c.cols), np.float32)
    if rng.random() < 0.25:
        return out
    dia = float(diaphragm(a, np.array([0.45 * a.width], np.float32))[0])
    cx = rng.uniform(0.3, 0.55) * a.width
    cy = dia + rng.uniform(14.0, 26.0)
    rx, ry = rng.uniform(18.0, 35.0), rng.uniform(10.0, 18.0)
    x, y = c.x[None, :], c.y[:, None]
    r2 = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2
    level = y <= cy + 0.3 * ry  # air above the fluid level
    out += rng.uniform(25.0, 55.0) * np.sqrt(np.clip(1 - r2, 0, None)) * level
    return out


def _breasts(a: Anatomy, c: Canvas, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros((c.rows, c.cols), np.float32)
    x, y = c.x[None, :], c.y[:, None]
    r = rng.uniform(55.0, 85.0)
    thick = rng.uniform(8.0, 22.0)
    cy = a.height_r * rng.uniform(0.72, 0.88)
    for side in (-1, 1):
        cx = side * a.width * rng.uniform(0.55, 0.7)
        r2 = ((x - cx) / (1.2 * r)) ** 2 + ((y - cy) / r) ** 2
        upper = np.clip((y - (cy - r)) / r, 0, 1)  # fades upward, sharp lower border
        out += thick * np.sqrt(np.clip(1 - r2, 0, None)) ** 0.5 * upper
    return out


def measure_ctr(a: Anatomy, c: Canvas, m: Masks) -> float:
    """Cardiothoracic ratio measured on the rendered masks (max heart width / max thorax width)."""
    x = c.x
    heart_cols = np.flatnonzero(m.heart.any(axis=0))
    lung_cols = np.flatnonzero((m.lung_r | m.lung_l).any(axis=0))
    if heart_cols.size == 0 or lung_cols.size == 0:
        return math.nan
    heart = x[heart_cols[-1]] - x[heart_cols[0]] + c.step
    thorax = x[lung_cols[-1]] - x[lung_cols[0]] + c.step
    return float(heart / thorax)


def region_masks(a: Anatomy, c: Canvas, m: Masks) -> list[np.ndarray]:
    """The 18 region masks in :data:`anaxreport.vocab.REGIONS` order.

    Lung zones are thirds of each lung's height (the upper one includes the apex), the apical
    zone its top fifth (above about the clavicle), the costophrenic angle a small square at the
    lateral-inferior corner (DESIGN.md §4).
    """
    y = c.y[:, None]
    x = c.x[None, :]
    out: list[np.ndarray] = []
    for side, h, hilum in ((-1, a.height_r, m.hilum_r), (1, a.height_l, m.hilum_l)):
        lung = m.lung(side)
        lat_h = float(lateral_border(a, np.array([h], np.float32), side)[0])
        size = float(np.clip(0.17 * a.width, 18.0, 32.0))
        corner = lung & (y >= h - 1.3 * size) & (side * x >= lat_h - size)
        out += [
            lung,
            lung & (y < 0.2 * h),
            lung & (y < h / 3.0),
            lung & (y >= h / 3.0) & (y < 2.0 * h / 3.0),
            lung & (y >= 2.0 * h / 3.0),
            hilum,
            corner,
        ]
    out += [m.mediastinum | m.heart, m.upper_mediastinum, m.heart, m.trachea]
    return out
