"""From a radiograph's display pixels to the detector's input, and the way back.

NumPy only: both inference engines and training read the same input from here, and the CLI's
engine (:mod:`.engine`) never imports torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..geometry import Resize

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["bilinear_taps", "model_input", "resample", "to_model_input"]


def model_input(pixels: np.ndarray, image_size: int) -> tuple[np.ndarray, Resize]:
    """Resize [rows, columns] display pixels in [0, 1] so the longest side is ``image_size``.

    Keeps the aspect ratio (no padding: Faster R-CNN takes any size), with torch's antialiased
    bilinear filter (``F.interpolate(..., antialias=True)``, which follows PIL's), as two
    sparse matrix products (:func:`resample`: a few taps a pixel, and no BLAS, whose spinning
    threads would slow the model that follows). Returns the grey [h, w] float32 image and the
    :class:`Resize` that maps model-grid boxes back to source pixels.
    """
    if pixels.ndim != 2:
        raise ValueError(f"pixels must be 2-D [rows, columns], got shape {pixels.shape}")
    resize = Resize.keep_aspect(pixels.shape, image_size)
    image = np.asarray(pixels, dtype=np.float32)
    if resize.model_size != resize.source_size:
        image = resample(image, resize.model_size, antialias=True)
    return np.clip(image, 0.0, 1.0), resize


def to_model_input(pixels: np.ndarray, image_size: int) -> tuple[Tensor, Resize]:
    """:func:`model_input` as the torch model takes it: [3, h, w], the grey channel replicated
    three times, as ImageNet-shaped backbones expect."""
    import torch

    image, resize = model_input(pixels, image_size)
    return torch.from_numpy(image).expand(3, -1, -1), resize


def resample(image: np.ndarray, size: tuple[int, int], antialias: bool) -> np.ndarray:
    """``image`` [..., h, w] resized to ``size`` by :func:`bilinear_taps` along each axis:
    two sparse products per plane, in float32 as torch computes them."""
    rows = _sparse(*bilinear_taps(image.shape[-2], size[0], antialias), image.shape[-2])
    columns = _sparse(*bilinear_taps(image.shape[-1], size[1], antialias), image.shape[-1])
    planes = np.ascontiguousarray(image.reshape(-1, *image.shape[-2:]), dtype=np.float32)
    out = [(columns @ np.ascontiguousarray((rows @ plane).T)).T for plane in planes]
    return np.stack(out).reshape(*image.shape[:-2], *size)


def bilinear_taps(size: int, out: int, antialias: bool) -> tuple[np.ndarray, np.ndarray]:
    """Torch's bilinear resampling along one axis (align_corners False), as the input indices
    [out, taps] each output pixel reads and their weights (float32; zero for padding taps).
    With ``antialias`` the triangle filter is widened by the scale when shrinking (torch's
    ``_upsample_bilinear2d_aa``, PIL's filter), else two-tap interpolation
    (``upsample_bilinear2d``, sampling at ``(i + 0.5) · scale − 0.5``); scale = size / out."""
    scale = size / out
    if antialias:
        support, inverse = (scale, 1.0 / scale) if scale >= 1.0 else (1.0, 1.0)
        center = scale * (np.arange(out) + 0.5)
        low = np.maximum((center - support + 0.5).astype(np.int64), 0)
        high = np.minimum((center + support + 0.5).astype(np.int64), size)
        taps = low[:, None] + np.arange(int((high - low).max()))
        tent = np.clip(1.0 - np.abs((taps - center[:, None] + 0.5) * inverse), 0.0, None)
        tent *= taps < high[:, None]
        weights = tent / tent.sum(axis=1, keepdims=True)
        return np.minimum(taps, size - 1), weights.astype(np.float32)
    at = np.maximum((np.arange(out) + 0.5) * scale - 0.5, 0.0)
    low = np.minimum(at.astype(np.int64), size - 1)
    high = np.minimum(low + 1, size - 1)
    fraction = at - low
    return np.stack([low, high], 1), np.stack([1.0 - fraction, fraction], 1).astype(np.float32)


def _sparse(indices: np.ndarray, weights: np.ndarray, size: int) -> Any:
    """The [out, size] sparse matrix with ``weights`` at ``indices`` in each row."""
    from scipy.sparse import csr_array

    out, taps = indices.shape
    pointers = np.arange(0, out * taps + 1, taps)
    return csr_array((weights.ravel(), indices.ravel(), pointers), shape=(out, size))
