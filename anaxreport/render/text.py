"""The text report: a Jinja2 template over the :class:`~anaxreport.report.Report`.

The shipped template is ``templates/report.txt.j2``; users pass their own by path. Users'
templates run in Jinja2's sandbox, so that a template cannot reach beyond the report; all run
with strict undefined variables, so a typo fails loudly (as a one-line
:class:`ConfigurationError`) instead of printing an empty line. Users' compiled templates are
cached per file and modification time; the shipped one, ours, is compiled once.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from ..errors import ConfigurationError
from ..report import Report
from ..resources import templates_dir

__all__ = ["DEFAULT_TEMPLATE", "render_text"]

#: The shipped text template, in ``templates/``.
DEFAULT_TEMPLATE = "report.txt.j2"

_VIEWS = {"PA": "posteroanterior (PA)", "AP": "anteroposterior (AP)"}
_MODALITIES = {
    "CR": "computed radiography",
    "DX": "digital radiography",
    "SC": "secondary capture",
    "OT": "other capture",
}


def _view_words(view: str) -> str:
    return _VIEWS.get(view, f"frontal ({view})" if view else "frontal (projection not stated)")


def _modality_words(modality: str) -> str:
    return _MODALITIES.get(modality, modality or "modality not stated")


def _dicom_date(value: str) -> str:
    """YYYYMMDD → YYYY-MM-DD; anything else as it is, or "(not given)"."""
    if len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value or "(not given)"


def _percent(probability: float) -> str:
    return f"{probability:.0%}" if probability >= 0.01 else "<1%"


@functools.lru_cache(maxsize=16)
def _compiled(path: str, mtime_ns: int) -> jinja2.Template:
    """A user's template, in the sandbox (it checks every attribute a template reads)."""
    return _template(SandboxedEnvironment, path)


@functools.lru_cache(maxsize=1)
def _shipped() -> jinja2.Template:
    """The shipped template: ours, so compiled once, outside the sandbox (a third of the time
    of rendering it in there, and the path look-ups that find a user's edits another third)."""
    return _template(jinja2.Environment, str(templates_dir() / DEFAULT_TEMPLATE))


def _template(kind: type[jinja2.Environment], path: str) -> jinja2.Template:
    env = kind(
        loader=jinja2.FileSystemLoader(os.path.dirname(path)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(
        view_words=_view_words,
        modality_words=_modality_words,
        dicom_date=_dicom_date,
        percent=_percent,
    )
    return env.get_template(os.path.basename(path))


def render_text(report: Report, template: str | os.PathLike[str] | None = None) -> str:
    """Render ``report`` with the shipped template or the Jinja2 file at ``template``."""
    path = Path(template) if template is not None else templates_dir() / DEFAULT_TEMPLATE
    try:
        if template is None:
            return _shipped().render(_context(report))
        compiled = _compiled(str(path.resolve()), path.stat().st_mtime_ns)
        return compiled.render(_context(report))
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read template: {exc.strerror}") from exc
    except jinja2.TemplateError as exc:
        where = f"{path}:{exc.lineno}" if getattr(exc, "lineno", None) else str(path)
        message = str(exc.message or exc).splitlines()[0]
        raise ConfigurationError(f"{where}: template error: {message}") from exc


def _context(report: Report) -> dict[str, Any]:
    return {
        "report": report,
        "study": report.study,
        "image": report.image,
        "sections": report.sections,
        "impression": report.impression,
        "missing_regions": [r.name for r in report.regions if not r.found],
        "provenance": report.provenance,
        "rules": report.rules,
    }
