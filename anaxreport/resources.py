"""Where the shipped templates and checkpoints are, installed or in a source checkout.

In a wheel they are package data under ``anaxreport/_resources``; in a checkout (or an editable
install) they are the repository's top-level ``templates/`` and ``models/`` folders.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEFAULT_CHECKPOINT", "models_dir", "templates_dir"]

_PACKAGE = Path(__file__).resolve().parent

#: The checkpoint :meth:`Reporter.from_pretrained` loads when given no path.
DEFAULT_CHECKPOINT = "anaxnet-phantom.json"


def _resource(name: str) -> Path:
    installed = _PACKAGE / "_resources" / name
    return installed if installed.is_dir() else _PACKAGE.parent / name


def models_dir() -> Path:
    return _resource("models")


def templates_dir() -> Path:
    return _resource("templates")
