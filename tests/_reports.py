"""Hand-made region findings for rule and renderer tests (no model involved).

:func:`make_findings` builds the model stage's output for a real sample study: its header and
identity come from the DICOM file, its 18 boxes from the sample's ground-truth scene graph, and
the probabilities are what the test says (everything else low). Renderer tests run the rules
on these, so every output refers to a real image that the referees can check against.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pydicom

from anaxreport import __version__
from anaxreport.geometry import BoundingBox
from anaxreport.ingest import read_radiograph
from anaxreport.report import ImageInfo, Provenance, RegionFindings, RegionResult
from anaxreport.vocab import FINDINGS, REGIONS, finding, region

SAMPLES = Path(__file__).resolve().parents[1] / "samples"

__all__ = ["SAMPLES", "make_findings"]

PROVENANCE = Provenance(
    model_name="anaxnet-test",
    model_version="t1",
    weights_sha256="0" * 64,
    training_data="hand-made region findings (tests)",
    software=f"anaxreport {__version__}",
)


def make_findings(
    probabilities: Mapping[tuple[str, str], float] | None = None,
    *,
    sample: str = "pa_normal",
    background: float = 0.01,
    threshold: float = 0.5,
    missing: tuple[str, ...] = (),
    source: Path | None = None,
) -> RegionFindings:
    """Region findings for ``sample`` (or the DICOM file ``source``) where
    ``probabilities[(region, finding)]`` is set, every other probability is ``background``,
    every threshold is ``threshold`` and the ``missing`` regions have no box."""
    path = source or SAMPLES / f"{sample}.dcm"
    radiograph = read_radiograph(path)
    boxes = _scene_graph_boxes(SAMPLES / f"{sample}.dcm", radiograph)
    table = [[background] * len(FINDINGS) for _ in REGIONS]
    for (region_key, finding_key), p in (probabilities or {}).items():
        table[region(region_key).index][finding(finding_key).index] = p
    absent = {region(key) for key in missing}
    regions = tuple(
        RegionResult(
            region=r,
            box=None if r in absent else boxes[r.index],
            score=0.0 if r in absent else 0.99,
            probabilities=tuple(table[r.index]),
        )
        for r in REGIONS
    )
    return RegionFindings(
        study=radiograph.identity,
        image=ImageInfo.from_radiograph(radiograph),
        regions=regions,
        thresholds=(threshold,) * len(FINDINGS),
        provenance=PROVENANCE,
        header=radiograph.header,
    )


def _scene_graph_boxes(sample: Path, radiograph) -> list[BoundingBox]:
    """The sample's ground-truth boxes in source pixels, scaled to ``radiograph`` if it is not
    the sample itself; a default box where the scene graph has none."""
    path = sample.with_name(f"{sample.stem}_SceneGraph.json")
    objects = {}
    if path.exists():
        objects = {o["bbox_name"]: o for o in json.loads(path.read_text())["objects"]}
    size = pydicom.dcmread(sample, stop_before_pixels=True)
    sx, sy = radiograph.columns / size.Columns, radiograph.rows / size.Rows
    boxes = []
    for r in REGIONS:
        o = objects.get(r.name)
        if o is None:
            boxes.append(BoundingBox(10.0, 10.0, 20.0, 20.0))
            continue
        boxes.append(
            BoundingBox(
                o["original_x1"] * sx + 0.25,  # fractional, so round trips test sub-pixel
                o["original_y1"] * sy + 0.5,
                o["original_x2"] * sx - 0.125,
                o["original_y2"] * sy,
            ).clip(radiograph.columns, radiograph.rows)
        )
    return boxes
