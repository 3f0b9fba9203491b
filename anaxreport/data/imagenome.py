"""Reader for the Chest ImaGenome v1.0.0 ``silver_dataset`` layout (DESIGN.md §4).

The same reader serves the real data set and the phantoms that :mod:`anaxreport.data.phantom`
writes, so training and evaluation code never knows which one it sees. Only numpy and the
standard library are used: this module sits on the training path but must stay cheap to import.

Layout::

    silver_root/
      scene_graph/{dicom_id}_SceneGraph.json     (or scene_graph.zip holding them)
      splits/{train,valid,test}.csv              (index, subject_id, study_id, dicom_id, path,
                                                  ViewPosition)
      splits/images_to_avoid.csv                 (gold-standard images, never used to train)
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from anaxreport.errors import ConfigurationError
from anaxreport.geometry import BoundingBox
from anaxreport.vocab import FINDING_NAMES, REGION_NAMES

__all__ = [
    "SPLITS",
    "ImaGenomeDataset",
    "SceneGraph",
    "SplitEntry",
    "read_images_to_avoid",
    "read_scene_graph",
    "read_split",
    "scene_graph_labels",
]

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "valid", "test")
_SUFFIX = "_SceneGraph.json"
_REGION_INDEX = {name: i for i, name in enumerate(REGION_NAMES)}
_FINDING_INDEX = {name: i for i, name in enumerate(FINDING_NAMES)}


@dataclass(frozen=True)
class SceneGraph:
    """The part of one ImaGenome scene graph AnaXNet learns from.

    ``boxes`` and ``labels`` follow :data:`anaxreport.vocab.REGIONS` order; a region the
    annotation pipeline did not box (or boxed with zero area) is ``None``. The boxes are as
    the file gives them, which can reach outside the image: the file does not say the image's
    size, so :meth:`clipped` takes it from the image.
    """

    image_id: str
    patient_id: str
    study_id: str
    boxes: tuple[BoundingBox | None, ...]
    labels: tuple[tuple[bool, ...], ...]

    def __post_init__(self) -> None:
        if len(self.boxes) != len(REGION_NAMES) or len(self.labels) != len(REGION_NAMES):
            raise ValueError(
                f"SceneGraph needs {len(REGION_NAMES)} boxes and label rows, "
                f"got {len(self.boxes)} and {len(self.labels)}"
            )
        if any(len(row) != len(FINDING_NAMES) for row in self.labels):
            raise ValueError(f"SceneGraph label rows must have {len(FINDING_NAMES)} entries")

    def labels_array(self) -> np.ndarray:
        """The 18×9 float32 target matrix (1 = finding present in region)."""
        return np.asarray(self.labels, dtype=np.float32)

    def boxes_array(self) -> np.ndarray:
        """The 18×4 float32 ``x1, y1, x2, y2`` matrix, NaN rows for missing regions."""
        out = np.full((len(REGION_NAMES), 4), np.nan, dtype=np.float32)
        for i, box in enumerate(self.boxes):
            if box is not None:
                out[i] = box.as_tuple()
        return out

    def clipped(self, columns: int, rows: int) -> SceneGraph:
        """The graph with its boxes cut to a ``columns`` × ``rows`` image; a box wholly
        outside it is ``None``."""
        boxes = tuple(None if b is None else b.clip(columns, rows) for b in self.boxes)
        return replace(self, boxes=boxes)

    @property
    def found(self) -> np.ndarray:
        """Boolean mask of the regions that have a box."""
        return np.array([b is not None for b in self.boxes], dtype=bool)


@dataclass(frozen=True)
class SplitEntry:
    """One row of a ``splits/*.csv`` file."""

    subject_id: str
    study_id: str
    dicom_id: str
    path: str
    view_position: str


def _number(value: Any) -> float | None:
    """A finite float from a JSON value, or None (missing, null, text, NaN, inf)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _object_box(obj: Mapping[str, Any]) -> BoundingBox | None:
    """The source-pixel box of one ``objects[]`` entry; None if unusable (a coordinate missing
    or not finite, no area).

    Not clipped here: ``original_width`` and ``original_height`` are the box's own size
    (``original_x2 - original_x1``), not the image's, which the scene graph does not give
    (:meth:`SceneGraph.clipped`).
    """
    coords = [_number(obj.get(f"original_{k}")) for k in ("x1", "y1", "x2", "y2")]
    if any(c is None for c in coords):
        return None
    x1, y1, x2, y2 = (float(c) for c in coords)  # type: ignore[arg-type]
    x1, x2 = min(x1, x2), max(x1, x2)
    y1, y2 = min(y1, y2), max(y1, y2)
    if x2 <= x1 or y2 <= y1:
        return None
    return BoundingBox(x1, y1, x2, y2)


def scene_graph_labels(attributes: Iterable[Mapping[str, Any]]) -> np.ndarray:
    """The 18×9 boolean label matrix from a scene graph's ``attributes`` list.

    A region carries finding m if ANY of its phrases says ``<category>|yes|<m>``; a later
    ``no`` never clears an earlier ``yes`` (the official AnaXNet code lets it, DESIGN.md §3).
    """
    labels = np.zeros((len(REGION_NAMES), len(FINDING_NAMES)), dtype=bool)
    for entry in attributes:
        row = _REGION_INDEX.get(str(entry.get("bbox_name", "")).strip().lower())
        if row is None:
            continue
        for phrase_attributes in entry.get("attributes") or []:
            for item in phrase_attributes or []:
                parts = str(item).split("|")
                if len(parts) != 3 or parts[1].strip().lower() != "yes":
                    continue
                col = _FINDING_INDEX.get(parts[2].strip().lower())
                if col is not None:
                    labels[row, col] = True
    return labels


def read_scene_graph(source: Path | str | Mapping[str, Any]) -> SceneGraph:
    """Read one ``{dicom_id}_SceneGraph.json`` (a path or the already parsed dict)."""
    if isinstance(source, Mapping):
        data = source
    else:
        path = Path(source)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigurationError(f"scene graph {path} does not exist") from None
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"scene graph {path} is not valid JSON: {exc}") from exc
    return _scene_graph_from_dict(data)


def _scene_graph_from_dict(data: Mapping[str, Any]) -> SceneGraph:
    boxes: list[BoundingBox | None] = [None] * len(REGION_NAMES)
    seen: set[int] = set()
    for obj in data.get("objects") or []:
        row = _REGION_INDEX.get(str(obj.get("bbox_name", "")).strip().lower())
        if row is None or row in seen:
            continue
        seen.add(row)
        boxes[row] = _object_box(obj)
    labels = scene_graph_labels(data.get("attributes") or [])
    return SceneGraph(
        image_id=str(data.get("image_id", "")),
        patient_id=str(data.get("patient_id", "")),
        study_id=str(data.get("study_id", "")),
        boxes=tuple(boxes),
        labels=tuple(tuple(bool(v) for v in row) for row in labels),
    )


def read_split(csv_path: Path | str) -> list[SplitEntry]:
    """Read ``splits/{train,valid,test}.csv`` (the first, unnamed column is an index)."""
    path = Path(csv_path)
    if not path.is_file():
        raise ConfigurationError(f"split file {path} does not exist")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"subject_id", "study_id", "dicom_id", "path"} - set(reader.fieldnames or [])
        if missing:
            raise ConfigurationError(f"split file {path} lacks columns {sorted(missing)}")
        return [
            SplitEntry(
                subject_id=row["subject_id"].strip(),
                study_id=row["study_id"].strip(),
                dicom_id=row["dicom_id"].strip(),
                path=row["path"].strip(),
                view_position=(row.get("ViewPosition") or "").strip(),
            )
            for row in reader
        ]


def read_images_to_avoid(csv_path: Path | str) -> frozenset[str]:
    """The dicom_ids listed in ``images_to_avoid.csv`` (column ``dicom_id``)."""
    path = Path(csv_path)
    if not path.is_file():
        raise ConfigurationError(f"images-to-avoid file {path} does not exist")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if "dicom_id" not in (reader.fieldnames or []):
            raise ConfigurationError(f"images-to-avoid file {path} has no dicom_id column")
        return frozenset(row["dicom_id"].strip() for row in reader if row["dicom_id"])


class _SceneGraphStore:
    """Scene graphs from a folder or, unextracted, from ``scene_graph.zip``."""

    def __init__(self, silver_root: Path) -> None:
        folder, archive = silver_root / "scene_graph", silver_root / "scene_graph.zip"
        self._zip_path: Path | None = None
        self._zip: zipfile.ZipFile | None = None
        self._zip_pid = -1
        self._members: dict[str, str] = {}
        if folder.is_dir():
            self._folder: Path | None = folder
            names = os.listdir(folder)
            self._members = {n[: -len(_SUFFIX)]: n for n in names if n.endswith(_SUFFIX)}
        elif archive.is_file():
            self._folder = None
            self._zip_path = archive
            with zipfile.ZipFile(archive) as handle:
                for name in handle.namelist():
                    base = name.rsplit("/", 1)[-1]
                    if base.endswith(_SUFFIX):
                        self._members.setdefault(base[: -len(_SUFFIX)], name)
        else:
            raise ConfigurationError(
                f"{silver_root} has neither a scene_graph/ folder nor scene_graph.zip"
            )

    def __contains__(self, dicom_id: str) -> bool:
        return dicom_id in self._members

    def __getstate__(self) -> dict[str, Any]:
        # A ZipFile handle must not cross into DataLoader worker processes.
        state = self.__dict__.copy()
        state["_zip"], state["_zip_pid"] = None, -1
        return state

    def read(self, dicom_id: str) -> SceneGraph:
        member = self._members.get(dicom_id)
        if member is None:
            raise ConfigurationError(f"no scene graph for dicom_id {dicom_id!r}")
        if self._folder is not None:
            return read_scene_graph(self._folder / member)
        if self._zip is None or self._zip_pid != os.getpid():
            self._zip = zipfile.ZipFile(self._zip_path)  # type: ignore[arg-type]
            self._zip_pid = os.getpid()
        return read_scene_graph(json.loads(self._zip.read(member).decode("utf-8")))


class ImaGenomeDataset:
    """One split of a Chest ImaGenome-shaped ``silver_dataset`` (real or phantom).

    Parameters
    ----------
    silver_root
        Folder with ``scene_graph/`` (or ``scene_graph.zip``) and ``splits/``.
    split
        ``"train"``, ``"valid"`` or ``"test"``.
    image_root
        Where the split's ``path`` column (``files/p10/p10000032/s5.../<dicom_id>.dcm``) is
        resolved: for Chest ImaGenome, the MIMIC-CXR-JPG folder that holds ``files/``; defaults
        to ``silver_root`` (the phantom layout).
    exclude_csv
        ``images_to_avoid.csv``; for ``"train"`` the one in ``silver_root/splits`` is used when
        present, because those gold-standard images must never be trained on (DESIGN.md §4).
    """

    def __init__(
        self,
        silver_root: Path | str,
        split: str,
        image_root: Path | str | None = None,
        exclude_csv: Path | str | None = None,
    ) -> None:
        self.silver_root = Path(silver_root)
        if split not in SPLITS:
            raise ConfigurationError(f"split must be one of {list(SPLITS)}, got {split!r}")
        if not self.silver_root.is_dir():
            raise ConfigurationError(f"silver_root {self.silver_root} is not a folder")
        self.split = split
        self.image_root = Path(image_root) if image_root is not None else self.silver_root
        if not self.image_root.is_dir():
            raise ConfigurationError(f"image_root {self.image_root} is not a folder")
        avoid: frozenset[str] = frozenset()
        default_avoid = self.silver_root / "splits" / "images_to_avoid.csv"
        if exclude_csv is not None:
            avoid = read_images_to_avoid(exclude_csv)
        elif split == "train" and default_avoid.is_file():
            avoid = read_images_to_avoid(default_avoid)
        self._store = _SceneGraphStore(self.silver_root)
        entries = read_split(self.silver_root / "splits" / f"{split}.csv")
        kept = [e for e in entries if e.dicom_id not in avoid and e.dicom_id in self._store]
        excluded = sum(e.dicom_id in avoid for e in entries)
        unmatched = len(entries) - len(kept) - excluded
        if excluded or unmatched:
            logger.info(
                "%s split: %d images excluded (images to avoid), %d without a scene graph",
                split,
                excluded,
                unmatched,
            )
        self.entries: tuple[SplitEntry, ...] = tuple(kept)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> tuple[SplitEntry, SceneGraph]:
        entry = self.entries[index]
        return entry, self._store.read(entry.dicom_id)

    def image_path(self, index: int) -> Path:
        """The image file: the split's ``.dcm`` path, else its MIMIC-CXR-JPG ``.jpg`` sibling."""
        entry = self.entries[index]
        path = self.image_root / entry.path
        if path.is_file():
            return path
        jpg = path.with_suffix(".jpg")
        if jpg.is_file():
            return jpg
        raise ConfigurationError(
            f"image for dicom_id {entry.dicom_id} not found at {path} (nor as .jpg); the image "
            "root must be the folder that holds the splits' path, for MIMIC-CXR-JPG its files/"
        )
