"""The ``anaxreport`` command: thin over the library, ``main(argv) -> int``.

Usage::

    anaxreport STUDY.dcm [STUDY.dcm ...] [--format text|json|fhir|sr|gsps|all] [-o OUTDIR]
               [--model PATH] [--template PATH] [--rules PATH] [--thresholds PATH] [--gate PATH]
               [--fhir-version R4B|R5] [--runtime auto|torch|onnxruntime]
    anaxreport info [--json] [--model PATH]
    anaxreport phantoms --out DIR -n N --seed S
    anaxreport adjacency --data DIR [--split train] [--tau 0.5] [--rule paper] [--out FILE]
    anaxreport train --data DIR --out MODEL.json [options]
    anaxreport evaluate --data DIR [--split test] [--model PATH] [--json FILE]
    anaxreport calibrate --data DIR [--split valid] --model PATH [--rule R] [--write]
    anaxreport bench [--model PATH | --reference] [--inputs FILES/DIRS ...] [--repeat N] [...]
    anaxreport serve [--config node.toml] [--spool DIR] [--ae-title AE] [--port N] [--allow AE]
               [--destination AE@HOST:PORT] [--send sr,gsps] [--stow-url URL] [--fhir-url URL]

Exit status: 0 success; 1 other anaxreport error; 2 usage; 3 unreadable input; 4 input file
missing; 5 not DICOM; 6 no pixel data; 7 unsupported study (gate); 8 weights; 9 configuration;
10 export; 130 interrupted; 141 standard output closed by its reader. With several studies,
each bad one is reported on stderr and the rest go on; the status is that of the first failure.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import os
import shlex
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from . import __version__
from .batch import BATCH_SIZE, FORMATS, SUFFIXES, Outcome, RenderOptions
from .errors import AnaxReportError, ConfigurationError
from .model.config import (  # plain data: no torch at a CLI start
    HEAD_KINDS,
    HEAD_NAMES,
    LOCALISING_KINDS,
    ROI_ALIGNS,
    DetectorConfig,
    ModelConfig,
)

if TYPE_CHECKING:
    from .data.imagenome import ImaGenomeDataset
    from .data.loader import Sample
    from .reporter import Reporter
    from .train import TrainSettings

__all__ = ["main"]

log = logging.getLogger("anaxreport")

COMMANDS = (
    "info",
    "phantoms",
    "adjacency",
    "train",
    "compare",
    "evaluate",
    "calibrate",
    "serve",
    "bench",
)


def _report_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anaxreport",
        description="Anatomy-aware chest X-ray findings with AnaXNet (not for diagnostic use). "
        f"Other commands: {', '.join(COMMANDS)} (see 'anaxreport COMMAND --help').",
    )
    parser.add_argument(
        "studies",
        nargs="+",
        type=Path,
        help="DICOM files of frontal CXRs, or folders (walked; a DICOMDIR is followed)",
    )
    parser.add_argument(
        "--format",
        choices=(*FORMATS, "all"),
        default="text",
        help="text, json or fhir print to stdout without -o; sr, gsps and all need -o",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        help="output folder; files are named <SOP Instance UID> plus "
        + ", ".join(SUFFIXES.values()),
    )
    parser.add_argument(
        "--explain",
        action="store_true",
        help="also draw which regions drove each finding: <SOP Instance UID>.explain.png and "
        ".explain.dcm (a Secondary Capture), into -o or else the current folder",
    )
    parser.add_argument("--model", type=Path, help="checkpoint .json/.safetensors/folder")
    _runtime_argument(parser)
    parser.add_argument("--template", type=Path, help="Jinja2 text template (default: shipped)")
    parser.add_argument("--rules", type=Path, help="rules TOML file (default: shipped)")
    parser.add_argument(
        "--thresholds",
        type=Path,
        help="JSON or TOML file of per-finding thresholds replacing the model's",
    )
    parser.add_argument("--gate", type=Path, help="input gate rules TOML (see templates/gate.toml)")
    parser.add_argument("--fhir-version", choices=("R4B", "R5"), default="R4B")
    parser.add_argument(
        "--summary",
        type=Path,
        help="with -o: the per-input summary, CSV or .json (default OUTDIR/summary.csv)",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="studies in flight at once (threads; with -o)"
    )
    parser.add_argument(
        "--batch-size",
        type=_at_least_one,
        default=BATCH_SIZE,
        help=f"with -o: studies the model takes together (default {BATCH_SIZE})",
    )
    parser.add_argument("--version", action="version", version=f"anaxreport {__version__}")
    return parser


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _command_parser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"anaxreport {command}")
    if command == "info":
        parser.description = "Show the model's architecture, graph, weights hash and provenance."
        parser.add_argument("--json", action="store_true", help="machine-readable output")
        parser.add_argument("--model", type=Path, help="checkpoint (default: the shipped one)")
    elif command == "phantoms":
        parser.description = "Write synthetic chest radiographs in Chest ImaGenome layout."
        parser.add_argument("--out", type=Path, required=True, help="output folder")
        parser.add_argument("-n", type=int, required=True, help="number of studies")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--workers", type=int, default=1, help="processes (same output)")
    elif command == "adjacency":
        parser.description = (
            "Build the region graph from a split's label co-occurrence (paper eqs. 2-3)."
        )
        _data_arguments(parser, default_split="train")
        parser.add_argument("--tau", type=float, default=0.5, help="Jaccard threshold τ")
        parser.add_argument("--rule", choices=("paper", "official"), default="paper")
        parser.add_argument("--out", type=Path, help="write the adjacency as JSON")
    elif command == "calibrate":
        parser.description = (
            "Choose per-finding thresholds on a validation split; --write stores them in the "
            "checkpoint (weights untouched)."
        )
        _data_arguments(parser, default_split="valid")
        parser.add_argument("--model", type=Path, help="checkpoint (default: the shipped one)")
        parser.add_argument(
            "--rule",
            default="youden@image",
            help="youden, sensitivity=S, specificity=S or precision=P, each @image (the "
            "image's highest region score, the default) or @region (image × region pairs)",
        )
        parser.add_argument("--limit", type=int, help="use only the first N images")
        parser.add_argument("--write", action="store_true", help="update --model's thresholds")
        parser.add_argument("--json", type=Path, help="also write the operating points as JSON")
    elif command == "serve":
        _serve_arguments(parser)
    elif command == "bench":
        _bench_arguments(parser)
    elif command == "train":
        _train_arguments(parser)
    elif command == "compare":
        _compare_arguments(parser)
    elif command == "evaluate":
        parser.description = "Score a checkpoint with the paper's Table 3 protocol."
        _data_arguments(parser, default_split="test")
        parser.add_argument("--model", type=Path, help="checkpoint (default: the shipped one)")
        parser.add_argument("--limit", type=int, help="score only the first N images")
        parser.add_argument("--json", type=Path, help="also write the full scores as JSON")
    return parser


def _data_arguments(parser: argparse.ArgumentParser, default_split: str) -> None:
    _data_and_image_root(parser)
    parser.add_argument(
        "--split",
        default=default_split,
        choices=("train", "valid", "test", "all"),
        help="'all' uses every split (for a held-out set made with an unseen seed)",
    )


def _data_and_image_root(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="silver_dataset-style folder")
    parser.add_argument(
        "--image-root",
        type=Path,
        help="where the splits' path column starts: for Chest ImaGenome, the MIMIC-CXR-JPG "
        "folder that holds files/ (default: --data, as phantoms are laid out)",
    )


def _datasets(args: argparse.Namespace) -> list[ImaGenomeDataset]:
    from .data.imagenome import ImaGenomeDataset

    splits = ("train", "valid", "test") if args.split == "all" else (args.split,)
    return [ImaGenomeDataset(args.data, split, image_root=args.image_root) for split in splits]


def _samples(args: argparse.Namespace, image_size: int) -> list[Sample]:
    from .data.loader import load_split

    return [
        sample
        for dataset in _datasets(args)
        for sample in load_split(dataset, image_size, args.limit, sys.stderr.isatty())
    ]


def _runtime_argument(parser: argparse.ArgumentParser) -> None:
    from .model.config import RUNTIMES

    parser.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="auto",
        help="the inference engine: onnxruntime (the CPU's; never imports torch), torch (for "
        "a GPU), or auto (the former where installed)",
    )


def _bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Time every stage of a study (decode, gate, model and its parts, rules, each renderer) "
        "against the model's FLOP floor on this machine; also CLI cold start, peak RSS and "
        "batch throughput."
    )
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--model", type=Path, help="checkpoint (default: the shipped one)")
    model.add_argument(
        "--reference",
        action="store_true",
        help="a random-weight model of torchvision's default size (ResNet-50-FPN, 512 px, "
        "1000 proposals): the pipeline at the scale of the paper's model",
    )
    parser.add_argument(
        "--inputs", nargs="+", type=Path, help="DICOM files or folders (default: samples/)"
    )
    parser.add_argument("--repeat", type=int, default=20, help="timed calls per stage and study")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per stage first")
    parser.add_argument(
        "--max-stage-seconds",
        type=float,
        default=5.0,
        help="stop timing a study after this long (never before 3 rounds of every stage)",
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    _runtime_argument(parser)
    parser.add_argument("--json", type=Path, help="also write every number as JSON")
    parser.add_argument("--no-cold-start", action="store_true", help="skip the CLI cold start")
    parser.add_argument(
        "--no-batch", action="store_true", help="skip the batched model and the batch throughput"
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto: also time the model on CUDA when available",
    )


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Run as a DICOM node: receive CR/DX/SC images (C-STORE), report them, send the SR and "
        "GSPS to PACS destinations (C-STORE or STOW-RS) and the FHIR Bundle to a FHIR server. "
        "Flags override the --config file (see templates/node.toml)."
    )
    parser.add_argument("--config", type=Path, help="node configuration TOML file")
    parser.add_argument("--spool", type=Path, help="spool folder (the node's only state)")
    parser.add_argument("--ae-title", help="own AE title (default ANAXREPORT)")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="DICOM port (default 11112; 0: any free one)")
    parser.add_argument(
        "--allow", action="append", metavar="AE", help="allowed calling AE title (repeatable)"
    )
    parser.add_argument(
        "--destination",
        action="append",
        metavar="AE@HOST:PORT",
        help="PACS to C-STORE results to (repeatable)",
    )
    parser.add_argument(
        "--send", default="sr,gsps", help="what flag destinations get: sr, gsps or sr,gsps"
    )
    parser.add_argument("--stow-url", help="DICOMweb base URL to STOW-RS results to")
    parser.add_argument("--fhir-url", help="FHIR base URL to POST the report Bundle to")
    parser.add_argument("--fhir-version", choices=("R4B", "R5"), default="R4B")
    parser.add_argument("--metrics-port", type=int, help="health/metrics HTTP port (0: off)")
    parser.add_argument("--model", type=Path, help="checkpoint (default: the shipped one)")
    parser.add_argument("--rules", type=Path, help="rules TOML file (default: shipped)")
    parser.add_argument("--thresholds", type=Path, help="per-finding thresholds file")
    parser.add_argument("--gate", type=Path, help="input gate rules TOML")


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Train detector, region features and AnaXNet head (or a baseline: --head); write a "
        "checkpoint."
    )
    _data_and_image_root(parser)
    parser.add_argument("--out", type=Path, required=True, help="checkpoint .json to write")
    parser.add_argument("--work-dir", type=Path, help="stage files and resume state")
    parser.add_argument("--name", help="model name in every output (default: the head's)")
    parser.add_argument(
        "--head",
        choices=HEAD_KINDS,
        default="anaxnet",
        help="anaxnet (GCN over the regions + attention); the paper's baselines on the same "
        "region features: fc (Faster R-CNN + FC), chexgcn (GCN over the findings, ML-GCN); or "
        "globalview (a DenseNet169 over the whole image, image-level: it cannot report)",
    )
    _training_arguments(parser)


def _compare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "The paper's Table 3 on your data: train Faster R-CNN + FC, GlobalView, CheXGCN and "
        "AnaXNet by the training command's code (one detector and its region features for "
        "the three that use them), score each on the test split, print them beside the paper."
    )
    _data_and_image_root(parser)
    parser.add_argument(
        "--out-dir", type=Path, required=True, help="folder for the four checkpoints"
    )
    parser.add_argument(
        "--work-dir", type=Path, help="stage files and resume state (default: OUT_DIR/work)"
    )
    parser.add_argument("--json", type=Path, help="also write the table and scores as JSON")
    _training_arguments(parser)


def _training_arguments(parser: argparse.ArgumentParser) -> None:
    """What ``train`` and ``compare`` share: the data's and the model's training settings."""
    parser.add_argument("--model-version", default="0")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--fpn-channels", type=int, default=256)
    detectron2 = parser.add_argument_group(
        "detector conventions",
        "torchvision's by default; detectron2's defaults, for --init-detector with a "
        "detectron2 model: --stride-in-1x1 --anchor-base 32 --unrounded-anchors "
        "--aspect-ratios 0.5 1 2 --roi-align detectron2 --pixel-mean 0.406 0.456 0.485 "
        "--pixel-std 0.003922 0.003922 0.003922",
    )
    detectron2.add_argument(
        "--stride-in-1x1",
        action="store_true",
        help="bottlenecks stride in their first 1x1 convolution (detectron2's "
        "RESNETS.STRIDE_IN_1X1, its default with MSRA weights)",
    )
    detectron2.add_argument(
        "--anchor-base", type=int, default=0, help="P2 anchor side in pixels (0: image size / 16)"
    )
    detectron2.add_argument(
        "--unrounded-anchors", action="store_true", help="anchors not rounded to whole pixels"
    )
    detectron2.add_argument(
        "--roi-align",
        choices=ROI_ALIGNS,
        default="torchvision",
        help="region pooling: torchvision's MultiScaleRoIAlign or detectron2's ROIAlignV2",
    )
    detectron2.add_argument(
        "--pixel-mean",
        type=float,
        nargs="+",
        default=[DetectorConfig.pixel_mean],
        help="input mean of the [0, 1] grey image: one value, or one per channel (detectron2's "
        "BGR 0-255 means over 255)",
    )
    detectron2.add_argument(
        "--pixel-std",
        type=float,
        nargs="+",
        default=[DetectorConfig.pixel_std],
        help="input deviation: one value, or one per channel (detectron2's over 255)",
    )
    detectron2.add_argument(
        "--aspect-ratios",
        type=float,
        nargs="+",
        default=DetectorConfig.aspect_ratios,
        help="anchor aspect ratios, height / width (default: 0.5 1 2 4)",
    )
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--rpn-proposals", type=int, help="RPN proposals kept (train and test)")
    parser.add_argument("--roi-samples", type=int, default=512, help="RoIs sampled per image")
    parser.add_argument("--detector-epochs", type=int, default=12)
    parser.add_argument(
        "--init-detector",
        type=Path,
        help="start the detector from these weights: a detectron2 model_final.pth/.pkl (read "
        "without running it) or an anaxreport checkpoint .json; with --detector-epochs 0 the "
        "heads train on its features as they are",
    )
    parser.add_argument("--detector-lr", type=float, default=1e-3, help="AdamW one-cycle peak")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=4,
        help="detector images per step and process; under torchrun the global batch is this "
        "times the number of processes (the head's batch of 16 is per process too)",
    )
    parser.add_argument(
        "--finding-loss-weight",
        type=float,
        default=0.0,
        help="weight of an auxiliary finding loss on the detector's region features "
        "(0 = the paper's anatomy-only detector; helps detectors trained from scratch)",
    )
    parser.add_argument("--head-epochs", type=int, default=25)
    parser.add_argument("--head-lr", type=float, default=1e-4)
    parser.add_argument("--tau", type=float, default=0.5)
    parser.add_argument("--adjacency-rule", choices=("paper", "official"), default="paper")
    parser.add_argument(
        "--label-tau", type=float, default=0.4, help="chexgcn: co-occurrence threshold τ"
    )
    parser.add_argument("--label-reweight", type=float, default=0.2, help="chexgcn: re-weighting p")
    parser.add_argument("--limit", type=int, help="use only the first N images of each split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--calibration",
        default="youden@image",
        help="threshold rule on the validation split (see 'anaxreport calibrate --help')",
    )
    parser.add_argument("--training-data", default="", help="describes the data for provenance")
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto: CUDA when available; under torchrun each process takes GPU LOCAL_RANK",
    )
    parser.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        help="mixed precision training steps (bfloat16, else float16 with loss scaling); "
        "default on with CUDA, refused on the CPU",
    )


def entry() -> NoReturn:
    """The ``anaxreport`` command: :func:`main`, then, for a reporting run, an immediate exit.

    Tearing down an interpreter that has loaded torch (module finalisers, its libraries'
    destructors) takes about a second and does nothing for a finished reporting run: every
    output is written and closed, no thread or child process is left. The subcommands
    (training with its workers, the node) exit the ordinary way.
    """
    code = main()
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        code = _reader_gone()
    if sys.argv[1:2] and sys.argv[1] in COMMANDS:
        sys.exit(code)
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # our own progress at INFO; libraries (highdicom logs every module it copies) only warn
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    # torch-geometric calls the deprecated torch.jit.script at import; users cannot act on it
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
    logging.getLogger("anaxreport").setLevel(logging.INFO)
    try:
        if argv and argv[0] in COMMANDS:
            args = _command_parser(argv[0]).parse_args(argv[1:])
            return _COMMANDS[argv[0]](args, argv)
        return _run_reports(_report_parser().parse_args(argv))
    except AnaxReportError as exc:
        print(f"anaxreport: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _reader_gone()


def _reader_gone() -> int:
    """Standard output's reader has left (``anaxreport study.dcm | head``): nothing more goes
    to it, and no traceback; the status is a shell's for SIGPIPE, 128 + 13."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 141


def _run_reports(args: argparse.Namespace) -> int:
    from .batch import RenderOptions, find_inputs, render, write_explanations
    from .reporter import Reporter

    options = RenderOptions(
        formats=FORMATS if args.format == "all" else (args.format,),
        template=args.template,
        fhir_version=args.fhir_version,
        explain=args.explain,
    )
    if args.output is None and set(options.formats) & {"sr", "gsps"}:
        raise ConfigurationError(f"--format {args.format} writes DICOM files: give -o FOLDER")
    if args.explain:
        head = _checkpoint_config(args.model).head
        if head.kind not in LOCALISING_KINDS:
            return _explain_global_view(args)
        if head.kind == "anaxnet" and head.classifier != "concat":
            raise ConfigurationError(
                f"--explain needs the paper's classifier ([R; Q] W2); {args.model} has the "
                f"official code's {head.classifier!r}, which does not split by region"
            )
    reporter = Reporter.from_pretrained(
        args.model, rules=args.rules, thresholds=args.thresholds, gate=args.gate,
        runtime=args.runtime,
    )  # fmt: skip
    inputs = find_inputs(args.studies)
    if args.output is not None:
        return _run_batch(reporter, inputs, options, args)
    if isinstance(sys.stdout, io.TextIOWrapper):  # JSON is UTF-8, whatever the locale says
        sys.stdout.reconfigure(encoding="utf-8")
    status = 0
    for study in inputs:  # to stdout, one after the other
        try:
            report = reporter.explain(study) if options.explain else reporter.run(study)
            if options.explain:  # beside the report: into the current folder
                name = report.study.sop_instance_uid or study.stem
                from .render.explain import report_overlay  # highdicom, PIL: only here

                for written in write_explanations(report_overlay(report), Path(), name):
                    log.info("wrote %s", written)
            output = render(report, options.formats[0], options)
            print(output, end="" if options.formats[0] == "text" else "\n")
        except AnaxReportError as exc:
            print(f"anaxreport: {exc}", file=sys.stderr)
            status = status or exc.exit_code
    return status


def _checkpoint_config(model: Path | None) -> ModelConfig:
    """A checkpoint's config, the shipped one's by default; no weights are read."""
    from .model.checkpoint import read_checkpoint_info
    from .resources import DEFAULT_CHECKPOINT, models_dir

    return read_checkpoint_info(model or models_dir() / DEFAULT_CHECKPOINT).config


def _explain_global_view(args: argparse.Namespace) -> int:
    """``--explain`` with an image-level model (GlobalView): no report, which needs regions;
    each study's class activation maps, as overlays, into -o or the current folder."""
    from .batch import find_inputs, write_explanations
    from .gate import GateRules, load_gate_rules
    from .gate import check as check_gate
    from .ingest import read_radiograph
    from .model.globalview import class_activation_maps, load_global_view
    from .model.preprocess import to_model_input
    from .render.explain import global_view_overlay
    from .reporter import checkpoint_provenance

    model, info = load_global_view(args.model)
    provenance = checkpoint_provenance(info)
    gate = load_gate_rules(args.gate) if args.gate else GateRules()
    folder = args.output or Path()
    folder.mkdir(parents=True, exist_ok=True)
    status = 0
    for study in find_inputs(args.studies):
        try:
            radiograph = read_radiograph(study, max_side=gate.max_side)
            check_gate(radiograph, gate)
            image, _ = to_model_input(radiograph.pixels, info.config.detector.image_size)
            maps, probabilities = class_activation_maps(model, image)
            overlay = global_view_overlay(
                radiograph, maps, probabilities, info.config.thresholds, provenance
            )
            name = radiograph.identity.sop_instance_uid or study.stem
            for written in write_explanations(overlay, folder, name):
                log.info("wrote %s", folder / written)
        except AnaxReportError as exc:
            print(f"anaxreport: {exc}", file=sys.stderr)
            status = status or exc.exit_code
    return status


def _run_batch(
    reporter: Reporter, inputs: list[Path], options: RenderOptions, args: argparse.Namespace
) -> int:
    """Everything into the output folder plus a summary; the exit status is that of the first
    input refused or failed (0 when none was; skipped non-DICOM files do not count)."""
    from tqdm import tqdm

    from .batch import run_batch, write_summary

    def progress(outcomes: Iterator[Outcome], total: int) -> Iterator[Outcome]:
        return iter(tqdm(outcomes, total=total, unit="study", disable=not sys.stderr.isatty()))

    named = [p.resolve() for p in args.studies if not p.is_dir()]
    outcomes = run_batch(
        reporter, inputs, options, args.output, args.workers, progress, named, args.batch_size
    )
    write_summary(outcomes, args.summary or args.output / "summary.csv")
    status = 0
    for outcome in outcomes:
        if outcome.status in ("refused", "failed"):
            print(f"anaxreport: {outcome.message}", file=sys.stderr)
            status = status or outcome.exit_code
    return status


def _info(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .model.checkpoint import read_checkpoint_info
    from .resources import DEFAULT_CHECKPOINT, models_dir

    info = read_checkpoint_info(args.model or models_dir() / DEFAULT_CHECKPOINT)
    config = info.config
    summary = {
        "name": config.name,
        "version": config.version,
        "architecture": {
            "detector": {
                "engine": "torchvision FasterRCNN",
                **dataclasses.asdict(config.detector),
                "anchor_sizes": config.detector.anchor_sizes,
            },
            "region_feature_dim": config.head.feature_dim,
            "gcn_sizes": list(config.head.gcn_sizes),
            "head": dataclasses.asdict(config.head),
        },
        "tau": config.graph.tau,
        "adjacency_rule": config.graph.rule,
        "adjacency": [list(row) for row in config.adjacency],
        "label_adjacency": [list(row) for row in config.label_adjacency],
        "regions": list(config.regions),
        "findings": list(config.findings),
        "thresholds": dict(zip(config.findings, config.thresholds, strict=True)),
        "parameters": info.parameters,
        "weights": {
            "file": info.weights_file,
            "sha256": info.weights_sha256,
            "dtype": info.weights_dtype,
        },
        "provenance": info.provenance,
        "metrics": info.metrics,
    }
    if args.json:
        print(json.dumps(summary, indent=2, default=list))
        return 0
    print(f"{config.name} {config.version} — {info.parameters:,} parameters")
    for line in _architecture_lines(config):
        print(line)
    print(f"weights: {info.weights_file} sha256 {info.weights_sha256}")
    print(f"trained on: {info.provenance.get('training_data', 'unknown')}")
    print("adjacency (rows/columns in region order):")
    for name, row in zip(config.regions, config.adjacency, strict=True):
        print(f"  {name:26} {''.join('#' if v else '.' for v in row)}")
    print(
        "findings and thresholds: "
        + ", ".join(f"{f} {t:.2f}" for f, t in zip(config.findings, config.thresholds, strict=True))
    )
    test = info.metrics.get("test", {})
    if test:
        print(
            f"held-out test: mean AUC {test.get('mean_auc')}, mean IoU {test.get('mean_iou')} "
            f"({test.get('images')} images)"
        )
    return 0


def _architecture_lines(config: ModelConfig) -> list[str]:
    """What ``info`` says of the model's parts, by the kind of its head."""
    head, detector = config.head, config.detector
    if head.kind == "globalview":
        return [
            f"GlobalView baseline: DenseNet169 over the whole image, input {detector.image_size} "
            "px; image-level, it does not localise (no report: evaluate and compare read it)"
        ]
    heads = {
        "anaxnet": f"head: GCN {list(head.gcn_sizes)}, {head.activation}, classifier "
        f"{head.classifier}",
        "fc": "head: Faster R-CNN + FC baseline, one linear layer shared by the regions",
        "chexgcn": f"head: CheXGCN baseline, GCN {list(head.label_gcn_sizes)} over the "
        f"findings' graph (tau {head.label_tau}, p {head.label_reweight})",
    }
    return [
        f"detector: torchvision Faster R-CNN, {detector.backbone}-FPN "
        f"({detector.fpn_channels} ch), input {detector.image_size} px",
        f"{heads[head.kind]}; region graph: {config.graph.rule} rule, tau {config.graph.tau}",
    ]


def _phantoms(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .data.phantom import generate_phantoms

    summary = generate_phantoms(
        args.out, args.n, args.seed, progress=sys.stderr.isatty(), workers=args.workers
    )
    log.info("wrote %s", summary)
    return 0


def _train_settings(
    args: argparse.Namespace, argv: Sequence[str], out: Path, work_dir: Path, kind: str
) -> TrainSettings:
    """The training run the arguments of ``train`` or ``compare`` describe."""
    from dataclasses import replace

    from .calibrate import CalibrationRule
    from .distributed import is_main_process
    from .model.config import GraphConfig, HeadConfig
    from .train import TrainSettings

    proposals = {}
    if args.rpn_proposals:  # keep n proposals after NMS from the 2n best before it
        n = args.rpn_proposals
        proposals = {
            "rpn_pre_nms_top_n_train": 2 * n,
            "rpn_post_nms_top_n_train": n,
            "rpn_pre_nms_top_n_test": 2 * n,
            "rpn_post_nms_top_n_test": n,
        }
    model = ModelConfig(
        name=getattr(args, "name", None) or HEAD_NAMES[kind],
        version=args.model_version,
        head=HeadConfig(kind=kind, label_tau=args.label_tau, label_reweight=args.label_reweight),
        detector=replace(
            DetectorConfig(),
            backbone=args.backbone,
            fpn_channels=args.fpn_channels,
            image_size=args.image_size,
            box_batch_size_per_image=args.roi_samples,
            stride_in_1x1=args.stride_in_1x1,
            anchor_base=args.anchor_base,
            round_anchors=not args.unrounded_anchors,
            aspect_ratios=tuple(args.aspect_ratios),
            roi_align=args.roi_align,
            pixel_mean=_one_or_three(args.pixel_mean),
            pixel_std=_one_or_three(args.pixel_std),
            **proposals,
        ),
        graph=GraphConfig(tau=args.tau, rule=args.adjacency_rule),
    )
    settings = TrainSettings(
        data=args.data,
        image_root=args.image_root,
        out=out,
        work_dir=work_dir,
        model=model,
        detector_epochs=args.detector_epochs,
        detector_lr=args.detector_lr,
        batch_size=args.batch_size,
        finding_loss_weight=args.finding_loss_weight,
        head_epochs=args.head_epochs,
        head_lr=args.head_lr,
        seed=args.seed,
        limit=args.limit,
        training_data=args.training_data or f"images under {args.data}",
        command="anaxreport " + shlex.join(argv),
        progress=sys.stderr.isatty(),
        device=args.device,
        amp=args.amp,
        calibration=CalibrationRule.parse(args.calibration),
        init_detector=args.init_detector,
    )
    if not is_main_process():  # under torchrun, rank 0 speaks for all
        log.setLevel(logging.WARNING)
    return settings


def _one_or_three(values: list[float]) -> float | tuple[float, ...]:
    """One value for all channels, or a value per channel (the config checks there are 3)."""
    return values[0] if len(values) == 1 else tuple(values)


def _train(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .distributed import is_main_process
    from .train import train

    work_dir = args.work_dir or args.out.parent / f"{args.out.stem}.work"
    settings = _train_settings(args, argv, args.out, work_dir, args.head)
    info, evaluation = train(settings)
    if is_main_process():
        print(evaluation.table())
        log.info("wrote %s (sha256 %s)", settings.out, info.weights_sha256)
    return 0


def _compare(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .compare import compare
    from .distributed import is_main_process

    work_dir = args.work_dir or args.out_dir / "work"
    settings = _train_settings(args, argv, args.out_dir / "anaxnet.json", work_dir, "anaxnet")
    comparison = compare(settings, args.out_dir)
    if is_main_process():
        print(comparison.table())
        if args.json:
            args.json.write_text(json.dumps(comparison.to_dict(), indent=2) + "\n")
    return 0


def _evaluate(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .evaluate import evaluate_model
    from .reporter import Reporter

    config = _checkpoint_config(args.model)
    if config.head.kind not in LOCALISING_KINDS:  # GlobalView: image-level, no reporter
        from .model.globalview import evaluate_global_view, load_global_view

        model, _ = load_global_view(args.model)
        evaluation = evaluate_global_view(model, _samples(args, config.detector.image_size))
    else:
        reporter = Reporter.from_pretrained(args.model)
        evaluation = evaluate_model(reporter.model, _samples(args, config.detector.image_size))
    print(evaluation.table())
    if args.json:
        args.json.write_text(json.dumps(evaluation.to_dict(), indent=2) + "\n")
    return 0


def _adjacency(args: argparse.Namespace, argv: Sequence[str]) -> int:
    import numpy as np

    from .model.graph import build_adjacency
    from .vocab import REGION_NAMES

    graphs = [dataset[i][1] for dataset in _datasets(args) for i in range(len(dataset))]
    if not graphs:
        raise ConfigurationError(f"{args.data}: the {args.split} split has no images")
    labels = np.stack([graph.labels_array() for graph in graphs])
    adjacency = build_adjacency(labels, tau=args.tau, rule=args.rule)
    for name, row in zip(REGION_NAMES, adjacency, strict=True):
        print(f"{name:26} {''.join('#' if v else '.' for v in row)}")
    pairs = [
        f"{REGION_NAMES[i]} - {REGION_NAMES[j]}"
        for i in range(len(REGION_NAMES))
        for j in range(i + 1, len(REGION_NAMES))
        if adjacency[i, j]
    ]
    print(f"{len(pairs)} edges (tau {args.tau}, {args.rule} rule, {len(graphs)} images)")
    if args.out:
        document = {
            "tau": args.tau,
            "rule": args.rule,
            "split": args.split,
            "images": len(graphs),
            "regions": list(REGION_NAMES),
            "adjacency": adjacency.tolist(),
        }
        args.out.write_text(json.dumps(document, indent=2) + "\n")
    return 0


def _calibrate(args: argparse.Namespace, argv: Sequence[str]) -> int:
    import numpy as np

    from .calibrate import (
        CalibrationRule,
        calibration_record,
        choose_thresholds,
        operating_points,
        write_thresholds,
    )
    from .evaluate import predict_samples
    from .reporter import Reporter

    rule = CalibrationRule.parse(args.rule)
    if args.write and args.model is None:
        raise ConfigurationError("--write changes a checkpoint: name it with --model")
    reporter = Reporter.from_pretrained(args.model)
    samples = _samples(args, reporter.info.config.detector.image_size)
    probabilities, _ = predict_samples(reporter.model, samples)
    labels = np.stack([s.labels for s in samples])
    before = reporter.info.config.thresholds
    thresholds = choose_thresholds(labels, probabilities, rule, fallback=before)
    points = operating_points(labels, probabilities, thresholds, rule.level)
    print(f"rule {rule} on the {args.split} split ({len(samples)} images)")
    print(f"{'finding':30} {'was':>7} {'now':>7} {'sens':>6} {'spec':>6} {'prec':>6} {'pos':>5}")
    for old, point in zip(before, points, strict=True):
        print(
            f"{point.finding:30} {old:7.4f} {point.threshold:7.4f} {point.sensitivity:6.3f} "
            f"{point.specificity:6.3f} {point.precision:6.3f} {point.positives:5d}"
        )
    record = calibration_record(
        rule,
        points,
        split=args.split,
        data=str(args.data),
        images=len(samples),
        command="anaxreport " + shlex.join(argv),
    )
    if args.json:
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    if args.write:
        info = write_thresholds(args.model, thresholds, record)
        log.info("wrote thresholds into %s (weights sha256 %s)", args.model, info.weights_sha256)
    return 0


def _serve(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .node import (
        DicomDestination,
        FhirDestination,
        Node,
        StowDestination,
        load_node_config,
    )
    from .node.telemetry import JsonFormatter
    from .reporter import Reporter

    for handler in logging.getLogger().handlers:  # one JSON object per log line
        handler.setFormatter(JsonFormatter())
    send = tuple(s.strip() for s in args.send.split(",") if s.strip())
    destinations: list[object] = [DicomDestination.parse(d, send) for d in args.destination or ()]
    if args.stow_url:
        destinations.append(StowDestination(name="stow-rs", url=args.stow_url, outputs=send))
    if args.fhir_url:
        destinations.append(FhirDestination(name="fhir", url=args.fhir_url,
                                            version=args.fhir_version))  # fmt: skip
    overrides = {
        "spool": args.spool, "ae_title": args.ae_title, "host": args.host, "port": args.port,
        "allowed_calling_aes": tuple(args.allow) if args.allow else None,
        "destinations": tuple(destinations), "model": args.model, "rules": args.rules,
        "thresholds": args.thresholds, "gate": args.gate,
    }  # fmt: skip
    config = load_node_config(args.config, **overrides)
    if args.metrics_port is not None:
        config = dataclasses.replace(
            config, metrics=dataclasses.replace(config.metrics, port=args.metrics_port)
        )
    if not config.allowed_calling_aes:
        log.warning("no allowed calling AE titles configured: any calling AE may store")
    reporter = Reporter.from_pretrained(
        config.model, rules=config.rules, thresholds=config.thresholds, gate=config.gate,
        runtime=config.runtime,
    )  # fmt: skip
    Node(config, reporter).serve_forever()
    return 0


def _bench(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .bench import reference_checkpoint

    if not args.reference:
        return _run_bench(args, args.model)
    with tempfile.TemporaryDirectory(prefix="anaxreport-reference-") as folder:
        return _run_bench(args, reference_checkpoint(Path(folder)))


def _run_bench(args: argparse.Namespace, model: Path | None) -> int:
    from .bench import format_table, run_benchmark

    result = run_benchmark(
        model,
        args.inputs,
        repeat=args.repeat,
        warmup=args.warmup,
        threads=args.threads,
        cold_start_runs=0 if args.no_cold_start else 3,
        batch=not args.no_batch,
        device=args.device,
        runtime=args.runtime,
        max_stage_seconds=args.max_stage_seconds,
    )
    print(format_table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


_COMMANDS = {
    "bench": _bench,
    "serve": _serve,
    "info": _info,
    "phantoms": _phantoms,
    "adjacency": _adjacency,
    "train": _train,
    "compare": _compare,
    "evaluate": _evaluate,
    "calibrate": _calibrate,
}
