"""The errors anaxreport raises, each with the CLI exit status it maps to.

One base class, a few precise subclasses (STYLE.md §5). Messages are one line, name the offending
argument or file and say what is allowed; the CLI prints ``anaxreport: <message>`` and exits with
:attr:`AnaxReportError.exit_code`, never with a traceback.
"""

from __future__ import annotations

__all__ = [
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


class AnaxReportError(Exception):
    """Base of every error anaxreport raises on purpose."""

    exit_code: int = 1


class InvalidInputError(AnaxReportError, ValueError):
    """The input cannot be read as a radiograph."""

    exit_code = 3


class InputFileNotFoundError(InvalidInputError, FileNotFoundError):
    """The input path does not exist or is not a file."""

    exit_code = 4


class NotDicomError(InvalidInputError):
    """The file is not a DICOM Part 10 file (nor a readable raw DICOM data set)."""

    exit_code = 5


class NoPixelDataError(InvalidInputError):
    """The DICOM data set has no usable Pixel Data."""

    exit_code = 6


class UnsupportedStudyError(AnaxReportError):
    """Readable, but not an image anaxreport is made for (the input gate refused it)."""

    exit_code = 7


class WeightsError(AnaxReportError):
    """A checkpoint is missing, corrupt, fails its hash check or does not fit the model."""

    exit_code = 8


class ConfigurationError(AnaxReportError, ValueError):
    """A configuration value is out of range or inconsistent."""

    exit_code = 9


class ExportError(AnaxReportError):
    """An output could not be produced or failed its own validation."""

    exit_code = 10
