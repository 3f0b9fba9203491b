"""JSON text of the report and the FHIR Bundle: UTF-8, indented by two spaces.

Written by orjson: the standard library drops its C encoder once ``indent`` is set, and then took
longer to print a FHIR Bundle of ours (1.4 ms) than to build it; orjson prints it in 0.09 ms. Its
text is ``json.dumps(value, indent=2, ensure_ascii=False)`` but for a float in exponent form
(``1e-5`` where ``json.dumps`` writes ``1e-05``: the same number) and a non-finite float, which
it writes as ``null`` (our outputs hold none: :class:`~anaxreport.report.RegionResult` refuses
them). A type it does not know raises :class:`TypeError`, as in ``json.dumps``.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

__all__ = ["dumps"]


def dumps(value: Any, indent: int | None = 2) -> str:
    """``value`` as JSON text, indented by ``indent`` spaces (None: on one line)."""
    if indent is None:
        return orjson.dumps(value).decode()
    if indent == 2:
        return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()
    return json.dumps(value, indent=indent, ensure_ascii=False)  # orjson indents by two only
