"""Shared pytest fixtures."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without an installed package
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def dciodvfy():
    """A function returning dciodvfy's error lines for a file (skip if the tool is absent).

    With ANAXREPORT_REQUIRE_REFEREES=1 a missing tool fails instead of skipping.
    """
    exe = shutil.which("dciodvfy")
    if exe is None:
        if os.environ.get("ANAXREPORT_REQUIRE_REFEREES") == "1":
            pytest.fail("dciodvfy is required (ANAXREPORT_REQUIRE_REFEREES=1) but not installed")
        pytest.skip("dciodvfy (dicom3tools) is not installed")

    def errors(path: Path) -> list[str]:
        proc = subprocess.run([exe, str(path)], capture_output=True, text=True, check=False)
        lines = (proc.stdout + proc.stderr).splitlines()
        return [line for line in lines if line.startswith("Error")]

    return errors
