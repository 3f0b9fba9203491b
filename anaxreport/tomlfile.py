"""Reading the TOML files users edit (rules, gate rules, node configuration) the same way.

Each failure becomes one :class:`~anaxreport.errors.ConfigurationError` line that names the
file and what it was meant to be, so the CLI exits 9 and never shows a traceback.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from .errors import ConfigurationError

__all__ = ["read_toml"]


def read_toml(path: str | os.PathLike[str], what: str) -> tuple[dict[str, Any], bytes]:
    """The parsed document at ``path`` and its raw bytes (which the rules hash)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        return tomllib.loads(raw.decode("utf-8")), raw
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read {what}: {exc.strerror}") from exc
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"{path}: not a valid TOML {what}: {exc}") from exc
