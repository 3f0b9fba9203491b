"""A crude synthetic lateral chest radiograph, for testing the gate's image-based view check.

The phantom generator renders frontal views only; this draws the landmarks a lateral has and a
frontal lacks (one lung field, the spine along the back, the sternum along the front, the heart
low and anterior, the arms raised across the upper front) as attenuation, then blurs, adds
noise and maps to display space like a radiograph. It is not anatomy; it only has to look
lateral to a classifier-free heuristic, and the tests say so.
"""

from __future__ import annotations

import numpy as np

__all__ = ["render_lateral"]


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float):
    """Thickness of an ellipsoid seen side on: sqrt(1 - r^2) inside, 0 outside."""
    r2 = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
    return np.sqrt(np.clip(1.0 - r2, 0.0, None))


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    radius = max(1, int(3 * sigma))
    x = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()
    out = np.apply_along_axis(lambda r: np.convolve(r, kernel, mode="same"), 1, image)
    return np.apply_along_axis(lambda c: np.convolve(c, kernel, mode="same"), 0, out)


def render_lateral(
    rng: np.random.Generator, size: tuple[int, int] = (480, 440), facing: str = "left"
) -> np.ndarray:
    """A (rows, columns) float32 display image in [0, 1] (1 = dense) of a lateral chest."""
    rows, cols = size
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float64)
    yy, xx = yy / rows, xx / cols
    j = lambda scale: rng.uniform(-scale, scale)  # noqa: E731 - a jitter per landmark
    att = 1.6 * _ellipse(yy, xx, 0.62 + j(0.03), 0.5 + j(0.03), 0.75, 0.42 + j(0.03))
    lung = np.maximum(
        _ellipse(yy, xx, 0.45 + j(0.02), 0.47 + j(0.02), 0.34, 0.27),
        _ellipse(yy, xx, 0.58 + j(0.02), 0.55 + j(0.02), 0.22, 0.22),
    )
    att -= 0.9 * lung
    att += 0.7 * _ellipse(yy, xx, 0.63 + j(0.03), 0.36 + j(0.03), 0.16, 0.15)  # heart
    att += 0.35 * _ellipse(yy, xx, 0.42, 0.52, 0.06, 0.05)  # hila
    spine_x = 0.74 + j(0.03)
    for k in range(14):  # vertebral bodies along the back
        top = 0.04 + k * 0.07
        body = (np.abs(xx - spine_x - 0.03 * (yy - 0.5)) < 0.045) & (yy > top) & (yy < top + 0.055)
        att += 0.9 * body
    att += 0.5 * (np.abs(xx - spine_x - 0.06) < 0.01)  # posterior elements
    att += 0.6 * ((np.abs(xx - 0.15 - 0.05 * yy) < 0.012) & (yy > 0.22) & (yy < 0.62))  # sternum
    for k in range(9):  # faint posterior ribs
        att += 0.12 * (np.abs(yy - (0.2 + 0.07 * k) - 0.25 * (xx - 0.5)) < 0.008) * (xx > 0.3)
    arm = _ellipse(yy, xx, 0.18, 0.3, 0.25, 0.08)  # raised arms across the upper front
    att += 0.9 * arm
    att = np.where(att > 0, att, 0.0)
    att = _blur(att, 1.2) + rng.normal(0.0, 0.02, att.shape)
    image = att / np.percentile(att, 99.7)
    image = np.clip(image, 0.0, 1.0)
    if facing == "right":
        image = image[:, ::-1]
    return np.ascontiguousarray(image, dtype=np.float32)
