"""render.pretty writes exactly what json.dumps(value, indent=...) writes, on our outputs and on
the values it hands back to json.dumps."""

from __future__ import annotations

import enum
import json

import pytest
from _reports import make_findings
from pydicom.uid import UID

from anaxreport.render import pretty
from anaxreport.rules import apply_rules, load_rules


class _Level(enum.IntEnum):
    HIGH = 3


MIXED = {
    "text": 'quotes " and \\ back, tab\t, newline\n, NUL \x00, é, 肺, emoji \U0001f600',
    "numbers": [0, -7, 2**70, 0.1, 1e-05, -0.0, 1.5e300, 123456789.125],
    "flags": [True, False, None],
    "empty": {"dict": {}, "list": [], "tuple": ()},
    "nested": [[[]], [{}], {"a": [1, {"b": (2, 3)}]}],
    "": "an empty key",
}


def _no_fallback(*args, **kwargs):
    raise AssertionError("handed to json.dumps: these values must take the fast path")


@pytest.mark.parametrize("indent", [2, 4, 0])
def test_it_writes_what_json_dumps_writes(indent, monkeypatch):
    expected = json.dumps(MIXED, indent=indent)
    monkeypatch.setattr(pretty.json, "dumps", _no_fallback)
    assert pretty.dumps(MIXED, indent) == expected


def test_without_indent_it_is_json_dumps():
    assert pretty.dumps(MIXED, None) == json.dumps(MIXED)


@pytest.mark.parametrize("version", ["R4B", "R5"])
def test_reports_and_bundles_are_written_as_json_dumps_writes_them(version, monkeypatch):
    report = apply_rules(
        make_findings({("cardiac silhouette", "enlarged cardiac silhouette"): 0.9}),
        load_rules(),
    )
    values = (report.to_fhir(version), report.to_dict())
    expected = [json.dumps(value, indent=2) for value in values]
    expected_text = json.dumps(report.to_dict(), indent=2)

    monkeypatch.setattr(pretty.json, "dumps", _no_fallback)
    assert [pretty.dumps(value) for value in values] == expected
    assert report.to_json() == expected_text


@pytest.mark.parametrize(
    "unusual",
    [
        float("nan"),
        float("inf"),
        -float("inf"),
        UID("1.2.3"),
        _Level.HIGH,
        {1: "int key"},
        {None: 1, True: 2, 1.5: 3},
        b"bytes",
    ],
    ids=["nan", "inf", "-inf", "str-subclass", "int-enum", "int-key", "other-keys", "bytes"],
)
def test_what_it_does_not_write_goes_to_json_dumps(unusual):
    value = {"deep": [{"x": unusual}]}
    try:
        expected = json.dumps(value, indent=2)
    except TypeError as exc:  # json.dumps refuses it: so does pretty, with the same error
        with pytest.raises(TypeError, match=str(exc)):
            pretty.dumps(value)
    else:
        assert pretty.dumps(value) == expected
