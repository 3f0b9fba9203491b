"""The spool: the node's only state, a folder tree where every step is an atomic rename.

Layout (all under :attr:`Spool.root`)::

    incoming/            being written by a C-STORE; never acknowledged; cleared at start
    pending/             acknowledged, waiting for the model (named <received ns>-<SOP UID>.dcm)
    reported/ refused/ failed/
                         what became of each input (with a .json note for refused and failed)
    outbox/<destination>/
                         results waiting to be delivered (<received ns>-<kind>-<UID><suffix>)
    dead/<destination>/  results a destination refused ``max_attempts`` times

Why this shape: an instance is acknowledged only after its bytes are on disk (fsync'd file,
then rename, then fsync'd folder), so a crash at any point loses nothing that was
acknowledged. Results are written to the outbox before the input leaves ``pending/``; a crash
in between makes the input be reported again after restart, and because result UIDs are
derived from the input (:mod:`anaxreport.render.uids`), the second run writes the very same
objects under the same names, so a PACS sees one result, never two.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["OUTCOMES", "PendingItem", "Spool", "received_ns", "safe_uid"]

#: Final folders of an input.
OUTCOMES = ("reported", "refused", "failed")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_ATTEMPTS = ".attempts"


def safe_uid(uid: str) -> str:
    """A SOP Instance UID as a file name part; anything that is not a UID becomes ``invalid``."""
    return uid if len(uid) <= 64 and _UID.match(uid) else "invalid"


def received_ns(path: Path) -> int:
    """When the input behind a spool or outbox file was acknowledged (its name's first part)."""
    return int(path.name.split("-", 1)[0])


@dataclass(frozen=True)
class PendingItem:
    """One acknowledged input waiting for (or being given to) the model."""

    path: Path

    @property
    def received_ns(self) -> int:
        """When it was acknowledged (ns since the epoch), from its name."""
        return received_ns(self.path)

    @property
    def sop_instance_uid(self) -> str:
        return self.path.name.split("-", 1)[1].removesuffix(".dcm")

    @property
    def stem(self) -> str:
        return self.path.name.removesuffix(".dcm")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(folder: Path, name: str, data: bytes, staging: Path) -> Path:
    """Write ``data`` as ``folder/name``: a temporary file in ``staging`` (same file system),
    fsync, rename, fsync the folder. Readers never see a partial file."""
    partial = staging / f".{uuid.uuid4().hex}.part"
    with open(partial, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    target = folder / name
    os.replace(partial, target)
    _fsync_dir(folder)
    return target


class Spool:
    """The folder tree above; safe for several threads of one process (names never collide).

    One node owns one spool: two nodes on the same folder would process inputs twice.
    """

    def __init__(self, root: str | os.PathLike[str], destinations: tuple[str, ...] = ()) -> None:
        self.root = Path(root)
        self.incoming = self.root / "incoming"
        self.pending = self.root / "pending"
        for folder in (self.incoming, self.pending, *(self.root / o for o in OUTCOMES)):
            folder.mkdir(parents=True, exist_ok=True)
        for name in destinations:
            self.outbox(name).mkdir(parents=True, exist_ok=True)
            self.dead(name).mkdir(parents=True, exist_ok=True)
        self._last_ns = 0
        self._lock = threading.Lock()

    # -- receiving ----------------------------------------------------------------------------

    def recover(self) -> int:
        """Remove what a crash left half-written in ``incoming/`` (never acknowledged, so the
        sender still has it and sends it again); the number removed."""
        removed = 0
        for partial in self.incoming.iterdir():  # every temporary file is staged here
            partial.unlink(missing_ok=True)
            removed += 1
        return removed

    def _stamp(self) -> int:
        """A receive time that is unique and increasing within this process."""
        with self._lock:
            now = max(time.time_ns(), self._last_ns + 1)
            self._last_ns = now
            return now

    def accept(self, encoded: bytes, sop_instance_uid: str) -> PendingItem:
        """Store one received instance (a DICOM file's bytes) durably in ``pending/``."""
        name = f"{self._stamp():020d}-{safe_uid(sop_instance_uid)}.dcm"
        return PendingItem(_write_durably(self.pending, name, encoded, self.incoming))

    def free_mb(self) -> float:
        return shutil.disk_usage(self.root).free / 2**20

    # -- processing ---------------------------------------------------------------------------

    def pending_items(self) -> list[PendingItem]:
        """Inputs waiting, oldest first."""
        return [PendingItem(p) for p in sorted(self.pending.glob("[0-9]*.dcm"))]

    def start_attempt(self, item: PendingItem) -> int:
        """Count one more processing attempt of ``item`` on disk; the count, this one included.

        An input that crashes the process (a decoder segfault, the OOM killer) would otherwise
        be retried after every restart for ever; the worker gives up on it after a few."""
        marker = self.pending / f".{item.stem}{_ATTEMPTS}"
        attempts = int(marker.read_text() or 0) + 1 if marker.exists() else 1
        _write_durably(self.pending, marker.name, str(attempts).encode(), self.incoming)
        return attempts

    def finish(
        self, item: PendingItem, outcome: str, note: dict[str, object] | None = None
    ) -> Path:
        """Move an input to its outcome folder (with a JSON note); it leaves ``pending/`` last."""
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, got {outcome!r}")
        folder = self.root / outcome
        if note is not None:
            text = json.dumps(note, indent=2, sort_keys=True) + "\n"
            _write_durably(folder, f"{item.stem}.json", text.encode(), self.incoming)
        target = folder / item.path.name
        os.replace(item.path, target)
        _fsync_dir(self.pending)
        (self.pending / f".{item.stem}{_ATTEMPTS}").unlink(missing_ok=True)
        return target

    def discard(self, item: PendingItem) -> None:
        """Delete a reported input (``retain_reported = false``): the PACS holds the original."""
        item.path.unlink(missing_ok=True)
        (self.pending / f".{item.stem}{_ATTEMPTS}").unlink(missing_ok=True)

    # -- delivering ---------------------------------------------------------------------------

    def outbox(self, destination: str) -> Path:
        return self.root / "outbox" / destination

    def dead(self, destination: str) -> Path:
        return self.root / "dead" / destination

    def post(self, destination: str, name: str, data: bytes) -> Path:
        """Queue one result for ``destination``; the same name overwrites (same object)."""
        return _write_durably(self.outbox(destination), name, data, self.incoming)

    def queued(self, destination: str) -> Iterator[Path]:
        """Results waiting for ``destination``, oldest input first."""
        yield from sorted(p for p in self.outbox(destination).iterdir() if p.name[0] != ".")

    def bury(self, destination: str, path: Path) -> Path:
        """Move a result the destination keeps refusing to the dead-letter folder."""
        target = self.dead(destination) / path.name
        os.replace(path, target)
        return target

    def depth(self) -> int:
        return sum(1 for _ in self.pending.glob("[0-9]*.dcm"))

    def outbox_depth(self, destination: str) -> int:
        return sum(1 for p in self.outbox(destination).iterdir() if p.name[0] != ".")
