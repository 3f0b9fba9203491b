"""render.pretty: the report's and the Bundle's JSON text is json.dumps(indent=2) in UTF-8, and
reads back as the value written."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from _reports import make_findings

from anaxreport.render import pretty
from anaxreport.rules import apply_rules, load_rules

MIXED = {
    "text": 'quotes " and \\ back, tab\t, newline\n, NUL \x00, é, 肺, emoji \U0001f600',
    "numbers": [0, -7, 2**62, 0.1, 0.0001, -0.0, 123456789.125],
    "flags": [True, False, None],
    "empty": {"dict": {}, "list": [], "tuple": ()},
    "nested": [[[]], [{}], {"a": [1, {"b": (2, 3)}]}],
    "": "an empty key",
}


@pytest.mark.parametrize("indent", [2, 4, 0, None])
def test_it_writes_what_json_dumps_writes_in_utf8(indent):
    written = pretty.dumps(MIXED, indent)
    assert json.loads(written) == json.loads(json.dumps(MIXED))
    if indent is not None:  # on one line, orjson leaves out the spaces after , and :
        assert written == json.dumps(MIXED, indent=indent, ensure_ascii=False)
    assert "é, 肺, emoji \U0001f600" in written


def test_a_float_in_exponent_form_is_the_same_number():
    numbers = [1e-05, 3.2e-07, 1.5e300, 2.5e-320]
    assert json.loads(pretty.dumps(numbers)) == numbers


@pytest.mark.parametrize("version", ["R4B", "R5"])
def test_reports_and_bundles_are_written_as_json_dumps_writes_them(version):
    report = apply_rules(
        make_findings({("cardiac silhouette", "enlarged cardiac silhouette"): 0.9}),
        load_rules(),
    )
    for value in (report.to_fhir(version), report.to_dict()):
        assert pretty.dumps(value) == json.dumps(value, indent=2, ensure_ascii=False)
    assert report.to_json() == json.dumps(report.to_dict(), indent=2, ensure_ascii=False)


def test_what_json_cannot_write_is_refused():
    with pytest.raises(TypeError):
        pretty.dumps({"deep": [{"x": b"bytes"}]})


def test_json_files_are_written_in_utf8_whatever_the_locale(tmp_path):
    """In the C locale (ASCII, no UTF-8 mode) a text file is written in ASCII by default."""
    path, value = tmp_path / "report.json", {"patient": "Müller^Jürgen 山田"}
    code = (
        "import locale; from anaxreport.batch import write_output; "
        "from anaxreport.render import pretty; from pathlib import Path; "
        "assert locale.getpreferredencoding(False).lower() in ('ansi_x3.4-1968', 'ascii'); "
        f"write_output(Path({str(path)!r}), pretty.dumps({value!a}))"
    )
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    assert json.loads(path.read_bytes().decode("utf-8")) == value
