"""``anaxreport bench``: where a study's time goes, measured against the compute floor (issue 7).

"2 s per study" alone cannot tell slow code from a slow machine. So the benchmark counts the
model's floating-point operations with torch's own :class:`FlopCounterMode` (on the model's
torch form; in a child process where the torch-free engine is timed, so that the timed process
holds what the product holds, plus torch for the matmul rate), measures this
machine's fp32 matrix-multiply rate with the threads the model uses (between the model's own
runs, so that both see a shared machine in the same state), and divides: the floor is
the time the arithmetic alone would take at that rate, and the ratio says how far the model is
from it. Every other stage (decode, gate, rules, each renderer) is timed through the product's
own functions and set against the model time, so "the pipeline around the model is cheap" is a
number too. The model's inner stages are read off forward hooks during real
:meth:`Reporter.predict` calls: nothing is re-implemented, and the split costs a few clock reads.

Each stage gets ``warmup`` untimed calls on the first study (lazy imports, allocator growth and
caches are paid once per process). Then each study is timed in up to ``repeat`` rounds of one
call of every stage in the product's order (decode, gate, preprocess, model, rules, renderers),
so that every stage sees the machine as a study in the product does: after the stage before it,
with the caches the model left (a stage repeated on its own in a burst runs warm and catches one
moment of a shared machine's drift: it read the stages after the model 30-60 % faster). The
rounds stop once they have spent ``max_stage_seconds`` on a study, but never before three, so
a slow model still gets a median and the defaults end in minutes. A stage's time is the mean
over the studies of its median per study.

With the batch part on (not ``--no-batch``), the model is also timed as the batch CLI runs it:
:data:`~anaxreport.batch.BATCH_SIZE` studies of one padded size per forward pass, its time per
study against the floor at a matmul rate timed between those passes.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import logging
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom
import torch
from pydicom.uid import generate_uid
from torch.utils.flop_counter import FlopCounterMode

from . import __version__
from .batch import BATCH_SIZE, FORMATS, RenderOptions, find_inputs, render, run_batch
from .errors import AnaxReportError, ConfigurationError, NotDicomError
from .gate import check as check_gate
from .ingest import Radiograph, read_radiograph
from .model.checkpoint import read_weights, save_checkpoint
from .model.config import DetectorConfig, ModelConfig
from .model.engine import OnnxModel
from .model.inference import InferenceModel
from .model.preprocess import model_input, to_model_input
from .reporter import Reporter
from .resources import DEFAULT_CHECKPOINT, models_dir

if TYPE_CHECKING:
    from torch import Tensor

    from .report import RegionFindings

__all__ = ["STAGES", "format_table", "reference_checkpoint", "run_benchmark", "samples_dir"]

log = logging.getLogger(__name__)

#: Names the layout of the result; bumped when a key changes meaning or goes away.
SCHEMA = "anaxreport.bench/1"
#: The model's inner stages, as the forward hooks split a :meth:`Reporter.predict` call: each
#: the span between two of the clock's marks; the engine's graph of a stage
#: (:attr:`~anaxreport.model.engine.OnnxModel.sessions`) is named by its end mark.
MODEL_SPANS = {
    "backbone": ("start", "backbone"),
    "rpn": ("backbone", "rpn"),
    "region features": ("rpn", "regions"),
    "gcn head": ("regions", "head"),
}
MODEL_STAGES = tuple(MODEL_SPANS)
#: A stage's time inside ONNX Runtime's graphs is timed under its name with this after it.
IN_RUNTIME = " in onnxruntime"
#: The torch inference model's modules in each model stage (how :class:`_ModelClock` splits
#: it), which the FLOP counter counts by.
STAGE_MODULES = {
    "backbone": ("transform", "backbone"),
    "rpn": ("rpn",),
    "region features": ("regions",),
    "gcn head": ("head",),
}
#: The same for the ONNX Runtime engine, whose first graph holds the RPN head's convolutions:
#: its ``rpn`` stage is the proposals' selection alone.
ENGINE_STAGE_MODULES = {**STAGE_MODULES, "backbone": ("transform", "backbone", "rpn"), "rpn": ()}
#: Every timed stage, in pipeline order (the table's rows).
STAGES = (
    "decode",
    "gate",
    "preprocess",
    *MODEL_STAGES,
    "model total",
    "rules",
    *(f"{fmt} render" for fmt in FORMATS),
)
#: The stages around the model whose sum the issue wants at most 10% of the model time.
PIPELINE = ("decode", "gate", "rules", *(s for s in STAGES if s.endswith("render")))
#: Issue 7's targets on the CPU: the model's time at most this many times its floor, and the
#: pipeline around it at most this percentage of the model's time.
TARGET_RATIO = 1.2
TARGET_PERCENT = 10.0
#: The operations the FLOP breakdown always names (others appear when counted).
FLOP_OPS = ("convolution", "addmm", "mm", "bmm")
CPU_MATMUL_SIZES = (1024, 2048)
GPU_MATMUL_SIZES = (2048, 4096)
COLD_START_RUNS = 3
BATCH_STUDIES = 24
BATCH_WORKERS = (1, 2)
#: Timed calls a stage gets on each study even past its time budget (a median needs some).
MIN_RUNS = 3
TIME_TOOL = Path("/usr/bin/time")


def reference_checkpoint(folder: Path) -> Path:
    """Write a random-weight AnaXNet of issue 7's reference size into ``folder``: torchvision's
    Faster R-CNN defaults (ResNet-50-FPN, 512 px, 1000 proposals; about 120 GFLOP), every
    region's best box kept (threshold 0, so that every output is written). Its timings show the
    pipeline at the scale of the paper's model, where the shipped model (ResNet-18, 256 px) is a
    tenth of the arithmetic. Seeded: the same weights every time."""
    from .model.anaxnet import AnaXNet  # imports torchvision: for this checkpoint alone

    config = ModelConfig(
        name="anaxnet-reference-random",
        version="1",
        detector=DetectorConfig(score_threshold=0.0),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AnaXNet(config)
    path = folder / "anaxnet-reference-random.json"
    provenance = {"training_data": "none: random weights, for timing only (anaxreport bench)"}
    save_checkpoint(model, path, provenance=provenance)
    return path


def samples_dir() -> Path:
    """The phantom studies: packaged beside the templates in a wheel, else the checkout's."""
    package = Path(__file__).resolve().parent
    installed = package / "_resources" / "samples"
    return installed if installed.is_dir() else package.parent / "samples"


def _no_sync() -> None:
    """CPU work is done when the call returns."""


def _timed(
    name: str,
    fn: Callable[[], object],
    sync: Callable[[], None] = _no_sync,
    made: dict[str, Any] | None = None,
) -> Callable[[], dict[str, float]]:
    """A call that runs ``fn`` once and says how long it took under ``name``; what ``fn``
    returns goes into ``made`` under ``name``, for the stages after it."""

    def call() -> dict[str, float]:
        start = time.perf_counter()
        out = fn()
        sync()
        elapsed = time.perf_counter() - start
        if made is not None:
            made[name] = out
        return {name: elapsed}

    return call


def _sample(
    call: Callable[[], dict[str, float]], warmup: int, repeat: int, budget: float
) -> dict[str, list[float]]:
    """``warmup`` untimed calls, then timed ones until ``repeat`` or the ``budget`` (seconds)
    is spent, never fewer than ``MIN_RUNS`` (or ``repeat`` when smaller)."""
    return _sample_rounds([call], warmup, repeat, budget)


def _sample_rounds(
    calls: Sequence[Callable[[], dict[str, float]]], warmup: int, repeat: int, budget: float
) -> dict[str, list[float]]:
    """:func:`_sample` of several calls in rounds of one call of each, in their order: each
    call's runs span the same stretch of the machine's drift and follow the calls before it
    (the module docstring says why)."""
    for call in calls:
        for _ in range(warmup):
            call()
    runs: dict[str, list[float]] = {}
    count, start = 0, time.perf_counter()
    while count < repeat and (
        count < min(MIN_RUNS, repeat) or time.perf_counter() - start < budget
    ):
        for call in calls:
            for name, seconds in call().items():
                runs.setdefault(name, []).append(seconds)
        count += 1
    return runs


class _ModelClock:
    """Stamps of the stage boundaries inside the model's real forward.

    :class:`~anaxreport.model.inference.InferenceModel` calls ``transform``, ``backbone``,
    ``rpn``, then ``regions`` (scores the proposals, picks each region's box and re-pools it
    through the box head) and ``head``; forward hooks stamp them. So: backbone = transform
    start → backbone end, rpn = → rpn end, region features = → head start, gcn head = head
    start → head end. On a GPU each stamp synchronises first, or it would time the kernel
    launches only. :class:`~anaxreport.model.engine.OnnxModel` calls its ``clock`` at the same
    boundaries (:data:`ENGINE_STAGE_MODULES` says what its stages hold), and the runs of each
    stage's graph are timed too: the rest of the stage is the NumPy and Python between them.
    """

    def __init__(
        self, model: InferenceModel | OnnxModel, sync: Callable[[], None] = _no_sync
    ) -> None:
        self._sync = sync
        self.marks: dict[str, float] = {}
        self.in_runtime: dict[str, float] = {}
        self._model = model
        if isinstance(model, OnnxModel):
            model.clock = self._mark
            for stage, session in model.sessions.items():
                session.run = self._timed(stage, session.run)  # type: ignore[method-assign]
            self._handles = []
            return
        self._handles = [
            model.transform.register_forward_pre_hook(self._stamp("start")),
            model.backbone.register_forward_hook(self._stamp("backbone")),
            model.rpn.register_forward_hook(self._stamp("rpn")),
            model.head.register_forward_pre_hook(self._stamp("regions")),
            model.head.register_forward_hook(self._stamp("head")),
        ]

    def _mark(self, name: str) -> None:
        self._sync()
        self.marks[name] = time.perf_counter()

    def _stamp(self, name: str) -> Callable[..., None]:
        """A forward hook that marks ``name``."""
        return lambda *_: self._mark(name)

    def _timed(self, stage: str, run: Callable[..., Any]) -> Callable[..., Any]:
        """``run``, adding its time to ``stage``'s time in ONNX Runtime."""

        def timed(*inputs: Any) -> Any:
            start = time.perf_counter()
            try:
                return run(*inputs)
            finally:
                self.in_runtime[stage] = self.in_runtime.get(stage, 0.0) + (
                    time.perf_counter() - start
                )

        return timed

    def clear(self) -> None:
        """Forget the last pass's stamps and times."""
        self.marks.clear()
        self.in_runtime.clear()

    def stages(self) -> dict[str, float]:
        marks = self.marks
        stages = {name: marks[end] - marks[start] for name, (start, end) in MODEL_SPANS.items()}
        if isinstance(self._model, OnnxModel):
            for name, (_, end) in MODEL_SPANS.items():
                stages[name + IN_RUNTIME] = self.in_runtime.get(end, 0.0)
            stages["model total" + IN_RUNTIME] = sum(self.in_runtime.values())
        return stages

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        if isinstance(self._model, OnnxModel):
            self._model.clock = None
            for session in self._model.sessions.values():
                del session.run  # the class's own again


def _op_name(op: object) -> str:
    return str(op).rsplit(".", 1)[-1]


def count_flops(
    model: InferenceModel, image: Tensor, stages: Mapping[str, tuple[str, ...]] = STAGE_MODULES
) -> dict[str, Any]:
    """Total, per-operation and per-stage FLOPs of one forward on ``image``, as torch counts
    them (the counter tracks modules by name: a stage is the ``stages`` modules the clock
    times)."""
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model([image])
    counts = counter.get_flop_counts()
    per_op = dict.fromkeys(FLOP_OPS, 0)
    for op, flops in counts.get("Global", {}).items():
        per_op[_op_name(op)] = per_op.get(_op_name(op), 0) + int(flops)
    prefix = type(model).__name__
    per_stage = {
        stage: sum(
            int(n) for module in modules for n in counts.get(f"{prefix}.{module}", {}).values()
        )
        for stage, modules in stages.items()
    }
    return {"total": int(counter.get_total_flops()), "per_op": per_op, "per_stage": per_stage}


def matmul_rate(
    sizes: Sequence[int],
    device: torch.device,
    warmup: int,
    repeat: int,
    budget: float,
) -> dict[str, Any]:
    """Median fp32 ``torch.mm`` GFLOP/s per square size, and the best of them."""
    runs: dict[str, list[float]] = {}
    for call in matmul_calls(sizes, device):
        runs.update(_sample(call, warmup, repeat, budget))
    return _rates(runs, sizes)


def matmul_calls(
    sizes: Sequence[int], device: torch.device
) -> list[Callable[[], dict[str, float]]]:
    """Per square size, a call that multiplies once untimed and once timed (``mm N``): between
    other work, the untimed product brings the operands back as a loop of products has them."""
    sync = torch.cuda.synchronize if device.type == "cuda" else _no_sync
    calls = []
    for n in sizes:
        a, b = torch.rand(n, n, device=device), torch.rand(n, n, device=device)
        product = partial(torch.mm, a, b, out=torch.empty(n, n, device=device))
        calls.append(_together(product, _timed(f"mm {n}", product, sync)))
    return calls


def _rates(runs: dict[str, list[float]], sizes: Sequence[int]) -> dict[str, Any]:
    rates = {str(n): 2 * n**3 / statistics.median(runs[f"mm {n}"]) / 1e9 for n in sizes}
    return {
        "gflops_by_size": rates,
        "best_gflops": max(rates.values()),
        "threads": torch.get_num_threads(),
        "dtype": "float32",
    }


def _together(*calls: Callable[[], object]) -> Callable[[], dict[str, float]]:
    """One call that makes ``calls`` one after the other and merges what the timed ones time."""

    def call() -> dict[str, float]:
        out: dict[str, float] = {}
        for each in calls:
            timed = each()
            if isinstance(timed, dict):
                out.update(timed)
        return out

    return call


@dataclass
class _Study:
    """One input with what the untimed set-up call made of it."""

    path: Path
    radiograph: Radiograph
    findings: RegionFindings
    model_input: tuple[int, int]
    flops: dict[str, Any]


def _prepare(reporter: Reporter, path: Path, options: RenderOptions) -> _Study:
    """Run the whole pipeline once untimed: it proves the input reports and renders and warms
    its image size's caches (the FLOPs are counted apart: :func:`_count_flops`)."""
    radiograph = reporter.read(path)
    image, _ = model_input(radiograph.pixels, reporter.info.config.detector.image_size)
    findings = reporter.predict(radiograph)
    report = reporter.report(findings)
    for fmt in FORMATS:
        render(report, fmt, options)
    return _Study(
        path=path,
        radiograph=radiograph,
        findings=findings,
        model_input=(int(image.shape[-2]), int(image.shape[-1])),
        flops={},
    )


def _count_flops(
    reporter: Reporter, checkpoint: Path, paths: Sequence[Path], counted: InferenceModel | None
) -> list[dict[str, Any]]:
    """:func:`count_flops` of each input, on its own image size: on ``counted`` where the
    torch model is here anyway (``--runtime torch``, a GPU run), else in a child process, so
    that the timed process holds no torch model and no counter (about 250 MB of its peak RSS
    that the product never holds)."""
    engine = reporter.model.runtime == "onnxruntime"
    if counted is not None:
        return [
            _flops_of(counted, reporter.info.config, reporter.gate.max_side, path, engine)
            for path in paths
        ]
    request = {"checkpoint": str(checkpoint), "paths": [str(p) for p in paths],
               "max_side": reporter.gate.max_side, "engine": engine}  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", "from anaxreport.bench import _count_flops_child as c; c()"],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or [""]
        raise AnaxReportError(f"bench: counting FLOPs exited {proc.returncode}: {tail[0]}")
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def _flops_of(
    model: InferenceModel, config: ModelConfig, max_side: int, path: Path, engine: bool
) -> dict[str, Any]:
    image, _ = to_model_input(read_radiograph(path, max_side=max_side).pixels,
                              config.detector.image_size)  # fmt: skip
    return count_flops(model, image, ENGINE_STAGE_MODULES if engine else STAGE_MODULES)


def _count_flops_child() -> None:
    """:func:`_count_flops`'s child: the request as JSON on stdin, the counts on stdout."""
    request = json.load(sys.stdin)
    state, info = read_weights(request["checkpoint"])
    model = InferenceModel(info.config, state)
    counts = [
        _flops_of(model, info.config, request["max_side"], Path(path), request["engine"])
        for path in request["paths"]
    ]
    json.dump(counts, sys.stdout)


def _predict(reporter: Reporter, clock: _ModelClock, radiograph: Radiograph) -> dict[str, float]:
    """One real :meth:`Reporter.predict` call, its total and its hooked inner stages."""
    clock.clear()
    start = time.perf_counter()
    reporter.predict(radiograph)
    total = time.perf_counter() - start
    return {**clock.stages(), "model total": total}


def _predict_batch(reporter: Reporter, radiographs: list[Radiograph]) -> dict[str, float]:
    """One :meth:`Reporter.predict_many` call over a batch, its time per study."""
    start = time.perf_counter()
    reporter.predict_many(radiographs)
    return {"batched": (time.perf_counter() - start) / len(radiographs)}


def _time_batched(
    reporter: Reporter,
    studies: Sequence[_Study],
    size: int,
    repeat: int,
    budget: float,
    matmul: Sequence[Callable[[], dict[str, float]]],
) -> dict[str, Any]:
    """The model as the batch CLI runs it: ``size`` studies of one padded size per forward
    pass. Each study's batch is its radiograph ``size`` times (the samples' sizes differ, and
    studies of different padded sizes never share a pass); the floor's rate is timed between
    these runs, as the single-study one is between those."""
    per_study, between = [], {f"mm {n}": [] for n in CPU_MATMUL_SIZES}
    for study in studies:
        call = _together(partial(_predict_batch, reporter, [study.radiograph] * size), *matmul)
        runs = _sample(call, 1, repeat, budget)
        per_study.append(statistics.median(runs["batched"]) * 1e3)
        for name, times in between.items():
            times.extend(runs[name])
    rate = _rates(between, CPU_MATMUL_SIZES)
    floors = [s.flops["total"] / (rate["best_gflops"] * 1e9) * 1e3 for s in studies]
    return {
        "batch_size": size,
        "median_ms": statistics.fmean(per_study),
        "per_study_ms": per_study,
        "floor_ms": statistics.fmean(floors),
        "ratio": sum(per_study) / sum(floors),
        "matmul": rate,
    }


def _time_study(
    reporter: Reporter,
    clock: _ModelClock,
    study: _Study,
    options: RenderOptions,
    warmup: int,
    repeat: int,
    budget: float,
    matmul: Sequence[Callable[[], dict[str, float]]] = (),
) -> dict[str, list[float]]:
    """Every stage's timed runs on one study (seconds); the ``matmul`` calls run after each
    model call, so the floor's rate is measured in the machine's state of the model's time.
    Each round's renderers take the report its rules made, as in the product: nothing a report
    keeps is reused from another round. The SR and GSPS renderers write the files the outlets
    write (:meth:`~anaxreport.report.Report.to_sr_file`), data set and encoding in one."""
    size = reporter.info.config.detector.image_size
    radiograph = study.radiograph
    made: dict[str, Any] = {}

    def rendered(fmt: str) -> str | bytes:
        return render(made["rules"], fmt, options)

    calls = [
        _timed("decode", partial(read_radiograph, study.path, max_side=reporter.gate.max_side)),
        _timed("gate", partial(check_gate, radiograph, reporter.gate)),
        _timed("preprocess", partial(model_input, radiograph.pixels, size)),
        _together(partial(_predict, reporter, clock, radiograph), *matmul),
        _timed("rules", partial(reporter.report, study.findings), made=made),
        *(_timed(f"{fmt} render", partial(rendered, fmt)) for fmt in FORMATS),
    ]
    return _sample_rounds(calls, warmup, repeat, budget)


def _stage_summary(per_study: list[dict[str, list[float]]], names: Iterable[str]) -> dict[str, Any]:
    """Per stage: the mean over studies of the per-study median, in ms, and the run counts."""
    summary: dict[str, Any] = {}
    for name in names:
        medians = [statistics.median(runs[name]) * 1e3 for runs in per_study]
        summary[name] = {
            "median_ms": statistics.fmean(medians),
            "per_study_ms": medians,
            "runs": [len(runs[name]) for runs in per_study],
        }
    model_ms = summary["model total"]["median_ms"]
    for stage in summary.values():
        stage["x_model"] = stage["median_ms"] / model_ms
    return summary


def _in_runtime(
    per_study: list[dict[str, list[float]]], stages: dict[str, Any]
) -> dict[str, Any] | None:
    """The engine's time inside ONNX Runtime's graphs (the mean over studies of the median, in
    ms), per model stage and in all, against the floor; the rest of the pass is NumPy, SciPy
    and Python. None for the torch model."""
    key = "model total" + IN_RUNTIME
    if not all(key in runs for runs in per_study):
        return None
    per_stage = {
        name: statistics.fmean(statistics.median(runs[name + IN_RUNTIME]) * 1e3
                               for runs in per_study)
        for name in (*MODEL_STAGES, "model total")
    }  # fmt: skip
    total = per_stage.pop("model total")
    model = stages["model total"]
    return {
        "ms": total,
        "x_floor": total / model["floor_ms"],
        "rest_ms": model["median_ms"] - total,
        "per_stage_ms": per_stage,
    }


def _gpu_predict(
    model: InferenceModel,
    clock: _ModelClock,
    radiograph: Radiograph,
    size: int,
    device: torch.device,
) -> dict[str, float]:
    """:meth:`Reporter.predict`'s model part on the GPU: preprocess, copy, forward, read back."""
    clock.clear()
    torch.cuda.synchronize()
    start = time.perf_counter()
    image, _ = to_model_input(radiograph.pixels, size)
    out = model([image.to(device)])
    for tensor in (out.boxes, out.scores, out.found, out.probabilities):
        tensor.tolist()
    torch.cuda.synchronize()
    total = time.perf_counter() - start
    return {**clock.stages(), "model total": total}


def _gpu_benchmark(
    reporter: Reporter,
    in_torch: InferenceModel,
    studies: Sequence[_Study],
    flops: float,
    warmup: int,
    repeat: int,
    budget: float,
) -> dict[str, Any]:
    """Model time on the GPU, with its own fp32 matmul rate, floor and ratio."""
    device = torch.device("cuda")
    model = copy.deepcopy(in_torch).to(device).eval()
    size = reporter.info.config.detector.image_size
    clock = _ModelClock(model, torch.cuda.synchronize)
    try:
        with torch.inference_mode():
            rate = matmul_rate(GPU_MATMUL_SIZES, device, warmup, repeat, budget)
            per_study = [
                _sample(
                    partial(_gpu_predict, model, clock, study.radiograph, size, device),
                    warmup if index == 0 else 0,
                    repeat,
                    budget,
                )
                for index, study in enumerate(studies)
            ]
    finally:
        clock.close()
    stages = _stage_summary(per_study, (*MODEL_STAGES, "model total"))
    floor = flops / (rate["best_gflops"] * 1e9)
    model_s = stages["model total"]["median_ms"] / 1e3
    with _tf32_off():
        fp32 = _gpu_agreement(in_torch, model, studies, size, device)
    return {
        "device": torch.cuda.get_device_name(device),
        "agreement": _gpu_agreement(in_torch, model, studies, size, device),
        "agreement_fp32": fp32,
        "tf32": _tf32_settings(),
        "matmul": rate,
        "floor_s": floor,
        "model_s": model_s,
        "ratio": model_s / floor,
        "stages": stages,
    }


def _gpu_agreement(
    on_cpu: InferenceModel,
    on_gpu: InferenceModel,
    studies: Sequence[_Study],
    size: int,
    device: torch.device,
) -> dict[str, Any]:
    """How far the GPU's outputs are from the same model's on the CPU, worst case over the
    studies (the tests hold the CPU paths to 0.01 px and 1e-4; TF32 convolutions, torch's
    default on a GPU, move them further)."""
    worst = {"boxes_px": 0.0, "scores": 0.0, "probabilities": 0.0}
    same = True
    with torch.inference_mode():
        for study in studies:
            image, _ = to_model_input(study.radiograph.pixels, size)
            cpu, gpu = on_cpu([image]), on_gpu([image.to(device)])
            same = same and bool(torch.equal(cpu.found, gpu.found.cpu()))
            for key, a, b in (("boxes_px", cpu.boxes, gpu.boxes),
                              ("scores", cpu.scores, gpu.scores),
                              ("probabilities", cpu.probabilities, gpu.probabilities)):  # fmt: skip
                worst[key] = max(worst[key], float((a - b.cpu()).abs().max()))
    return {**worst, "same_regions_found": same}


def _tf32_settings() -> dict[str, bool]:
    return {
        "matmul": torch.backends.cuda.matmul.allow_tf32,
        "cudnn": torch.backends.cudnn.allow_tf32,
    }


@contextmanager
def _tf32_off() -> Iterator[None]:
    """Plain fp32 on the GPU for the block: the check that it computes the CPU's function.

    With TF32 on (torch's default for convolutions, which the timings keep) a region whose two
    best proposals score nearly alike can take the other one: on the random-weight
    ``--reference`` model, boxes moved up to 473 px and probabilities 0.24 on an H100, against
    0.003 px and 3e-5 with TF32 off.
    """
    timed = _tf32_settings()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = timed["matmul"]
        torch.backends.cudnn.allow_tf32 = timed["cudnn"]


def _apart(agreement: dict[str, Any]) -> str:
    return (
        f"boxes {agreement['boxes_px']:.1e} px, scores {agreement['scores']:.1e}, "
        f"probabilities {agreement['probabilities']:.1e} apart"
        + ("" if agreement["same_regions_found"] else ", NOT the same regions found")
    )


def _peak_rss_mib(kib_or_bytes: int) -> float:
    """ru_maxrss is KiB on Linux and bytes on macOS."""
    return kib_or_bytes / (2**20 if sys.platform == "darwin" else 1024)


def cold_start(
    sample: Path, model: Path | None, threads: int | None, runs: int = COLD_START_RUNS
) -> dict[str, Any]:
    """Wall time and peak RSS of fresh ``python -m anaxreport SAMPLE --format text`` runs."""
    command = _cli_command([str(sample), "--format", "text"], model)
    walls: list[float] = []
    peaks: list[float] = []
    for _ in range(runs):
        wall, peak = _measured_run(command, threads, "cold start")
        walls.append(wall)
        peaks.append(peak)
    return {
        "command": command,
        "runs_s": walls,
        "best_s": min(walls),
        "median_s": statistics.median(walls),
        "peak_rss_mib": max(peaks),
        "rss_from": _rss_source(),
    }


def _cli_command(arguments: list[str], model: Path | None) -> list[str]:
    command = [sys.executable, "-m", "anaxreport", *arguments]
    return [*command, "--model", str(model)] if model is not None else command


def _rss_source() -> str:
    return "/usr/bin/time -v" if TIME_TOOL.is_file() else "getrusage(RUSAGE_CHILDREN)"


def _measured_run(command: list[str], threads: int | None, what: str) -> tuple[float, float]:
    """Wall time (s) and peak RSS (MiB) of one run of ``command`` in a fresh process."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    wrapper = [str(TIME_TOOL), "-v"] if TIME_TOOL.is_file() else []
    start = time.perf_counter()
    proc = subprocess.run([*wrapper, *command], capture_output=True, text=True, env=env,
                          check=False)  # fmt: skip
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or [""]
        raise AnaxReportError(f"bench: {what} exited {proc.returncode}: {tail[0]}")
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    if found:
        return wall, int(found.group(1)) / 1024
    # the largest of all children so far: the bench's runs are the only ones
    return wall, _peak_rss_mib(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


def _copy_with_new_uid(source: Path, target: Path) -> None:
    """A copy whose outputs cannot collide with the original's (they are named by UID)."""
    ds = pydicom.dcmread(source)
    uid = generate_uid()
    ds.SOPInstanceUID = uid
    if "MediaStorageSOPInstanceUID" in getattr(ds, "file_meta", {}):
        ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.save_as(target)


def batch_throughput(
    reporter: Reporter,
    paths: Sequence[Path],
    studies: int = BATCH_STUDIES,
    workers: Sequence[int] = BATCH_WORKERS,
    model: Path | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """:func:`run_batch` over the inputs repeated to at least ``studies``, all formats, in this
    process; then the batch CLI over them in a fresh one with the most ``workers``, for its
    peak RSS (the product's, without the bench's own)."""
    copies = math.ceil(studies / len(paths)) * len(paths)
    options = RenderOptions(formats=FORMATS)
    results = []
    with tempfile.TemporaryDirectory(prefix="anaxreport-bench-") as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        inputs = []
        for index in range(copies):
            source = paths[index % len(paths)]
            target = folder / f"{index:04d}_{source.name}"
            _copy_with_new_uid(source, target)
            inputs.append(target)
        for count in workers:
            start = time.perf_counter()
            outcomes = run_batch(reporter, inputs, options, Path(tmp) / f"out-{count}", count)
            seconds = time.perf_counter() - start
            results.append(
                {
                    "workers": count,
                    "seconds": seconds,
                    "studies_per_s": len(inputs) / seconds,
                    "s_per_study": seconds / len(inputs),
                    "statuses": dict(Counter(o.status for o in outcomes)),
                }
            )
        most = max(workers)
        arguments = [str(folder), "--format", "all", "-o", str(Path(tmp) / "out-cli"),
                     "--workers", str(most)]  # fmt: skip
        command = _cli_command(arguments, model)
        wall, peak = _measured_run(command, threads, "the batch CLI")
    cli = {"command": command, "workers": most, "seconds": wall, "peak_rss_mib": peak,
           "rss_from": _rss_source()}  # fmt: skip
    return {"studies": copies, "formats": list(FORMATS), "runs": results, "cli": cli}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _load_average() -> list[float] | None:
    """Other processes' load: on a small machine it inflates every multi-threaded timing."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _environment() -> dict[str, Any]:
    return {
        "anaxreport": __version__,
        "torch": torch.__version__,
        "onnxruntime": _version_of("onnxruntime"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
    }


def _version_of(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _wants_gpu(device: str) -> bool:
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigurationError(f"bench: device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigurationError(f"bench: --device cuda, but torch {torch.__version__} sees no GPU")
    return device != "cpu" and torch.cuda.is_available()


def _usable(
    reporter: Reporter, inputs: Sequence[Path], options: RenderOptions
) -> tuple[list[_Study], list[dict[str, str]]]:
    """The inputs that report and render; the others with the reason they were left out,
    except files a folder walk found that are no DICOM (a README beside the images)."""
    named = {p.resolve() for p in inputs if not p.is_dir()}
    studies, skipped = [], []
    for path in find_inputs(inputs):
        try:
            studies.append(_prepare(reporter, path, options))
        except NotDicomError:
            if path in named:
                raise
        except AnaxReportError as exc:
            skipped.append({"source": str(path), "reason": str(exc.reason), "message": str(exc)})
    return studies, skipped


def run_benchmark(
    model: str | os.PathLike[str] | None = None,
    inputs: Sequence[str | os.PathLike[str]] | None = None,
    *,
    repeat: int = 20,
    warmup: int = 3,
    threads: int | None = None,
    cold_start_runs: int = COLD_START_RUNS,
    batch: bool = True,
    device: str = "auto",
    runtime: str = "auto",
    max_stage_seconds: float = 5.0,
    batch_studies: int = BATCH_STUDIES,
) -> dict[str, Any]:
    """Measure everything the module docstring lists; a JSON-ready dict.

    ``inputs`` are files or folders (default: the phantom samples); files a folder walk finds
    that do not report (a README, a lateral) are listed under ``skipped``. ``cold_start_runs``
    0 and ``batch`` False leave those parts out (``None`` in the result).
    """
    if repeat < 1 or warmup < 0 or max_stage_seconds < 0 or cold_start_runs < 0:
        raise ConfigurationError("bench: repeat must be ≥ 1; warmup, runs and budget ≥ 0")
    if threads is not None and threads < 1:
        raise ConfigurationError(f"bench: threads must be ≥ 1, got {threads}")
    gpu = _wants_gpu(device)
    began = time.perf_counter()
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run(
            Path(model) if model is not None else None,
            [Path(p) for p in inputs] if inputs else [samples_dir()],
            repeat=repeat,
            warmup=warmup,
            threads=threads,
            cold_start_runs=cold_start_runs,
            batch=batch,
            gpu=gpu,
            runtime=runtime,
            budget=max_stage_seconds,
            batch_studies=batch_studies,
            began=began,
        )
    finally:
        torch.set_num_threads(previous_threads)


def _run(
    model: Path | None,
    inputs: list[Path],
    *,
    repeat: int,
    warmup: int,
    threads: int | None,
    cold_start_runs: int,
    batch: bool,
    gpu: bool,
    runtime: str,
    budget: float,
    batch_studies: int,
    began: float,
) -> dict[str, Any]:
    load_start = _load_average()
    for path in inputs:
        if not path.exists():
            raise ConfigurationError(f"bench: {path} does not exist (give --inputs FILES/DIRS)")
    checkpoint = model or models_dir() / DEFAULT_CHECKPOINT
    reporter = Reporter.from_pretrained(checkpoint, runtime=runtime, threads=threads)
    in_torch = reporter.model if reporter.model.runtime == "torch" else None
    if in_torch is None and gpu:  # the GPU runs the torch model
        in_torch = InferenceModel(reporter.info.config, read_weights(checkpoint)[0])
    options = RenderOptions(formats=FORMATS)
    log.info("bench: preparing the inputs (one untimed run each, FLOPs counted)")
    studies, skipped = _usable(reporter, inputs, options)
    if not studies:
        raise ConfigurationError(f"bench: no input under {', '.join(map(str, inputs))} reports")
    counts = _count_flops(reporter, checkpoint, [s.path for s in studies], in_torch)
    studies = [replace(s, flops=f) for s, f in zip(studies, counts, strict=True)]
    flops_total = statistics.fmean(s.flops["total"] for s in studies)
    ops = sorted({op for s in studies for op in s.flops["per_op"]}, key=_flop_op_order)
    per_op = {op: statistics.fmean(s.flops["per_op"].get(op, 0) for s in studies) for op in ops}

    log.info("bench: fp32 matmul rate")
    with torch.inference_mode():
        before = matmul_rate(CPU_MATMUL_SIZES, torch.device("cpu"), warmup, repeat, budget)
    clock = _ModelClock(reporter.model)
    matmul = matmul_calls(CPU_MATMUL_SIZES, torch.device("cpu"))
    per_study = []
    try:
        with torch.inference_mode():
            for index, study in enumerate(studies):
                log.info("bench: stages on %s (%d/%d)", study.path.name, index + 1, len(studies))
                warm = warmup if index == 0 else 0
                runs = _time_study(reporter, clock, study, options, warm, repeat, budget, matmul)
                per_study.append(runs)
    finally:
        clock.close()
    # a shared machine's speed drifts by 10-20 % within a minute: the floor takes the rate
    # measured between the model's own runs, the one measured before them is kept beside it
    between = {f"mm {n}": [t for r in per_study for t in r[f"mm {n}"]] for n in CPU_MATMUL_SIZES}
    rate = {**_rates(between, CPU_MATMUL_SIZES), "before_model_runs": before}
    stages = _stage_summary(per_study, STAGES)
    model_s = stages["model total"]["median_ms"] / 1e3
    floor = flops_total / (rate["best_gflops"] * 1e9)
    per_stage = {name: statistics.fmean(s.flops["per_stage"][name] for s in studies)
                 for name in STAGE_MODULES}  # fmt: skip
    for name, flops in (*per_stage.items(), ("model total", flops_total)):
        if flops:  # the engine's rpn stage, the proposals' selection, has no FLOP floor
            stages[name]["floor_ms"] = flops / (rate["best_gflops"] * 1e9) * 1e3
            stages[name]["x_floor"] = stages[name]["median_ms"] / stages[name]["floor_ms"]
    pipeline_ms = sum(stages[name]["median_ms"] for name in PIPELINE)
    in_runtime = _in_runtime(per_study, stages)
    batched = None
    if batch:
        log.info("bench: the model in batches of %d", BATCH_SIZE)
        with torch.inference_mode():
            batched = _time_batched(reporter, studies, BATCH_SIZE, repeat, budget, matmul)

    cold = None
    if cold_start_runs:
        log.info("bench: CLI cold start (%d runs)", cold_start_runs)
        cold = cold_start(studies[0].path, model, threads, cold_start_runs)
        cold["minus_model_s"] = cold["median_s"] - model_s
        cold["best_minus_model_s"] = cold["best_s"] - model_s
    throughput = None
    if batch:
        log.info("bench: batch throughput")
        paths = [s.path for s in studies]
        throughput = batch_throughput(reporter, paths, batch_studies, model=model,
                                      threads=threads)  # fmt: skip
    gpu_result: dict[str, Any] = {"skipped": "CUDA is not available or --device cpu"}
    if gpu:
        log.info("bench: model on %s", torch.cuda.get_device_name())
        gpu_result = _gpu_benchmark(reporter, in_torch, studies, flops_total, warmup, repeat,
                                    budget)  # fmt: skip

    info = reporter.info
    return {
        "schema": SCHEMA,
        "environment": {
            **_environment(),
            "load_average_start": load_start,
            "load_average_end": _load_average(),
        },
        "checkpoint": {
            "path": str(checkpoint),
            "name": info.config.name,
            "version": info.config.version,
            "weights_file": info.weights_file,
            "weights_sha256": info.weights_sha256,
            "parameters": info.parameters,
            "backbone": info.config.detector.backbone,
            "image_size": info.config.detector.image_size,
        },
        "settings": {
            "repeat": repeat,
            "warmup": warmup,
            "min_runs": MIN_RUNS,
            "max_stage_seconds": budget,
            "threads": torch.get_num_threads(),
            "gpu": gpu,
            "runtime": reporter.model.runtime,
        },
        "inputs": [
            {
                "source": str(s.path),
                "rows": s.radiograph.rows,
                "columns": s.radiograph.columns,
                "model_input": list(s.model_input),
                "flops": s.flops["total"],
            }
            for s in studies
        ],
        "skipped": skipped,
        "flops": {
            "total": flops_total,
            "per_op": per_op,
            "per_stage": per_stage,
            "counter": "FlopCounterMode",
        },
        "matmul": rate,
        "floor_s": floor,
        "model_s": model_s,
        "ratio": model_s / floor,
        "target_ratio": TARGET_RATIO,
        "ratio_to_rate_before_runs": model_s
        * rate["before_model_runs"]["best_gflops"]
        * 1e9
        / flops_total,
        "stages": stages,
        "onnxruntime": in_runtime,
        "pipeline": {
            "stages": list(PIPELINE),
            "ms": pipeline_ms,
            "percent_of_model": 100 * pipeline_ms / stages["model total"]["median_ms"],
            "target_percent": TARGET_PERCENT,
        },
        "cold_start": cold,
        "batched_model": batched,
        "batch": throughput,
        "gpu": gpu_result,
        "rss": {
            "process_peak_mib": _peak_rss_mib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss),
            "cold_start_peak_mib": cold["peak_rss_mib"] if cold else None,
            "batch_cli_peak_mib": throughput["cli"]["peak_rss_mib"] if throughput else None,
        },
        "elapsed_s": time.perf_counter() - began,
    }


def _flop_op_order(op: str) -> tuple[int, str]:
    return (FLOP_OPS.index(op) if op in FLOP_OPS else len(FLOP_OPS), op)


def _load_note(env: dict[str, Any]) -> str:
    """The 1-minute load before the run; a busy machine's threads wait on each other."""
    load = env.get("load_average_start")
    if not load:
        return ""
    busy = load[0] >= 1.0
    return f"; load {load[0]:.2f} at start" + (" (busy machine: timings inflated)" if busy else "")


def _before_note(rate: dict[str, Any]) -> str:
    before = rate.get("before_model_runs")
    if not before:
        return ""
    return f"; timed between the model's runs, {before['best_gflops']:.1f} before them"


def _in_runtime_line(in_runtime: dict[str, Any] | None, target: float) -> list[str]:
    """Where the engine's time goes; says so when the graphs alone miss the target, which no
    work outside them can then meet on this machine."""
    if in_runtime is None:
        return []
    stages = ", ".join(f"{name} {ms:.1f}" for name, ms in in_runtime["per_stage_ms"].items())
    line = (
        f"in ONNX Runtime's graphs: {in_runtime['ms']:.1f} ms = {in_runtime['x_floor']:.2f}× "
        f"the floor ({stages}); the rest of the pass (NumPy, SciPy, Python): "
        f"{in_runtime['rest_ms']:.1f} ms"
    )
    if in_runtime["x_floor"] > target:
        line += f"; the graphs alone are above the {target:g}× target"
    return [line]


def _before_ratio_note(result: dict[str, Any]) -> str:
    ratio = result.get("ratio_to_rate_before_runs")
    return f" ({ratio:.2f}× at the rate timed before the runs)" if ratio else ""


def _runtime_note(result: dict[str, Any]) -> str:
    if result["settings"]["runtime"] != "onnxruntime":
        return ", model in torch"
    return (
        f", model on onnxruntime {result['environment']['onnxruntime']} and NumPy, no torch "
        "(its backbone stage holds the RPN head's convolutions)"
    )


def _g(value: float) -> str:
    return f"{value / 1e9:.2f}"


def format_table(result: dict[str, Any]) -> str:
    """The headline numbers and the stage table, as ``anaxreport bench`` prints them."""
    env, ckpt, flops, rate = (result[k] for k in ("environment", "checkpoint", "flops", "matmul"))
    stages = result["stages"]
    sizes = ", ".join(f"{i['rows']}x{i['columns']}→{'x'.join(map(str, i['model_input']))}"
                      for i in result["inputs"])  # fmt: skip
    lines = [
        f"anaxreport bench: {ckpt['name']} {ckpt['version']} ({ckpt['backbone']}-FPN, "
        f"{ckpt['image_size']} px, weights sha256 {ckpt['weights_sha256'][:12]}…)",
        f"torch {env['torch']}{_runtime_note(result)}, {result['settings']['threads']} threads, "
        f"CPU {env['cpu']} ({env['cpu_count']} cores)" + _load_note(env),
        f"inputs: {len(result['inputs'])} studies ({sizes})",
        f"FLOPs per forward: {_g(flops['total'])} GFLOP ("
        + ", ".join(f"{op} {_g(n)}" for op, n in flops["per_op"].items())
        + ")",
        f"fp32 matmul rate: {rate['best_gflops']:.1f} GFLOP/s (best median of n = "
        + ", ".join(f"{n}: {g:.1f}" for n, g in rate["gflops_by_size"].items())
        + f"; {rate['threads']} threads{_before_note(rate)})",
        f"compute floor: {result['floor_s'] * 1e3:.1f} ms; model {result['model_s'] * 1e3:.1f} ms"
        f" = {result['ratio']:.2f}× the floor, target ≤ {result['target_ratio']:g}×"
        f"{_before_ratio_note(result)}",
        *_in_runtime_line(result.get("onnxruntime"), result["target_ratio"]),
        "",
        f"{'stage':<18} {'median ms':>10} {'× model':>9} {'floor ms':>9} {'× floor':>8}",
    ]
    for name, stage in stages.items():
        floor = f"{stage['floor_ms']:>9.2f} {stage['x_floor']:>8.2f}" if "floor_ms" in stage else ""
        lines.append(
            f"{name:<18} {stage['median_ms']:>10.2f} {stage['x_model']:>9.4f} {floor}".rstrip()
        )
    batched = result["batched_model"]
    if batched is not None:
        lines += [
            "",
            f"model in batches of {batched['batch_size']} (as the batch CLI runs it): "
            f"{batched['median_ms']:.1f} ms per study = {batched['ratio']:.2f}× the floor "
            f"(fp32 matmul {batched['matmul']['best_gflops']:.1f} GFLOP/s between its runs)",
        ]
    pipeline = result["pipeline"]
    lines += [
        "",
        f"decode+gate+rules+renderers as % of model time: {pipeline['percent_of_model']:.1f}% "
        f"({pipeline['ms']:.1f} ms; target ≤ {pipeline['target_percent']:.0f}%)",
    ]
    rss = result["rss"]
    line = f"peak RSS: {rss['process_peak_mib']:.0f} MiB (bench process)"
    if rss["cold_start_peak_mib"] is not None:
        line += f", {rss['cold_start_peak_mib']:.0f} MiB (CLI cold start)"
    if rss["batch_cli_peak_mib"] is not None:
        workers = result["batch"]["cli"]["workers"]
        line += f", {rss['batch_cli_peak_mib']:.0f} MiB (batch CLI, workers {workers})"
    lines.append(line)
    cold = result["cold_start"]
    if cold is not None:
        lines.append(
            f"CLI cold start: best {cold['best_s']:.2f} s, median {cold['median_s']:.2f} s; "
            f"minus model time {cold['minus_model_s']:.2f} s (target ≤ 3 s)"
        )
    batch = result["batch"]
    if batch is not None:
        lines.append(
            f"batch ({batch['studies']} studies, {len(batch['formats'])} formats): "
            + "; ".join(
                f"workers {r['workers']}: {r['studies_per_s']:.2f} studies/s "
                f"({r['s_per_study']:.2f} s/study)"
                for r in batch["runs"]
            )
        )
    gpu = result["gpu"]
    if "skipped" in gpu:
        lines.append(f"GPU: skipped ({gpu['skipped']})")
    else:
        lines.append(
            f"GPU {gpu['device']}: model {gpu['model_s'] * 1e3:.1f} ms, fp32 matmul "
            f"{gpu['matmul']['best_gflops']:.0f} GFLOP/s, floor {gpu['floor_s'] * 1e3:.2f} ms, "
            f"{gpu['ratio']:.1f}× the floor ("
            + ", ".join(f"{k} {v['median_ms']:.1f} ms" for k, v in gpu["stages"].items())
            + ")"
        )
        tf32 = "on" if gpu["tf32"]["cudnn"] else "off"
        lines.append(
            f"GPU against the CPU: {_apart(gpu['agreement_fp32'])} in fp32 (TF32 off); "
            f"{_apart(gpu['agreement'])} as timed (TF32 convolutions {tf32})"
        )
    if result["skipped"]:  # a folder's README is one; the JSON lists each
        reasons = Counter(s["reason"] for s in result["skipped"])
        lines.append(
            f"inputs left out: {len(result['skipped'])} ("
            + ", ".join(f"{reason} {n}" for reason, n in sorted(reasons.items()))
            + ")"
        )
    lines.append(f"benchmark took {result['elapsed_s']:.0f} s")
    return "\n".join(lines)
