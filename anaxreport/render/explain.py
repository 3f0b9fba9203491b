"""Explanation overlays: where the model looked for each finding (paper Fig. 3), as PNG and DICOM.

One panel per finding, in vocabulary order (3 × 3), drawn from an :class:`Overlay`:

* a region model's report (:func:`report_overlay`): each found region's box filled by its share
  of the finding's logits in the *target* regions (where the rules called the finding present,
  else where it is most probable), red where the region pushed the finding up, blue where it
  pushed it down, more opaque for a larger share; the targets outlined in yellow. The shares
  are the model's own arithmetic (:class:`~anaxreport.report.RegionContributions`): for
  AnaXNet, region j gives region r a_rj W_Q R_j (and r itself W_R R_r), with the attention
  weights a it computed;
* GlobalView (:func:`~anaxreport.model.globalview.class_activation_maps`): its class
  activation map of the finding, in red.

The DICOM form is a Secondary Capture (RGB, burned-in text) in a series of its own in the
source's study, saying in its series description, image comments and burned-in footer that it
is AI output not for diagnostic use, and which model made it.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import ExportError
from ..geometry import BoundingBox
from ..vocab import FINDINGS, REGIONS, Finding
from ._dicom import (
    MANUFACTURER,
    completed_header,
    copy_body_part,
    model_description,
    model_versions,
)
from .uids import derived_uid, study_series_uid

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from ..ingest import Radiograph, StudyIdentity
    from ..report import Provenance, RegionContributions, Report

__all__ = [
    "EXPLAIN_SERIES_NUMBER",
    "Overlay",
    "Panel",
    "global_view_overlay",
    "overlay_image",
    "render_overlay_png",
    "render_overlay_sc",
    "report_overlay",
    "targets",
]

EXPLAIN_SERIES_NUMBER = 9903
PANEL = 512  # the longest side of a panel, in pixels
GRID = 3
TITLE = 40  # the text band above each panel
FOOTER = 28
RAISES, LOWERS, TARGET = (220, 40, 40), (40, 90, 230), (255, 215, 0)
MAX_ALPHA = 150


@dataclass(frozen=True)
class Panel:
    """One finding's picture: ``boxes`` (source pixels) with their signed weight in [-1, 1]
    and whether to outline them, or a ``heatmap`` in [0, 1] covering the whole image."""

    title: str
    subtitle: str
    boxes: tuple[tuple[BoundingBox, float, bool], ...] = ()
    heatmap: np.ndarray | None = None


@dataclass(frozen=True)
class Overlay:
    """Everything an explanation is drawn and filed from: the display ``pixels`` ([0, 1],
    1 = white), a panel per finding, who made it and how, and the source's header and identity
    for the DICOM form; ``key`` is what its UIDs derive from."""

    pixels: np.ndarray
    panels: tuple[Panel, ...]
    provenance: Provenance
    method: str
    study: StudyIdentity
    header: Dataset | None
    key: tuple[str, ...]
    legend: str


def report_overlay(report: Report) -> Overlay:
    """The overlay of a region model's report made with ``explain``."""
    contributions = report.source.contributions
    if contributions is None:
        raise ExportError(
            f"cannot draw the explanation for SOP Instance UID {report.study.sop_instance_uid}: "
            "the findings were made without one (Reporter.explain)"
        )
    return Overlay(
        pixels=contributions.pixels,
        panels=tuple(_region_panel(report, contributions, f) for f in FINDINGS),
        provenance=report.provenance,
        method=f"Region contributions to each finding's logit: {contributions.method}",
        study=report.study,
        header=report.header,
        key=report.result_key,
        legend="red raises the finding, blue lowers it; yellow: where it is called (or most "
        "probable)",
    )


def targets(report: Report, finding: Finding) -> tuple[int, ...]:
    """The regions a finding's panel explains: where it is called present, else the found
    region where it is most probable (else, with nothing found, the most probable one)."""
    present = tuple(i for i, r in enumerate(REGIONS) if report.call(r, finding).present)
    if present:
        return present
    m = FINDINGS.index(finding)
    candidates = [i for i, r in enumerate(report.regions) if r.found] or range(len(REGIONS))
    return (max(candidates, key=lambda i: report.regions[i].probabilities[m]),)


def _region_panel(report: Report, contributions: RegionContributions, finding: Finding) -> Panel:
    chosen = targets(report, finding)
    shares = contributions.drivers(finding, chosen)
    largest = float(np.abs(shares).max()) or 1.0
    m = FINDINGS.index(finding)
    present = any(report.call(REGIONS[i], finding).present for i in chosen)
    best = max(report.regions[i].probabilities[m] for i in chosen)
    return Panel(
        title=f"{finding.name}: {'present' if present else 'absent'}, p {best:.2f}",
        subtitle=", ".join(REGIONS[i].name for i in chosen),
        boxes=tuple(
            (result.box, float(shares[i]) / largest, i in chosen)
            for i, result in enumerate(report.regions)
            if result.box is not None
        ),
    )


def global_view_overlay(
    radiograph: Radiograph,
    maps: np.ndarray,
    probabilities: np.ndarray,
    thresholds: tuple[float, ...],
    provenance: Provenance,
) -> Overlay:
    """The overlay of GlobalView's class activation maps ([M, h, w] over the whole image,
    :func:`~anaxreport.model.globalview.class_activation_maps`) of one radiograph."""
    panels = tuple(
        Panel(
            title=f"{f.name}: {'present' if p >= t else 'absent'}, p {p:.2f}",
            subtitle="whole image (GlobalView does not localise)",
            heatmap=heatmap,
        )
        for f, p, t, heatmap in zip(FINDINGS, probabilities, thresholds, maps, strict=True)
    )
    return Overlay(
        pixels=radiograph.pixels,
        panels=panels,
        provenance=provenance,
        method="Class activation maps (Grad-CAM, which for DenseNet's pooled linear classifier "
        "is CAM): ReLU of the classifier's weights over the last feature maps",
        study=radiograph.identity,
        header=radiograph.header,
        key=(radiograph.identity.sop_instance_uid, provenance.weights_sha256),
        legend="red: where the finding's class activation is high",
    )


def render_overlay_png(overlay: Overlay, picture: np.ndarray | None = None) -> bytes:
    """The panels as PNG bytes (``picture``: :func:`overlay_image`'s, when already drawn)."""
    buffer = io.BytesIO()
    Image.fromarray(overlay_image(overlay) if picture is None else picture).save(buffer, "PNG")
    return buffer.getvalue()


def overlay_image(overlay: Overlay) -> np.ndarray:
    """The 3 × 3 panels and the footer as an RGB array [rows, columns, 3] of uint8."""
    gray = np.round(np.clip(overlay.pixels, 0.0, 1.0) * 255).astype(np.uint8)
    scale = PANEL / max(gray.shape)
    size = (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale)))
    base = Image.fromarray(gray).resize(size, Image.Resampling.BILINEAR).convert("RGBA")
    width, height = GRID * size[0], GRID * (size[1] + TITLE) + FOOTER
    canvas = Image.new("RGB", (width, height), "black")
    font = ImageFont.load_default(size=14)
    for index, panel in enumerate(overlay.panels):
        row, column = divmod(index, GRID)
        picture = Image.alpha_composite(base, _drawn(panel, size, scale)).convert("RGB")
        top = row * (size[1] + TITLE)
        canvas.paste(picture, (column * size[0], top + TITLE))
        draw = ImageDraw.Draw(canvas)
        draw.text((column * size[0] + 6, top + 4), panel.title, fill="white", font=font)
        draw.text((column * size[0] + 6, top + 21), panel.subtitle[:70], fill=(200, 200, 200),
                  font=font)  # fmt: skip
    p = overlay.provenance
    ImageDraw.Draw(canvas).text(
        (6, height - FOOTER + 6),
        f"NOT FOR DIAGNOSTIC USE. {p.model_name} {p.model_version} (sha256 "
        f"{p.weights_sha256[:12]}): {overlay.legend}",
        fill="white",
        font=font,
    )
    return np.asarray(canvas)


def _drawn(panel: Panel, size: tuple[int, int], scale: float) -> Image.Image:
    """The panel's transparent layer over the image downscaled to ``size``."""
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    if panel.heatmap is not None:
        heat = Image.fromarray(np.round(np.clip(panel.heatmap, 0, 1) * MAX_ALPHA).astype(np.uint8))
        alpha = np.asarray(heat.resize(size, Image.Resampling.BILINEAR))
        layer = Image.fromarray(
            np.dstack([np.broadcast_to(np.uint8(c), alpha.shape) for c in RAISES] + [alpha])
        )
    draw = ImageDraw.Draw(layer)
    for box, weight, outlined in panel.boxes:
        corners = [v * scale for v in box.as_tuple()]
        color = RAISES if weight >= 0 else LOWERS
        draw.rectangle(corners, fill=(*color, round(MAX_ALPHA * min(abs(weight), 1.0))))
        if outlined:
            draw.rectangle(corners, outline=(*TARGET, 255), width=2)
    return layer


def render_overlay_sc(overlay: Overlay, picture: np.ndarray | None = None) -> Dataset:
    """The panels as a DICOM Secondary Capture Image in the source's study (``picture``:
    :func:`overlay_image`'s, when already drawn)."""
    with _export_errors(overlay):
        if overlay.header is None:
            raise ExportError("the findings have no source DICOM header (made by hand)")
        header = completed_header(overlay.header)
        orientation = _orientation(header)
        p = overlay.provenance
        image = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=header,
            pixel_array=overlay_image(overlay) if picture is None else picture,
            photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
            bits_allocated=8,
            # each panel is the source downscaled, in the source's orientation
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            patient_orientation=orientation or ("L", "F"),
            series_instance_uid=study_series_uid("explain", overlay.study.study_instance_uid, p),
            series_number=EXPLAIN_SERIES_NUMBER,
            sop_instance_uid=derived_uid("explain", *overlay.key),  # as uids.result_uid
            instance_number=1,
            manufacturer=MANUFACTURER,
            transfer_syntax_uid="1.2.840.10008.1.2.1",
        )
        if orientation is None:  # unknown: empty, as type 2 allows, rather than a guess
            image.PatientOrientation = None
        copy_body_part(image, header)
        image.SeriesDescription = model_description(p)
        image.ImageType = ["DERIVED", "SECONDARY"]
        image.BurnedInAnnotation = "YES"
        image.ConversionType = "WSD"
        image.ManufacturerModelName = p.model_name[:64]
        image.SoftwareVersions = model_versions(p)
        image.DerivationDescription = overlay.method[:1024]
        image.ImageComments = (
            f"{model_description(p)}; weights sha256 {p.weights_sha256}; trained on "
            f"{p.training_data}"
        )[:10240]
    return image


@contextmanager
def _export_errors(overlay: Overlay) -> Iterator[None]:
    """Any failure as one :class:`ExportError` line naming the study."""
    try:
        yield
    except Exception as exc:
        lines = str(exc).strip().splitlines() or [""]
        raise ExportError(
            "cannot write the explanation Secondary Capture for SOP Instance UID "
            f"{overlay.study.sop_instance_uid or '(unknown)'}: {lines[0][:300]}"
        ) from exc


def _orientation(header: Dataset) -> tuple[str, str] | None:
    """The source's Patient Orientation when it gives both directions."""
    values = header.get("PatientOrientation")
    if values is None or isinstance(values, str) or len(values) != 2 or not all(values):
        return None
    return str(values[0]), str(values[1])
