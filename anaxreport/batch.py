"""Batch runs: many studies in, one output folder and one summary out (issue 5, item 3).

Inputs are files and folders; folders are walked, and a DICOMDIR is read for the images it
lists (itself it is no image). Studies of one padded size share model passes (``batch_size`` a
pass); otherwise each is read, gated, reported and rendered on its own: a bad one becomes a line
in the summary with its reason and never stops the others. Outputs are written under a temporary
name and renamed, so a crash never leaves a half-written file that looks finished. With
``workers`` > 1, chunks run in threads: decoding and rendering overlap the model, which runs
one pass at a time (its runtime releases the GIL while it computes, on every core).
"""

from __future__ import annotations

import csv
import itertools
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.fileset import FileSet

from .errors import AnaxReportError, ExportError, UnsupportedStudyError
from .ingest import StudyIdentity, header_int
from .render import pretty
from .render.encode import encode
from .report import ImageInfo, Refusal

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from .ingest import Radiograph
    from .render.explain import Overlay
    from .report import Report
    from .reporter import Reporter

__all__ = [
    "FORMATS",
    "SUFFIXES",
    "Outcome",
    "RenderOptions",
    "find_inputs",
    "render",
    "run_batch",
    "write_output",
    "write_summary",
]

FORMATS = ("text", "json", "fhir", "sr", "gsps")
#: File name suffix of each format in an output folder (files are named by SOP Instance UID).
SUFFIXES = {
    "text": ".txt",
    "json": ".json",
    "fhir": ".fhir.json",
    "sr": ".sr.dcm",
    "gsps": ".gsps.dcm",
}
#: The explanation overlays' files (``--explain``): a PNG and a DICOM Secondary Capture.
EXPLAIN_SUFFIXES = {"png": ".explain.png", "sc": ".explain.dcm"}
#: Studies of one padded size that a batch puts through the model together (:func:`run_batch`):
#: 4 saved a tenth of the model's time per study on two cores; 8 saved 2 % more, for 140 MB
#: more peak memory.
BATCH_SIZE = 4
#: The summary's columns, in order.
SUMMARY_FIELDS = ("source", "status", "reason", "exit_code", "sop_instance_uid", "message",
                  "outputs")  # fmt: skip


@dataclass(frozen=True)
class RenderOptions:
    """Which formats to make and how."""

    formats: tuple[str, ...] = ("text",)
    template: Path | None = None
    fhir_version: str = "R4B"
    #: also the explanation overlays (:mod:`.render.explain`)
    explain: bool = False

    def __post_init__(self) -> None:
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown or not self.formats:
            raise ValueError(f"formats must be some of {FORMATS}, got {self.formats}")


@dataclass(frozen=True)
class Outcome:
    """What became of one input: ``reported``, ``refused`` (by the gate), ``failed``, or
    ``skipped`` (not DICOM, found by walking a folder)."""

    source: str
    status: str
    reason: str = ""
    exit_code: int = 0
    sop_instance_uid: str = ""
    message: str = ""
    outputs: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {**vars(self), "outputs": list(self.outputs)}


def render(report: Report, fmt: str, options: RenderOptions) -> str | bytes:
    """One format of a report: text for text/json/fhir, the DICOM file's bytes for sr/gsps."""
    if fmt == "text":
        return report.to_text(options.template)
    if fmt == "json":
        return report.to_json()
    if fmt == "fhir":
        return pretty.dumps(report.to_fhir(options.fhir_version))
    return report.to_sr_file() if fmt == "sr" else report.to_gsps_file()


def explanations(overlay: Overlay) -> dict[str, bytes | Dataset]:
    """An explanation's files by suffix: the PNG and the Secondary Capture of one picture,
    drawn once (:func:`~anaxreport.render.explain.report_overlay` makes a report's overlay)."""
    from .render.explain import overlay_image, render_overlay_png, render_overlay_sc

    picture = overlay_image(overlay)
    return {
        EXPLAIN_SUFFIXES["png"]: render_overlay_png(overlay, picture),
        EXPLAIN_SUFFIXES["sc"]: render_overlay_sc(overlay, picture),
    }


def write_explanations(overlay: Overlay, folder: Path, name: str) -> list[str]:
    """Write :func:`explanations` as ``folder/<name><suffix>``; returns the file names."""
    written = []
    for suffix, output in explanations(overlay).items():
        write_output(folder / f"{name}{suffix}", output)
        written.append(f"{name}{suffix}")
    return written


def write_output(path: Path, output: str | bytes | Dataset) -> None:
    """Write atomically: a temporary file in the same folder, then a rename. Text is UTF-8,
    whatever the locale (JSON must be; the report names the patient)."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        if isinstance(output, str):
            text = output if output.endswith("\n") else output + "\n"
            partial.write_text(text, encoding="utf-8")
        else:
            partial.write_bytes(output if isinstance(output, bytes) else encode(output))
        os.replace(partial, path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise ExportError(f"{path}: cannot write: {exc.strerror}") from exc


def find_inputs(paths: Iterable[Path]) -> list[Path]:
    """Files given, and every file under folders given, in a stable order without duplicates;
    a DICOMDIR is replaced by the files it references. Hidden files are skipped."""
    found: dict[Path, None] = {}
    for path in paths:
        if path.is_dir():
            walked = sorted(p for p in path.rglob("*") if p.is_file() and not _hidden(p, path))
        else:
            walked = [path]  # a missing file is reported by ingest, not dropped here
        for file in walked:
            for item in _expand_dicomdir(file) if file.name.upper() == "DICOMDIR" else [file]:
                found.setdefault(item.resolve() if item.exists() else item, None)
    return list(found)


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _expand_dicomdir(path: Path) -> list[Path]:
    """The image files a DICOMDIR references (none when it cannot be read: then it is itself
    passed on, and ingest reports why)."""
    try:
        fileset = FileSet(pydicom.dcmread(path))
    except (InvalidDicomError, OSError, ValueError, AttributeError, KeyError):
        return [path]
    return [Path(instance.path) for instance in fileset]


def run_batch(
    reporter: Reporter,
    inputs: Sequence[Path],
    options: RenderOptions,
    out_dir: Path,
    workers: int = 1,
    progress: Callable[[Iterator[Outcome], int], Iterator[Outcome]] | None = None,
    named: Iterable[Path] | None = None,
    batch_size: int = BATCH_SIZE,
) -> list[Outcome]:
    """Report every input into ``out_dir``; returns one :class:`Outcome` per input, in order.

    Studies go through the model ``batch_size`` at a time
    (:meth:`~anaxreport.reporter.Reporter.predict_many`: the same findings, less model time
    each). Only studies whose model inputs pad to one size can share a pass, so the inputs
    are taken in order of that size (read from their headers) and put back in order at the
    end. A file that is not DICOM is ``failed`` when it was ``named`` (all inputs, by default)
    and ``skipped`` when a folder walk found it (a README beside the images is no error).
    """
    from .model.plan import batches_by_size

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    out_dir.mkdir(parents=True, exist_ok=True)
    named = set(inputs if named is None else named)
    sizes = [_model_input_size(reporter, path) for path in inputs]
    chunks = batches_by_size(sizes, batch_size)

    def chunk(members: list[int]) -> list[tuple[int, Outcome]]:
        outcomes = _report_chunk(reporter, [inputs[i] for i in members], options, out_dir)
        return [
            (i, replace(o, status="skipped", exit_code=0))
            if o.reason == "not-dicom" and inputs[i] not in named
            else (i, o)
            for i, o in zip(members, outcomes, strict=True)
        ]

    placed: dict[int, Outcome] = {}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        finished = itertools.chain.from_iterable(pool.map(chunk, chunks))
        outcomes: Iterator[Outcome] = (placed.setdefault(i, o) for i, o in finished)
        if progress is not None:
            outcomes = progress(outcomes, len(inputs))
        for _ in outcomes:
            pass
    return [placed[i] for i in range(len(inputs))]


def _model_input_size(reporter: Reporter, path: Path) -> tuple[int, int]:
    """The size the study's model input pads to, from its header; (0, 0), first, where the
    header does not say (its read will say why)."""
    header = _header(path)
    if header is None:
        return (0, 0)
    rows, columns = header_int(header, "Rows", 0), header_int(header, "Columns", 0)
    if rows < 1 or columns < 1:
        return (0, 0)
    return reporter.model_input_size(rows, columns)


def _report_chunk(
    reporter: Reporter, paths: Sequence[Path], options: RenderOptions, out: Path
) -> list[Outcome]:
    """Read and gate each study, run the model over those that pass together, then report,
    render and write each; an error is that study's outcome alone."""
    outcomes: dict[int, Outcome] = {}
    radiographs: dict[int, Radiograph] = {}
    for index, path in enumerate(paths):
        with _outcome_of(reporter, path, options, out, outcomes, index):
            radiographs[index] = reporter.read(path)
    findings = reporter.predict_many(list(radiographs.values()), explain=options.explain)
    for index, found in zip(radiographs, findings, strict=True):
        path = paths[index]
        with _outcome_of(reporter, path, options, out, outcomes, index):
            outcomes[index] = _write_report(reporter.report(found), path, options, out)
    return [outcomes[index] for index in range(len(paths))]


@contextmanager
def _outcome_of(
    reporter: Reporter,
    path: Path,
    options: RenderOptions,
    out: Path,
    outcomes: dict[int, Outcome],
    index: int,
) -> Iterator[None]:
    """Record what an error in the block makes of the study: a refusal or a failure."""
    try:
        yield
    except UnsupportedStudyError as exc:
        outcomes[index] = _refusal(reporter, path, exc, options, out)
    except AnaxReportError as exc:
        outcomes[index] = Outcome(str(path), "failed", _reason(exc), exc.exit_code,
                                  message=str(exc))  # fmt: skip


def _write_report(report: Report, path: Path, options: RenderOptions, out: Path) -> Outcome:
    outputs = {SUFFIXES[fmt]: render(report, fmt, options) for fmt in options.formats}
    name = report.study.sop_instance_uid or path.stem
    written = []
    for suffix, output in outputs.items():
        write_output(out / f"{name}{suffix}", output)
        written.append(f"{name}{suffix}")
    if options.explain:
        from .render.explain import report_overlay

        written += write_explanations(report_overlay(report), out, name)
    return Outcome(str(path), "reported", sop_instance_uid=name, outputs=tuple(written))


def _reason(exc: AnaxReportError) -> str:
    return str(getattr(exc, "reason", "") or type(exc).__name__)


def _refusal(
    reporter: Reporter, path: Path, exc: AnaxReportError, options: RenderOptions, out: Path
) -> Outcome:
    """A gate refusal: the summary line, and in JSON and FHIR the refusal instead of findings."""
    header = _header(path)
    refusal = Refusal(
        study=StudyIdentity.from_dataset(header) if header is not None else StudyIdentity(),
        reason=_reason(exc),
        message=str(exc),
        source=str(path),
        provenance=reporter.provenance,
        image=_image_info(header),
        header=header,
    )
    uid = refusal.study.sop_instance_uid
    outputs = []
    for fmt in ("json", "fhir"):
        if fmt in options.formats:
            name = f"{uid or path.stem}{SUFFIXES[fmt]}"
            text = (
                refusal.to_json()
                if fmt == "json"
                else pretty.dumps(refusal.to_fhir(options.fhir_version))
            )
            write_output(out / name, text)
            outputs.append(name)
    return Outcome(str(path), "refused", refusal.reason, exc.exit_code, uid, str(exc),
                   tuple(outputs))  # fmt: skip


def _header(path: Path) -> Dataset | None:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, AttributeError, KeyError, TypeError):
        return None


def _image_info(header: Dataset | None) -> ImageInfo | None:
    """What the refused image was, as far as its header says (None if it says too little)."""
    try:
        return ImageInfo(
            rows=int(header.Rows),
            columns=int(header.Columns),
            modality=str(header.get("Modality", "")),
            view_position=str(header.get("ViewPosition", "")),
            pixel_spacing=None,
            study_description=str(header.get("StudyDescription", "")),
        )
    except (AttributeError, TypeError, ValueError):
        return None


def write_summary(outcomes: Sequence[Outcome], path: Path) -> None:
    """One row per input: CSV, or JSON when ``path`` ends in .json."""
    if path.suffix.lower() == ".json":
        text = json.dumps([o.to_dict() for o in outcomes], indent=2)
        write_output(path, text)
        return
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=SUMMARY_FIELDS)
        writer.writeheader()
        for outcome in outcomes:
            writer.writerow({**outcome.to_dict(), "outputs": " ".join(outcome.outputs)})
    os.replace(partial, path)
