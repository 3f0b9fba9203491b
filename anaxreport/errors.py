"""The errors anaxreport raises, each with the CLI exit status and a reason code.

One base class, a few precise subclasses (STYLE.md §5). Messages are one line, name the offending
argument or file and say what is allowed; the CLI prints ``anaxreport: <message>`` and exits with
:attr:`AnaxReportError.exit_code`, never with a traceback.

Every error also carries :attr:`AnaxReportError.reason`: a short, stable, machine-readable code
(``lateral-view``, ``truncated``, ...) from :data:`REASONS`. The class sets a default; the raiser
refines it per instance (``UnsupportedStudyError(message, reason="lateral-view")``). Batch
summaries, JSON/FHIR refusals and tests key on the code, never on the message text.
"""

from __future__ import annotations

__all__ = [
    "REASONS",
    "AnaxReportError",
    "ConfigurationError",
    "ExportError",
    "InputFileNotFoundError",
    "InvalidInputError",
    "NoPixelDataError",
    "NotDicomError",
    "UnsupportedStudyError",
    "WeightsError",
]

#: Every reason code, with what it means. Codes are part of the public contract: add, never
#: rename. Grouped by the class that normally carries them.
REASONS: dict[str, str] = {
    # AnaxReportError
    "error": "an anaxreport error without a more precise reason",
    # InvalidInputError and its subclasses: the input cannot become a radiograph
    "invalid-input": "the input cannot be read as a radiograph",
    "missing-file": "the path does not exist or is not a regular file",
    "not-dicom": "the file is not DICOM",
    "no-pixel-data": "a DICOM data set without Pixel Data (a header-only file)",
    "truncated": "the file or its Pixel Data ends before the header says it should",
    "undecodable": "the Pixel Data cannot be decoded (corrupt, unknown transfer syntax, plugin)",
    "bad-header": "the Image Pixel module is unusable (rows, columns, bits, LUTs)",
    # UnsupportedStudyError: readable, but refused by the input gate
    "unsupported": "an image anaxreport is not made for",
    "colour-image": "not a grey-scale (MONOCHROME1/2, one sample) image",
    "multi-frame": "more than one frame",
    "bad-modality": "a modality other than CR/DX (or SC/OT with a chest body part)",
    "not-chest": "the body part is not the chest, or unknown where it must be known",
    "lateral-view": "a lateral projection",
    "not-frontal": "a projection other than PA or AP (oblique, unknown view)",
    "too-small": "fewer rows or columns than the gate's minimum",
    "too-large": "more rows or columns than the gate's maximum",
    "bad-aspect": "an aspect ratio no chest radiograph has",
    "paediatric": "a patient younger than the gate's minimum age",
    "blank-image": "an image without contrast (constant after the LUTs)",
    # the other classes
    "bad-weights": "a checkpoint is missing, corrupt or does not fit the model",
    "bad-configuration": "a configuration value is out of range or inconsistent",
    "export-failed": "an output could not be produced or failed its own validation",
}


class AnaxReportError(Exception):
    """Base of every error anaxreport raises on purpose.

    ``reason`` refines the class's default reason code; it must be a key of :data:`REASONS`,
    so a typo fails where it is raised rather than in a consumer's summary. The code is kept in
    the instance ``__dict__``, which exceptions pickle, so it survives a worker process.
    """

    exit_code: int = 1
    reason: str = "error"

    def __init__(self, *args: object, reason: str | None = None) -> None:
        super().__init__(*args)
        if reason is not None:
            if reason not in REASONS:
                raise ValueError(f"unknown reason code {reason!r}; known: {', '.join(REASONS)}")
            self.reason = reason


class InvalidInputError(AnaxReportError, ValueError):
    """The input cannot be read as a radiograph."""

    exit_code = 3
    reason = "invalid-input"


class InputFileNotFoundError(InvalidInputError, FileNotFoundError):
    """The input path does not exist or is not a file."""

    exit_code = 4
    reason = "missing-file"


class NotDicomError(InvalidInputError):
    """The file is not a DICOM Part 10 file (nor a readable raw DICOM data set)."""

    exit_code = 5
    reason = "not-dicom"


class NoPixelDataError(InvalidInputError):
    """The DICOM data set has no usable Pixel Data."""

    exit_code = 6
    reason = "no-pixel-data"


class UnsupportedStudyError(AnaxReportError):
    """Readable, but not an image anaxreport is made for (the input gate refused it)."""

    exit_code = 7
    reason = "unsupported"


class WeightsError(AnaxReportError):
    """A checkpoint is missing, corrupt, fails its hash check or does not fit the model."""

    exit_code = 8
    reason = "bad-weights"


class ConfigurationError(AnaxReportError, ValueError):
    """A configuration value is out of range or inconsistent."""

    exit_code = 9
    reason = "bad-configuration"


class ExportError(AnaxReportError):
    """An output could not be produced or failed its own validation."""

    exit_code = 10
    reason = "export-failed"
