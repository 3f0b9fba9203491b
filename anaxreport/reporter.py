"""The public API: a loaded model that turns a chest radiograph into a :class:`Report`.

The flow is one-way (DESIGN.md §2): ingest → gate → model → rules. The model, the rules and the
gate rules are loaded once; each :meth:`Reporter.run` reads the input, refuses what it is not
made for (:mod:`anaxreport.gate`), runs AnaXNet under inference mode, maps the boxes back to
source pixels and applies the rules.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pydicom

from . import __version__
from .errors import WeightsError
from .gate import GateRules, load_gate_rules
from .gate import check as check_gate
from .geometry import Resize
from .ingest import Radiograph, read_radiograph
from .model.checkpoint import CheckpointInfo, read_arrays
from .model.plan import batches_by_size, padded_size
from .model.preprocess import model_input
from .model.runtime import resolve_runtime
from .report import (
    ImageInfo,
    Provenance,
    RegionContributions,
    RegionFindings,
    RegionResult,
    Report,
)
from .resources import DEFAULT_CHECKPOINT, models_dir
from .rules import RuleSet, apply_rules, load_rules, load_thresholds
from .vocab import REGIONS, Finding

if TYPE_CHECKING:
    from .model.anaxnet import AnaXNet
    from .model.engine import OnnxModel
    from .model.inference import InferenceModel

__all__ = ["Reporter"]


class Reporter:
    """AnaXNet with its checkpoint's metadata; build it with :meth:`from_pretrained`.

    ``model`` is a trained :class:`~anaxreport.model.anaxnet.AnaXNet` (left unchanged), its
    torch :class:`~anaxreport.model.inference.InferenceModel`, or its ONNX Runtime
    :class:`~anaxreport.model.engine.OnnxModel`; the reporter runs one of the last two.
    """

    def __init__(
        self,
        model: AnaXNet | InferenceModel | OnnxModel,
        info: CheckpointInfo,
        rules: RuleSet | None = None,
        thresholds: Mapping[Finding | str, float] | None = None,
        gate: GateRules | None = None,
    ) -> None:
        # a trained AnaXNet has no runtime: the reporter runs its torch inference form
        self.model = model if hasattr(model, "runtime") else _inference_model(model)
        self.info = info
        self.rules = rules or load_rules()
        self.thresholds = dict(thresholds or {})
        self.gate = gate or GateRules()
        self.provenance = checkpoint_provenance(info)
        self._one_pass = threading.Lock()

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str] | None = None,
        rules: RuleSet | str | os.PathLike[str] | None = None,
        thresholds: Mapping[Finding | str, float] | str | os.PathLike[str] | None = None,
        gate: GateRules | str | os.PathLike[str] | None = None,
        runtime: str = "auto",
        threads: int | None = None,
    ) -> Reporter:
        """Load a checkpoint (its .json, .safetensors or folder); the shipped one by default.

        ``rules`` is a :class:`RuleSet` or a rules file (default ``templates/rules.toml``);
        ``thresholds`` a mapping or a thresholds file that replaces the checkpoint's calibrated
        per-finding thresholds; ``gate`` the input gate's :class:`~anaxreport.gate.GateRules` or
        a gate TOML file (default: the built-in rules, which ``templates/gate.toml`` documents).
        ``runtime`` picks the engine: ``onnxruntime`` (:class:`~.model.engine.OnnxModel`, the
        CPU's, which never imports torch), ``torch`` (the one for a GPU), or ``auto``, the
        former where it is installed and the detector's normalisation folds. ``threads`` are
        ONNX Runtime's (default: ``OMP_NUM_THREADS`` where set, else every core); torch's are
        the process's own.
        Raises :class:`~anaxreport.errors.WeightsError` for a missing, corrupt or mismatched
        checkpoint and :class:`~anaxreport.errors.ConfigurationError` for a bad rules,
        thresholds or gate file or runtime. Nothing is downloaded.
        """
        state, info = read_arrays(Path(path) if path else models_dir() / DEFAULT_CHECKPOINT)
        try:
            model = load_inference(info, state, runtime, threads)
        except WeightsError as exc:
            raise WeightsError(f"{info.weights_file} does not fit its config: {exc}") from exc
        if rules is not None and not isinstance(rules, RuleSet):
            rules = load_rules(rules)
        if thresholds is not None and not isinstance(thresholds, Mapping):
            thresholds = load_thresholds(thresholds)
        if gate is not None and not isinstance(gate, GateRules):
            gate = load_gate_rules(gate)
        return cls(model, info, rules, thresholds, gate)

    def run(self, source: str | os.PathLike[str] | pydicom.Dataset) -> Report:
        """Read a DICOM file or Dataset, gate it, and report its 18 regions.

        Raises a subclass of :class:`~anaxreport.errors.AnaxReportError` for bad input; its
        ``reason`` says which (``lateral-view``, ``truncated``, ...).
        """
        radiograph = self.read(source)
        return self.report(self.predict(radiograph))

    def explain(self, source: str | os.PathLike[str] | pydicom.Dataset) -> Report:
        """:meth:`run`, with the findings' explanation: its report draws which regions drove
        each finding (``report.to_explanation_png()``, ``to_explanation_sc()``)."""
        radiograph = self.read(source)
        return self.report(self.predict_many([radiograph], explain=True)[0])

    def read(self, source: str | os.PathLike[str] | pydicom.Dataset) -> Radiograph:
        """The ingest and gate stages alone: a radiograph this reporter would report on.

        Raises like :meth:`run`; no model runs, so a batch can sort its inputs cheaply.
        """
        radiograph = read_radiograph(source, max_side=self.gate.max_side)
        check_gate(radiograph, self.gate)
        return radiograph

    def report(self, findings: RegionFindings) -> Report:
        """The rule stage: statements, impression and calls from the model's region findings."""
        return apply_rules(findings, self.rules, self.thresholds)

    def predict(self, radiograph: Radiograph) -> RegionFindings:
        """The model stage on an already ingested and gated radiograph."""
        return self.predict_many([radiograph])[0]

    def _findings(
        self,
        radiograph: Radiograph,
        resize: Resize,
        boxes: list[list[float]],
        scores: list[float],
        located: list[bool],
        probabilities: list[list[float]],
    ) -> RegionFindings:
        """One study's rows of the model's output, boxes back in source pixels."""
        regions = tuple(
            RegionResult(
                region=region,
                box=resize.to_source(tuple(boxes[i])) if located[i] else None,
                score=float(scores[i]),
                probabilities=tuple(float(p) for p in probabilities[i]),
            )
            for i, region in enumerate(REGIONS)
        )
        return RegionFindings(
            study=radiograph.identity,
            image=ImageInfo.from_radiograph(radiograph),
            regions=regions,
            thresholds=tuple(float(t) for t in self.info.config.thresholds),
            provenance=self.provenance,
            header=radiograph.header,
        )

    def model_input_size(self, rows: int, columns: int) -> tuple[int, int]:
        """The size the model input of a ``rows`` × ``columns`` image pads to. Studies of one
        such size can share a forward pass (:meth:`predict_many`)."""
        image_size = self.info.config.detector.image_size
        return padded_size(Resize.keep_aspect((rows, columns), image_size).model_size, image_size)

    def predict_many(
        self, radiographs: Sequence[Radiograph], explain: bool = False
    ) -> list[RegionFindings]:
        """The model stage on several radiographs, in order: :meth:`predict`'s findings.

        Radiographs whose model inputs pad to the same size go through the model together, in
        one forward pass: the pass's fixed costs (operator dispatch, the RPN's selection, the
        box head's weights read for a handful of rows) are shared, about a tenth of each
        study's model time on two cores (``anaxreport bench``). Inputs of different padded
        sizes are never padded together: padding changes the proposals a study gets, and each
        study's findings here are the ones it would get alone.

        With ``explain``, each :class:`RegionFindings` also carries its
        :class:`~anaxreport.report.RegionContributions`, for the explanation overlays.
        """
        image_size = self.info.config.detector.image_size
        inputs = [model_input(radiograph.pixels, image_size) for radiograph in radiographs]
        sizes = [padded_size(image.shape, image_size) for image, _ in inputs]
        found: dict[int, RegionFindings] = {}
        for members in batches_by_size(sizes, max(1, len(inputs))):
            out = self._run_model([inputs[i][0] for i in members], explain)
            columns = (out.boxes, out.scores, out.found, out.probabilities)
            rows = zip(*(column.tolist() for column in columns), strict=True)
            for slot, (index, values) in enumerate(zip(members, rows, strict=True)):
                findings = self._findings(radiographs[index], inputs[index][1], *values)
                if out.contributions is not None:
                    findings = replace(findings, contributions=RegionContributions(
                        shares=np.asarray(out.contributions[slot]),
                        pixels=radiographs[index].pixels,
                        method=self.model.head.CONTRIBUTIONS,
                    ))  # fmt: skip
                found[index] = findings
        return [found[index] for index in range(len(radiographs))]

    def _run_model(self, images: list[np.ndarray], explain: bool) -> Any:
        """One forward pass over grey model inputs, in the model's own kind of arrays.

        One pass at a time: a pass already keeps every core busy (its runtime's threads), so
        two at once only contend for them; threads that share the reporter (a batch's
        workers) read and render while another's pass runs (2 workers: 15 → 18 studies/s)."""
        with self._one_pass:
            if getattr(self.model, "runtime", "torch") == "onnxruntime":
                return self.model(images, explain=explain)
            import torch

            with torch.inference_mode():
                tensors = [torch.from_numpy(image).expand(3, -1, -1) for image in images]
                # contributions only when asked: a model may not know the keyword
                return self.model(tensors, explain=True) if explain else self.model(tensors)


def load_inference(
    info: CheckpointInfo,
    state: Mapping[str, np.ndarray],
    runtime: str = "auto",
    threads: int | None = None,
) -> InferenceModel | OnnxModel:
    """The inference model of a checkpoint's arrays on the engine ``runtime`` resolves to."""
    foldable = info.config.detector.norm != "group"
    if resolve_runtime(runtime, foldable) == "onnxruntime":
        from .model.engine import OnnxModel

        return OnnxModel(info.config, state, threads)
    import torch

    from .model.inference import InferenceModel

    return InferenceModel(info.config, {k: torch.from_numpy(v) for k, v in state.items()})


def _inference_model(model: AnaXNet) -> InferenceModel:
    from .model.inference import InferenceModel

    return InferenceModel.from_model(model)


def checkpoint_provenance(info: CheckpointInfo) -> Provenance:
    """What every output says of the model that made it: a checkpoint's name, version,
    weights hash and training data, and this software."""
    return Provenance(
        model_name=info.config.name,
        model_version=info.config.version,
        weights_sha256=info.weights_sha256,
        training_data=str(info.provenance.get("training_data", "unknown")),
        software=f"anaxreport {__version__}",
    )
