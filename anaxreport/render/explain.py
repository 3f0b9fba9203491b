"""Explanation overlays: which regions drove each finding (paper Fig. 3), as PNG and DICOM.

One panel per finding, in vocabulary order (3 × 3): the radiograph with each found region's box
filled by its share of the finding's logits in the *target* regions (those where the rules
called the finding present, else the region where it is most probable), red where the region
pushed the finding up, blue where it pushed it down, the more opaque the larger the share; the
target regions are outlined in yellow. The shares are the model's own arithmetic
(:class:`~anaxreport.report.RegionContributions`), not a saliency estimate: for AnaXNet, region
j gives region r a_rj W_Q R_j (and r itself W_R R_r), with the attention weights a it computed.

The DICOM form is a Secondary Capture (RGB, burned-in text) in a series of its own in the
source's study, saying in its series description, image comments and burned-in footer that it
is AI output not for diagnostic use, and which model made it.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import ExportError
from ..vocab import FINDINGS, REGIONS, Finding
from ._dicom import (
    MANUFACTURER,
    copy_body_part,
    export_errors,
    model_description,
    model_versions,
    require_header,
    source_header,
)
from .uids import result_uid, series_uid

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from ..report import RegionContributions, Report

__all__ = ["EXPLAIN_SERIES_NUMBER", "explanation_image", "render_explanation_png",
           "render_explanation_sc"]  # fmt: skip

EXPLAIN_SERIES_NUMBER = 9903
PANEL = 512  # the longest side of a panel, in pixels
GRID = 3
TITLE = 40  # the text band above each panel
FOOTER = 28
RAISES, LOWERS, TARGET = (220, 40, 40), (40, 90, 230), (255, 215, 0)
MAX_ALPHA = 150


def render_explanation_png(report: Report) -> bytes:
    """The overlays of ``report`` as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(explanation_image(report)).save(buffer, format="PNG")
    return buffer.getvalue()


def render_explanation_sc(report: Report) -> Dataset:
    """The overlays of ``report`` as a DICOM Secondary Capture Image in the source's study."""
    what = "explanation Secondary Capture"
    require_header(report, what)
    pixels = explanation_image(report)
    with export_errors(report, what):
        header = source_header(report, what)
        provenance = report.provenance
        orientation = _orientation(header)
        image = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=header,
            pixel_array=pixels,
            photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
            bits_allocated=8,
            # each panel is the source downscaled, in the source's orientation
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            patient_orientation=orientation or ("L", "F"),
            series_instance_uid=series_uid(report, "explain"),
            series_number=EXPLAIN_SERIES_NUMBER,
            sop_instance_uid=result_uid(report, "explain"),
            instance_number=1,
            manufacturer=MANUFACTURER,
            transfer_syntax_uid="1.2.840.10008.1.2.1",
        )
        if orientation is None:  # unknown: empty, as type 2 allows, rather than a guess
            image.PatientOrientation = None
        copy_body_part(image, header)
        image.SeriesDescription = model_description(provenance)
        image.ImageType = ["DERIVED", "SECONDARY"]
        image.BurnedInAnnotation = "YES"
        image.ConversionType = "WSD"
        image.ManufacturerModelName = provenance.model_name[:64]
        image.SoftwareVersions = model_versions(provenance)
        image.DerivationDescription = _method(report)[:1024]
        image.ImageComments = (
            f"{model_description(provenance)}; weights sha256 {provenance.weights_sha256}; "
            f"trained on {provenance.training_data}"
        )[:10240]
    return image


def _orientation(header: Dataset) -> tuple[str, str] | None:
    """The source's Patient Orientation when it gives both directions."""
    values = header.get("PatientOrientation")
    if values is None or isinstance(values, str) or len(values) != 2 or not all(values):
        return None
    return str(values[0]), str(values[1])


def explanation_image(report: Report) -> np.ndarray:
    """The 3 × 3 panels and the footer as an RGB array [rows, columns, 3] of uint8."""
    contributions = _contributions(report)
    gray = _display(contributions.pixels)
    scale = PANEL / max(gray.shape)
    size = (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale)))
    base = Image.fromarray(gray).resize(size, Image.Resampling.BILINEAR).convert("RGB")
    width, height = GRID * size[0], GRID * (size[1] + TITLE) + FOOTER
    canvas = Image.new("RGB", (width, height), "black")
    font = ImageFont.load_default(size=14)
    for index, finding in enumerate(FINDINGS):
        row, column = divmod(index, GRID)
        panel = _panel(report, contributions, finding, base, scale, font)
        canvas.paste(panel, (column * size[0], row * (size[1] + TITLE)))
    draw = ImageDraw.Draw(canvas)
    provenance = report.provenance
    draw.text(
        (6, height - FOOTER + 6),
        f"NOT FOR DIAGNOSTIC USE. Region contributions by {provenance.model_name} "
        f"{provenance.model_version} (sha256 {provenance.weights_sha256[:12]}); red raises, "
        "blue lowers the finding; yellow: where it is called (or most probable)",
        fill="white",
        font=font,
    )
    return np.asarray(canvas)


def _contributions(report: Report) -> RegionContributions:
    contributions = report.source.contributions
    if contributions is None:
        raise ExportError(
            f"cannot draw the explanation for SOP Instance UID {report.study.sop_instance_uid}: "
            "the findings were made without one (Reporter.predict_many(..., explain=True))"
        )
    return contributions


def _method(report: Report) -> str:
    return "Region contributions to each finding's logit: " + _contributions(report).method


def _display(pixels: np.ndarray) -> np.ndarray:
    """Display pixels in [0, 1] (1 = white) as 8-bit grey."""
    return np.round(np.clip(pixels, 0.0, 1.0) * 255).astype(np.uint8)


def targets(report: Report, finding: Finding) -> tuple[int, ...]:
    """The regions a finding's panel explains: where it is called present, else the found
    region where it is most probable (else, with nothing found, the most probable one)."""
    present = tuple(i for i, r in enumerate(REGIONS) if report.call(r, finding).present)
    if present:
        return present
    m = FINDINGS.index(finding)
    candidates = [i for i, r in enumerate(report.regions) if r.found] or range(len(REGIONS))
    return (max(candidates, key=lambda i: report.regions[i].probabilities[m]),)


def _panel(
    report: Report,
    contributions: RegionContributions,
    finding: Finding,
    base: Image.Image,
    scale: float,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
) -> Image.Image:
    chosen = targets(report, finding)
    shares = contributions.drivers(finding, chosen)
    largest = float(np.abs(shares).max()) or 1.0
    overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    for i, result in enumerate(report.regions):
        if result.box is None:
            continue
        box = [v * scale for v in result.box.as_tuple()]
        alpha = round(MAX_ALPHA * abs(float(shares[i])) / largest)
        color = RAISES if shares[i] >= 0 else LOWERS
        draw.rectangle(box, fill=(*color, alpha))
        if i in chosen:
            draw.rectangle(box, outline=(*TARGET, 255), width=2)
    panel = Image.new("RGB", (base.size[0], base.size[1] + TITLE), "black")
    panel.paste(Image.alpha_composite(base.convert("RGBA"), overlay).convert("RGB"), (0, TITLE))
    m = FINDINGS.index(finding)
    where = ", ".join(REGIONS[i].name for i in chosen)
    best = max(report.regions[i].probabilities[m] for i in chosen)
    present = any(report.call(REGIONS[i], finding).present for i in chosen)
    called = "present" if present else "absent"
    text = ImageDraw.Draw(panel)
    text.text((6, 4), f"{finding.name}: {called}, p {best:.2f}", fill="white", font=font)
    text.text((6, 21), where[:70], fill=(200, 200, 200), font=font)
    return panel
