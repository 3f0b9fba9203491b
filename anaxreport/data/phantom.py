"""Synthetic frontal chest radiographs as DICOM, with Chest ImaGenome scene graphs.

The phantoms are what the shipped model learns from when the credentialed data set is out of
reach, so they are rendered as radiographs, not drawings: attenuation line integrals through a
body with lungs, heart, mediastinum, airways, vessels and bones (:mod:`._anatomy`), findings
planted where radiology puts them (:mod:`._findings`), then a detector (blur, quantum noise),
the usual processing (equalisation, edge enhancement, tone curve) and the storage variants the
real world sends (CR/DX, PA/AP, MONOCHROME1/2, 10-16 bits, rescale, windows, odd sizes).

Everything random comes from an explicit :class:`numpy.random.Generator`; the same seed gives
the same bytes. The output layout is Chest ImaGenome's (DESIGN.md §4), so
:class:`anaxreport.data.imagenome.ImaGenomeDataset` reads it unchanged.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import multiprocessing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydicom.dataset import Dataset

from anaxreport.data import _anatomy as anat
from anaxreport.data import _dicom
from anaxreport.data._findings import (
    FindingPlan,
    plan_for,
    plant,
    sample_plan,
    scene_graph_attributes,
)
from anaxreport.data._vessels import blur
from anaxreport.data.imagenome import SPLITS, scene_graph_labels
from anaxreport.errors import ConfigurationError
from anaxreport.geometry import BoundingBox
from anaxreport.vocab import REGIONS

__all__ = [
    "Phantom",
    "PhantomSummary",
    "StudyIdentity",
    "generate_phantoms",
    "render_phantom",
    "write_samples",
]

logger = logging.getLogger(__name__)

MODEL_SIDE = 224  # Chest ImaGenome's x1..y2 live on a 224×224 resized-and-padded image


@dataclass(frozen=True)
class StudyIdentity:
    """Who and what a phantom is: MIMIC-shaped ids plus the seed its UIDs derive from."""

    subject_id: str
    study_id: str
    dicom_id: str
    study_date: str
    study_time: str
    uid_seed: str

    @classmethod
    def draw(cls, rng: np.random.Generator, subject_id: str | None = None) -> StudyIdentity:
        words = rng.integers(0, 2**32, size=5)
        subject = subject_id or str(int(rng.integers(10_000_000, 20_000_000)))
        day = int(rng.integers(0, 3650))
        date = np.datetime64("2015-01-01") + np.timedelta64(day, "D")
        seconds = int(rng.integers(0, 86400))
        return cls(
            subject_id=subject,
            study_id=str(int(rng.integers(50_000_000, 60_000_000))),
            dicom_id="-".join(f"{int(w):08x}" for w in words),
            study_date=str(date).replace("-", ""),
            study_time=f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}",
            uid_seed="-".join(f"{int(w):08x}" for w in words),
        )

    @property
    def relative_path(self) -> str:
        """MIMIC-CXR layout: ``files/p10/p10000032/s50414267/<dicom_id>.dcm``."""
        s = self.subject_id
        return f"files/p{s[:2]}/p{s}/s{self.study_id}/{self.dicom_id}.dcm"


@dataclass(frozen=True)
class Phantom:
    """One rendered study: image, ground truth and the DICOM data set that carries it.

    ``pixels`` is the display image in [0, 1] with bone bright (MONOCHROME2 sense) before
    storage; ``boxes`` and ``labels`` are exactly what the scene graph says (source pixels).
    """

    pixels: np.ndarray
    boxes: tuple[BoundingBox | None, ...]
    labels: tuple[tuple[bool, ...], ...]
    scene_graph: dict[str, Any]
    dataset: Dataset
    identity: StudyIdentity
    view: str
    ctr: float
    plan: FindingPlan

    def labels_array(self) -> np.ndarray:
        """The 18×9 float32 target."""
        return np.asarray(self.labels, dtype=np.float32)

    def to_dataset(self) -> Dataset:
        """The DICOM data set (the same object as :attr:`dataset`)."""
        return self.dataset


@dataclass(frozen=True)
class _Acquisition:
    """How the image was taken and stored."""

    view: str
    rows: int
    cols: int
    spacing: float  # mm per source pixel at the detector
    angle: float  # radians, patient rotation in the image plane
    origin: tuple[float, float]  # source pixel (x, y) of the anatomical origin
    blur: float  # detector blur, pixels
    noise: float  # quantum noise level
    equalise: float
    edge: float
    contrast: float


def _draw_size(rng: np.random.Generator) -> tuple[int, int]:
    if rng.random() < 0.7:
        base = rng.uniform(450.0, 1000.0)
        aspect = float(np.clip(math.exp(rng.normal(0.0, 0.1)), 0.8, 1.25))
        return int(base), int(np.clip(base * aspect, 400, 1000))
    return int(rng.integers(400, 1001)), int(rng.integers(400, 1001))


def _acquisition(
    a: anat.Anatomy, rng: np.random.Generator, size: tuple[int, int] | None
) -> _Acquisition:
    rows, cols = size if size is not None else _draw_size(rng)
    need_w = 2.0 * a.width + rng.uniform(50.0, 150.0)
    top, bottom = -0.3 * a.height_r, a.height + rng.uniform(40.0, 110.0)
    spacing = max(need_w / cols, (bottom - top) / rows)
    slack_x, slack_y = cols * spacing - need_w, rows * spacing - (bottom - top)
    cx = cols * spacing / 2.0 + rng.uniform(-0.35, 0.35) * slack_x + rng.normal(0.0, 6.0)
    cy = -top + rng.uniform(0.15, 0.85) * slack_y
    return _Acquisition(
        view=a.view,
        rows=rows,
        cols=cols,
        spacing=spacing,
        angle=math.radians(float(np.clip(rng.normal(0.0, 2.0), -5.0, 5.0))),
        origin=(cx / spacing, cy / spacing),
        blur=rng.uniform(0.4, 1.2),
        noise=rng.uniform(0.006, 0.025),
        equalise=rng.uniform(0.5, 0.75),
        edge=rng.uniform(0.3, 0.9),
        contrast=rng.uniform(1.0, 2.4),
    )


def _canvas(q: _Acquisition) -> anat.Canvas:
    """The axis-aligned anatomical grid that covers the whole (rotated) source image."""
    corners = np.array([[0, 0], [q.cols, 0], [0, q.rows], [q.cols, q.rows]], np.float64)
    xy = _to_anatomy(q, corners)
    step = q.spacing
    x0, y0 = xy.min(0) - 2 * step
    x1, y1 = xy.max(0) + 2 * step
    return anat.Canvas(
        float(x0), float(y0), step, int((y1 - y0) / step) + 1, int((x1 - x0) / step) + 1
    )


def _to_anatomy(q: _Acquisition, pts: np.ndarray) -> np.ndarray:
    """Source pixel positions (x, y) -> anatomical mm (x, y)."""
    d = (pts - np.asarray(q.origin)) * q.spacing
    cos, sin = math.cos(q.angle), math.sin(q.angle)
    return np.stack([cos * d[:, 0] + sin * d[:, 1], -sin * d[:, 0] + cos * d[:, 1]], axis=1)


def _to_source(q: _Acquisition, pts: np.ndarray) -> np.ndarray:
    """Anatomical mm (x, y) -> source pixel positions (x, y)."""
    cos, sin = math.cos(q.angle), math.sin(q.angle)
    x, y = pts[:, 0], pts[:, 1]
    d = np.stack([cos * x - sin * y, sin * x + cos * y], axis=1) / q.spacing
    return d + np.asarray(q.origin)


def _warp(q: _Acquisition, c: anat.Canvas, image: np.ndarray) -> np.ndarray:
    """Resample a canvas image onto the source pixel grid (rotation + placement)."""
    cols, rows = np.meshgrid(np.arange(q.cols) + 0.5, np.arange(q.rows) + 0.5)
    xy = _to_anatomy(q, np.stack([cols.ravel(), rows.ravel()], axis=1))
    gx = 2.0 * (xy[:, 0] - c.x0) / (c.cols * c.step) - 1.0
    gy = 2.0 * (xy[:, 1] - c.y0) / (c.rows * c.step) - 1.0
    grid = torch.from_numpy(np.stack([gx, gy], 1).astype(np.float32)).view(1, q.rows, q.cols, 2)
    src = torch.from_numpy(np.ascontiguousarray(image, np.float32))[None, None]
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[0, 0].numpy()


def _mask_box(q: _Acquisition, c: anat.Canvas, mask: np.ndarray) -> BoundingBox | None:
    """The source-pixel box of a canvas mask: every pixel corner mapped, clipped, rounded."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    sub = mask[rows]
    first = sub.argmax(axis=1)
    last = c.cols - 1 - sub[:, ::-1].argmax(axis=1)
    xs = [c.x0 + first * c.step, c.x0 + (last + 1) * c.step]
    ys = [c.y0 + rows * c.step, c.y0 + (rows + 1) * c.step]
    pts = np.concatenate([np.stack([x, y], 1) for x in xs for y in ys])
    src = _to_source(q, pts)
    x1, y1 = np.clip(np.round(src.min(0)), 0, [q.cols, q.rows])
    x2, y2 = np.clip(np.round(src.max(0)), 0, [q.cols, q.rows])
    if x2 <= x1 or y2 <= y1:
        return None
    return BoundingBox(float(x1), float(y1), float(x2), float(y2))


def _imaging_chain(att: np.ndarray, q: _Acquisition, rng: np.random.Generator) -> np.ndarray:
    """Detector blur, quantum noise, equalisation, edge enhancement and a tone curve."""
    att = blur(att, q.blur)
    ref = float(np.percentile(att, 20))
    sigma = q.noise * np.exp(np.clip(att - ref, -2.0, 3.0) / 2.0)
    noise = rng.standard_normal(att.shape).astype(np.float32)
    att = att + sigma * (0.8 * noise + 0.6 * blur(noise, 1.0))
    mm = 1.0 / q.spacing
    low = blur(att, 22.0 * mm)
    proc = att - q.equalise * (low - float(low.mean())) + q.edge * (att - blur(att, 1.5 * mm))
    lo, hi = np.percentile(proc, [0.5, 99.7])
    d = np.clip((proc - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    k = q.contrast
    d = 0.5 + 0.5 * np.tanh(k * (d - 0.5)) / math.tanh(0.5 * k)
    return np.clip(d, 0.0, 1.0).astype(np.float32)


def _objects(
    boxes: Sequence[BoundingBox | None], q: _Acquisition, dicom_id: str
) -> list[dict[str, Any]]:
    """Chest ImaGenome ``objects[]``: 224-grid boxes plus the original-pixel ones."""
    scale = MODEL_SIDE / max(q.rows, q.cols)
    pad_x = (MODEL_SIDE - round(q.cols * scale)) // 2
    pad_y = (MODEL_SIDE - round(q.rows * scale)) // 2
    out = []
    for reg, box in zip(REGIONS, boxes, strict=True):
        if box is None:
            continue
        x1, y1 = round(box.x1 * scale + pad_x), round(box.y1 * scale + pad_y)
        x2, y2 = round(box.x2 * scale + pad_x), round(box.y2 * scale + pad_y)
        out.append(
            {
                "object_id": f"{dicom_id}_{reg.name}",
                "x1": x1,
                "y1": y1,
                "x2": x2,
                "y2": y2,
                "width": x2 - x1,
                "height": y2 - y1,
                "bbox_name": reg.name,
                "synsets": [reg.site.value],
                "name": reg.name.capitalize(),
                "original_x1": int(box.x1),
                "original_y1": int(box.y1),
                "original_x2": int(box.x2),
                "original_y2": int(box.y2),
                "original_width": int(box.x2) - int(box.x1),  # the box's, as in Chest ImaGenome
                "original_height": int(box.y2) - int(box.y1),
            }
        )
    return out


def _streams(rng: np.random.Generator) -> list[np.random.Generator]:
    """Independent child streams, so forcing a finding leaves the rest of the study alone."""
    seeds = rng.integers(0, 2**63 - 1, size=7)
    return [np.random.default_rng(int(s)) for s in seeds]


def render_phantom(
    rng: np.random.Generator,
    *,
    view: str | None = None,
    findings: Iterable[str] | None = None,
    side: str | None = None,
    photometric: str | None = None,
    bits_stored: int | None = None,
    modality: str | None = None,
    size: tuple[int, int] | None = None,
    identity: StudyIdentity | None = None,
    patient_rng: np.random.Generator | None = None,
) -> Phantom:
    """Render one study.

    ``findings`` None draws them (about 40% normal); an empty iterable forces a normal study;
    vocab finding names force those findings (``side`` "right", "left" or "bilateral").
    ``size`` is ``(rows, columns)``. ``patient_rng`` draws the body (so a patient's studies
    look alike); by default the body comes from ``rng``.
    """
    r_view, r_plan, r_body, r_acq, r_render, r_find, r_store = _streams(rng)
    view = view or ("PA" if r_view.random() < 0.65 else "AP")
    if view not in ("PA", "AP"):
        raise ConfigurationError(f"view must be 'PA' or 'AP', got {view!r}")
    ident = identity or StudyIdentity.draw(r_view)
    plan = sample_plan(r_plan, view) if findings is None else plan_for(findings, r_plan, view, side)
    a = anat.sample_anatomy(patient_rng if patient_rng is not None else r_body, view, plan.ctr)
    q = _acquisition(a, r_acq, size)
    c = _canvas(q)
    masks = anat.build_masks(a, c)
    layers = anat.render_layers(a, c, masks, r_render)
    zones = anat.region_masks(a, c, masks)
    ctr = anat.measure_ctr(a, c, masks)
    statements = plant(plan, a, c, masks, layers, zones, ctr, r_find)
    pixels = _imaging_chain(_warp(q, c, layers.total()), q, r_store)
    boxes = tuple(_mask_box(q, c, z) for z in zones)
    attributes = scene_graph_attributes(statements, ident.dicom_id)
    graph = {
        "image_id": ident.dicom_id,
        "viewpoint": view,
        "patient_id": int(ident.subject_id),
        "study_id": int(ident.study_id),
        "gender": a.sex,
        "age_decile": "50-60",
        "StudyDateTime": f"{ident.study_date}{ident.study_time}",
        "objects": _objects(boxes, q, ident.dicom_id),
        "attributes": attributes,
        "relationships": [],
    }
    labels = scene_graph_labels(attributes)
    ds = _dicom.build_dataset(
        pixels,
        ident,
        q.view,
        q.spacing,
        a.sex,
        r_store,
        photometric=photometric,
        bits_stored=bits_stored,
        modality=modality,
    )
    return Phantom(
        pixels=pixels,
        boxes=boxes,
        labels=tuple(tuple(bool(v) for v in row) for row in labels),
        scene_graph=graph,
        dataset=ds,
        identity=ident,
        view=view,
        ctr=ctr,
        plan=plan,
    )


def write_phantom(phantom: Phantom, dicom_path: Path, graph_path: Path) -> None:
    """Write the DICOM file and its ``_SceneGraph.json`` (deterministic bytes)."""
    dicom_path.parent.mkdir(parents=True, exist_ok=True)
    graph_path.parent.mkdir(parents=True, exist_ok=True)
    phantom.dataset.save_as(dicom_path, enforce_file_format=True)
    graph_path.write_text(json.dumps(phantom.scene_graph, indent=1) + "\n", encoding="utf-8")


@dataclass(frozen=True)
class PhantomSummary:
    """What :func:`generate_phantoms` wrote."""

    out_dir: Path
    seed: int
    n_train: int
    n_valid: int
    n_test: int
    n_normal: int
    split_files: tuple[Path, ...]
    scene_graph_dir: Path

    @property
    def counts(self) -> dict[str, int]:
        return {"train": self.n_train, "valid": self.n_valid, "test": self.n_test}


@dataclass(frozen=True)
class _Job:
    index: int
    out_dir: str
    study_seed: Sequence[int] | np.random.SeedSequence
    patient_seed: np.random.SeedSequence
    subject_id: str


def _patients(n: int, rng: np.random.Generator) -> list[int]:
    """Studies per patient (1-3), summing to ``n``."""
    counts: list[int] = []
    while sum(counts) < n:
        counts.append(min(int(rng.choice([1, 2, 3], p=[0.7, 0.2, 0.1])), n - sum(counts)))
    return counts


def _run_job(job: _Job) -> tuple[int, str, str, str, str, str, bool]:
    torch.set_num_threads(1)
    rng = np.random.default_rng(job.study_seed)
    ident = StudyIdentity.draw(rng, subject_id=job.subject_id)
    phantom = render_phantom(
        rng, identity=ident, patient_rng=np.random.default_rng(job.patient_seed)
    )
    out = Path(job.out_dir)
    graph = out / "scene_graph" / f"{ident.dicom_id}_SceneGraph.json"
    write_phantom(phantom, out / ident.relative_path, graph)
    normal = not any(any(row) for row in phantom.labels)
    return (
        job.index,
        ident.subject_id,
        ident.study_id,
        ident.dicom_id,
        ident.relative_path,
        phantom.view,
        normal,
    )


def _assign_splits(
    counts: list[int], fractions: Sequence[float], rng: np.random.Generator
) -> list[str]:
    """A split per patient, by patient, so the study fractions come out near ``fractions``."""
    total = sum(counts)
    order = rng.permutation(len(counts))
    bounds = np.cumsum(np.asarray(fractions) / sum(fractions)) * total
    split_of = [""] * len(counts)
    done = 0
    for k, p in enumerate(order):
        # Keep valid and test non-empty whenever there are enough patients.
        remaining = len(counts) - k
        which = int(np.searchsorted(bounds, done + 0.5 * counts[p], side="right"))
        which = min(which, len(SPLITS) - 1)
        if remaining <= 2 and len(counts) >= 3:
            used = {split_of[o] for o in order[:k]}
            missing = [s for s in ("test", "valid") if s not in used]
            if len(missing) >= remaining:
                which = SPLITS.index(missing[0])
        split_of[p] = SPLITS[which]
        done += counts[p]
    return split_of


def generate_phantoms(
    out_dir: Path | str,
    n: int,
    seed: int,
    *,
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    progress: bool = False,
    workers: int = 1,
) -> PhantomSummary:
    """Write ``n`` phantom studies in the Chest ImaGenome silver_dataset layout.

    Split by patient (some patients have 2-3 studies) into train/valid/test by ``fractions``.
    Each study has its own child seed (``SeedSequence(seed).spawn``), so the output does not
    depend on ``workers``.
    """
    if n < 1:
        raise ConfigurationError(f"n must be at least 1, got {n}")
    if len(fractions) != 3 or min(fractions) < 0 or sum(fractions) <= 0:
        raise ConfigurationError(f"fractions must be three non-negative numbers, got {fractions}")
    out = Path(out_dir)
    root = np.random.SeedSequence(seed)
    layout_ss, patient_root, study_root = root.spawn(3)
    layout = np.random.default_rng(layout_ss)
    counts = _patients(n, layout)
    subjects = [
        str(v) for v in layout.choice(np.arange(10_000_000, 20_000_000), len(counts), replace=False)
    ]
    patient_seeds = patient_root.spawn(len(counts))
    study_seeds = study_root.spawn(n)
    jobs, k = [], 0
    for p, count in enumerate(counts):
        for _ in range(count):
            jobs.append(_Job(k, str(out), study_seeds[k], patient_seeds[p], subjects[p]))
            k += 1
    results = _run_all(jobs, workers, progress)
    split_of = _assign_splits(counts, fractions, layout)
    split_by_subject = dict(zip(subjects, split_of, strict=True))
    return _write_splits(out, seed, results, split_by_subject)


def _run_all(jobs: list[_Job], workers: int, progress: bool) -> list[tuple]:
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), disable=not progress, unit="study", desc="phantoms")
    results = []
    if workers <= 1:
        for job in jobs:
            results.append(_run_job(job))
            bar.update()
    else:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(workers) as pool:
            for res in pool.imap_unordered(_run_job, jobs, chunksize=4):
                results.append(res)
                bar.update()
    bar.close()
    return sorted(results)


def _write_splits(
    out: Path, seed: int, results: list[tuple], split_by_subject: dict[str, str]
) -> PhantomSummary:
    (out / "splits").mkdir(parents=True, exist_ok=True)
    files, sizes = [], {}
    for split in SPLITS:
        path = out / "splits" / f"{split}.csv"
        rows = [r for r in results if split_by_subject[r[1]] == split]
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["", "subject_id", "study_id", "dicom_id", "path", "ViewPosition"])
            for i, (_, subject, study, dicom_id, rel, view, _) in enumerate(rows):
                writer.writerow([i, subject, study, dicom_id, rel, view])
        files.append(path)
        sizes[split] = len(rows)
    n_normal = sum(r[6] for r in results)
    logger.info("wrote %d phantom studies to %s (%d normal)", len(results), out, n_normal)
    return PhantomSummary(
        out_dir=out,
        seed=seed,
        n_train=sizes["train"],
        n_valid=sizes["valid"],
        n_test=sizes["test"],
        n_normal=n_normal,
        split_files=tuple(files),
        scene_graph_dir=out / "scene_graph",
    )


#: The studies :func:`write_samples` renders: name -> render_phantom keyword arguments.
SAMPLES: dict[str, dict[str, Any]] = {
    "pa_normal": {"view": "PA", "findings": (), "modality": "DX"},
    "pa_effusion_right": {
        "view": "PA",
        "findings": ("pleural effusion",),
        "side": "right",
        "modality": "CR",
    },
    "pa_cardiomegaly_edema": {
        "view": "PA",
        "findings": ("fluid overload/heart failure", "pleural effusion"),
        "side": "bilateral",
        "modality": "DX",
    },
    "ap_pneumonia_left": {
        "view": "AP",
        "findings": ("pneumonia", "consolidation"),
        "side": "left",
        "modality": "CR",
        "bits_stored": 12,
    },
    "pa_pneumothorax_monochrome1": {
        "view": "PA",
        "findings": ("pneumothorax",),
        "side": "right",
        "photometric": "MONOCHROME1",
        "modality": "DX",
        "bits_stored": 14,
    },
    "ap_atelectasis_bibasilar": {
        "view": "AP",
        "findings": ("atelectasis",),
        "side": "bilateral",
        "modality": "CR",
        "bits_stored": 10,
    },
}


def write_samples(out_dir: Path | str, seed: int = 2026) -> list[Path]:
    """Write the README/test sample studies: ``<name>.dcm`` + ``<name>_SceneGraph.json``."""
    out = Path(out_dir)
    paths = []
    for k, (name, kwargs) in enumerate(SAMPLES.items()):
        rng = np.random.default_rng([seed, k])
        size = (int(rng.integers(440, 545)), int(rng.integers(440, 545)))
        phantom = render_phantom(rng, size=size, **kwargs)
        dicom_path = out / f"{name}.dcm"
        write_phantom(phantom, dicom_path, out / f"{name}_SceneGraph.json")
        paths.append(dicom_path)
    return paths
