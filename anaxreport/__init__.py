"""anaxreport: anatomy-aware chest X-ray reporting with AnaXNet. Not for diagnostic use.

The public API is small (DESIGN.md §2)::

    from anaxreport import Reporter
    reporter = Reporter.from_pretrained()
    report = reporter.run("study.dcm")

``import anaxreport`` stays light: the model stack (torch, torchvision, torch-geometric) loads
when :class:`Reporter` is first touched.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .errors import (
    AnaxReportError,
    ConfigurationError,
    ExportError,
    InputFileNotFoundError,
    InvalidInputError,
    NoPixelDataError,
    NotDicomError,
    UnsupportedStudyError,
    WeightsError,
)

__version__ = "0.1.0"

__all__ = [
    "AnaxReportError",
    "ConfigurationError",
    "ExportError",
    "InputFileNotFoundError",
    "InvalidInputError",
    "NoPixelDataError",
    "NotDicomError",
    "RegionResult",
    "Report",
    "Reporter",
    "UnsupportedStudyError",
    "WeightsError",
    "__version__",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())

if TYPE_CHECKING:
    from .report import RegionResult, Report
    from .reporter import Reporter

_LAZY = {"Reporter": "reporter", "Report": "report", "RegionResult": "report"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
