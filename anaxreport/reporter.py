"""The public API: a loaded model that turns a chest radiograph into a :class:`Report`.

The flow is one-way (DESIGN.md §2): ingest → gate → model → rules. The model and the rules are
loaded once; each :meth:`Reporter.run` reads the input, refuses what it is not made for, runs
AnaXNet under inference mode, maps the boxes back to source pixels and applies the rules.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pydicom
import torch

from . import __version__
from .ingest import Radiograph, check_supported, read_radiograph
from .model.anaxnet import AnaXNet
from .model.checkpoint import CheckpointInfo, load_checkpoint
from .model.preprocess import to_model_input
from .report import ImageInfo, Provenance, RegionFindings, RegionResult, Report
from .resources import DEFAULT_CHECKPOINT, models_dir
from .rules import RuleSet, apply_rules, load_rules, load_thresholds
from .vocab import REGIONS, Finding

__all__ = ["Reporter"]


class Reporter:
    """AnaXNet with its checkpoint's metadata; build it with :meth:`from_pretrained`."""

    def __init__(
        self,
        model: AnaXNet,
        info: CheckpointInfo,
        rules: RuleSet | None = None,
        thresholds: Mapping[Finding | str, float] | None = None,
    ) -> None:
        self.model = model.eval()
        self.info = info
        self.rules = rules or load_rules()
        self.thresholds = dict(thresholds or {})
        self.provenance = Provenance(
            model_name=info.config.name,
            model_version=info.config.version,
            weights_sha256=info.weights_sha256,
            training_data=str(info.provenance.get("training_data", "unknown")),
            software=f"anaxreport {__version__}",
        )

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str] | None = None,
        rules: RuleSet | str | os.PathLike[str] | None = None,
        thresholds: Mapping[Finding | str, float] | str | os.PathLike[str] | None = None,
    ) -> Reporter:
        """Load a checkpoint (its .json, .safetensors or folder); the shipped one by default.

        ``rules`` is a :class:`RuleSet` or a rules file (default ``templates/rules.toml``);
        ``thresholds`` a mapping or a thresholds file that replaces the checkpoint's calibrated
        per-finding thresholds. Raises :class:`~anaxreport.errors.WeightsError` for a missing,
        corrupt or mismatched checkpoint and :class:`~anaxreport.errors.ConfigurationError`
        for a bad rules or thresholds file. Nothing is downloaded.
        """
        model, info = load_checkpoint(Path(path) if path else models_dir() / DEFAULT_CHECKPOINT)
        if rules is not None and not isinstance(rules, RuleSet):
            rules = load_rules(rules)
        if thresholds is not None and not isinstance(thresholds, Mapping):
            thresholds = load_thresholds(thresholds)
        return cls(model, info, rules, thresholds)

    def run(self, source: str | os.PathLike[str] | pydicom.Dataset) -> Report:
        """Read a DICOM file or Dataset, gate it, and report its 18 regions.

        Raises a subclass of :class:`~anaxreport.errors.AnaxReportError` for bad input.
        """
        radiograph = read_radiograph(source)
        check_supported(radiograph)
        return self.report(self.predict(radiograph))

    def report(self, findings: RegionFindings) -> Report:
        """The rule stage: statements, impression and calls from the model's region findings."""
        return apply_rules(findings, self.rules, self.thresholds)

    def predict(self, radiograph: Radiograph) -> RegionFindings:
        """The model stage on an already ingested and gated radiograph."""
        image, resize = to_model_input(radiograph.pixels, self.info.config.detector.image_size)
        with torch.inference_mode():
            out = self.model([image])
        boxes, scores = out.boxes[0].tolist(), out.scores[0].tolist()
        found, probabilities = out.found[0].tolist(), out.probabilities[0].tolist()
        regions = tuple(
            RegionResult(
                region=region,
                box=resize.to_source(tuple(boxes[i])) if found[i] else None,
                score=float(scores[i]),
                probabilities=tuple(float(p) for p in probabilities[i]),
            )
            for i, region in enumerate(REGIONS)
        )
        header = radiograph.header
        return RegionFindings(
            study=radiograph.identity,
            image=ImageInfo(
                rows=radiograph.rows,
                columns=radiograph.columns,
                modality=radiograph.modality,
                view_position=radiograph.view_position,
                pixel_spacing=radiograph.pixel_spacing,
                study_description=str(header.get("StudyDescription", "") or ""),
                body_part_examined=str(header.get("BodyPartExamined", "") or ""),
                photometric_interpretation=radiograph.photometric_interpretation,
            ),
            regions=regions,
            thresholds=tuple(float(t) for t in self.info.config.thresholds),
            provenance=self.provenance,
            header=header,
        )
