"""The Chest ImaGenome reader on a hand-written fixture shaped like the real silver_dataset."""

from __future__ import annotations

import csv
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest

from anaxreport.data.imagenome import (
    ImaGenomeDataset,
    read_scene_graph,
    read_split,
    scene_graph_labels,
)
from anaxreport.errors import ConfigurationError
from anaxreport.vocab import FINDINGS, REGIONS, finding, region

DICOM_A = "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014"
DICOM_B = "174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962"
DICOM_C = "2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab"


def _obj(dicom_id: str, name: str, box: tuple[float, ...]) -> dict:
    x1, y1, x2, y2 = box
    return {
        "object_id": f"{dicom_id}_{name}",
        "x1": 10,
        "y1": 10,
        "x2": 50,
        "y2": 50,
        "width": 40,
        "height": 40,
        "bbox_name": name,
        "synsets": ["C0024109"],
        "name": name.capitalize(),
        "original_x1": x1,
        "original_y1": y1,
        "original_x2": x2,
        "original_y2": y2,
        # the box's own size, as in Chest ImaGenome (original_x2 - original_x1), not the image's
        "original_width": box[2] - box[0],
        "original_height": box[3] - box[1],
    }


def _attr(dicom_id: str, name: str, phrases: list[str], attributes: list[list[str]]) -> dict:
    return {
        "name": name.capitalize(),
        "bbox_name": name,
        "synsets": [],
        "phrases": phrases,
        "attributes": attributes,
        "object_id": f"{dicom_id}_{name}",
        "phrase_IDs": [f"x|{i}" for i in range(len(phrases))],
        "sections": ["finalreport"] * len(phrases),
        "comparison_cues": [[]] * len(phrases),
        "temporal_cues": [[]] * len(phrases),
        "severity_cues": [[]] * len(phrases),
        "texture_cues": [[]] * len(phrases),
    }


def _graph_a() -> dict:
    d = DICOM_A
    return {
        "image_id": d,
        "viewpoint": "PA",
        "patient_id": 10000032,
        "study_id": 50414267,
        "gender": "F",
        "age_decile": "50-60",
        "reason_for_exam": "___F with shortness of breath",
        "objects": [
            _obj(d, "right lung", (-25, 300, 1200, 2400)),  # negative x1: clipped to 0
            _obj(d, "left lung", (1300, 310, 2700, 3100)),  # beyond the image: clipped
            _obj(d, "trachea", (1200, 100, 1200, 600)),  # zero width: drop
            _obj(d, "right clavicle", (100, 100, 900, 300)),  # not one of the 18: ignore
            _obj(d, "cardiac silhouette", (900, 1200, 2000, 2200)),  # y1 beyond its own height
            _obj(d, "mediastinum", (float("nan"), 1, 2, 3)),  # non-finite: drop
        ],
        "attributes": [
            _attr(
                d,
                "left lung",
                ["Small left pleural effusion.", "No large pleural effusion."],
                [
                    ["anatomicalfinding|yes|pleural effusion"],
                    ["anatomicalfinding|no|pleural effusion"],
                ],
            ),
            _attr(
                d,
                "right lung",
                ["No pneumothorax.", "Right basilar atelectasis."],
                [
                    ["anatomicalfinding|no|pneumothorax"],
                    [
                        "anatomicalfinding|yes|atelectasis",
                        "anatomicalfinding|yes|lung opacity",
                        "nlp|yes|abnormal",
                    ],
                ],
            ),
            _attr(
                d,
                "cardiac silhouette",
                ["Heart failure.", "Stable cardiomegaly."],
                [
                    ["disease|yes|fluid overload/heart failure"],
                    ["anatomicalfinding|yes|enlarged cardiac silhouette"],
                ],
            ),
            _attr(d, "right clavicle", ["Old fracture."], [["anatomicalfinding|yes|fracture"]]),
        ],
        "relationships": [],
    }


def _graph(dicom_id: str, subject: int, study: int) -> dict:
    return {
        "image_id": dicom_id,
        "patient_id": subject,
        "study_id": study,
        "objects": [_obj(dicom_id, "right lung", (10, 20, 300, 400))],
        "attributes": [
            _attr(
                dicom_id, "right lung", ["Right lower lobe pneumonia."], [["disease|yes|pneumonia"]]
            )
        ],
        "relationships": [],
    }


def _write_split(path: Path, rows: list[tuple[str, str, str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["", "subject_id", "study_id", "dicom_id", "path", "ViewPosition"])
        for i, (subject, study, dicom_id, view) in enumerate(rows):
            rel = f"files/p{subject[:2]}/p{subject}/s{study}/{dicom_id}.dcm"
            w.writerow([i, subject, study, dicom_id, rel, view])


@pytest.fixture()
def silver(tmp_path: Path) -> Path:
    """A silver_dataset with a zipped scene_graph folder, splits and images_to_avoid.csv."""
    root = tmp_path / "silver_dataset"
    graphs = {
        DICOM_A: _graph_a(),
        DICOM_B: _graph(DICOM_B, 10000033, 50000001),
        DICOM_C: _graph(DICOM_C, 10000034, 50000002),
    }
    root.mkdir()
    with zipfile.ZipFile(root / "scene_graph.zip", "w") as zf:
        for dicom_id, graph in graphs.items():
            zf.writestr(f"scene_graph/{dicom_id}_SceneGraph.json", json.dumps(graph))
    _write_split(
        root / "splits" / "train.csv",
        [
            ("10000032", "50414267", DICOM_A, "PA"),
            ("10000033", "50000001", DICOM_B, "AP"),
            ("10000034", "50000002", DICOM_C, "PA"),
        ],
    )
    _write_split(root / "splits" / "test.csv", [("10000033", "50000001", DICOM_B, "AP")])
    with (root / "splits" / "images_to_avoid.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([["", "dicom_id"], [0, DICOM_C]])
    return root


def test_scene_graph_boxes_are_read_whole_then_clipped_to_the_image() -> None:
    """original_width/height are each box's own size (Chest ImaGenome): clipping a box to them
    lost every region lying further right or lower than it is wide or tall. Boxes are clipped
    to the image, whose size the file does not give (SceneGraph.clipped, from the loader)."""
    sg = read_scene_graph(_graph_a())
    assert sg.image_id == DICOM_A and sg.patient_id == "10000032" and sg.study_id == "50414267"
    boxes = dict(zip((r.name for r in REGIONS), sg.boxes, strict=True))
    assert boxes["right lung"].as_tuple() == (-25.0, 300.0, 1200.0, 2400.0)
    assert boxes["left lung"].as_tuple() == (1300.0, 310.0, 2700.0, 3100.0)
    assert boxes["cardiac silhouette"].as_tuple() == (900.0, 1200.0, 2000.0, 2200.0)
    assert boxes["trachea"] is None and boxes["mediastinum"] is None
    clipped = dict(zip((r.name for r in REGIONS), sg.clipped(2544, 3056).boxes, strict=True))
    assert clipped["right lung"].as_tuple() == (0.0, 300.0, 1200.0, 2400.0)
    assert clipped["left lung"].as_tuple() == (1300.0, 310.0, 2544.0, 3056.0)
    assert clipped["cardiac silhouette"] == boxes["cardiac silhouette"]
    assert sg.clipped(800, 3056).boxes[region("left lung").index] is None  # wholly outside
    arr = sg.boxes_array()
    assert arr.shape == (18, 4) and arr.dtype == np.float32
    assert np.isnan(arr[region("trachea").index]).all()
    assert sg.found.sum() == 3


def test_labels_any_yes_wins_and_unknown_names_are_ignored() -> None:
    labels = read_scene_graph(_graph_a()).labels_array()
    assert labels.shape == (18, 9) and labels.dtype == np.float32
    ll, rl, cs = region("left lung").index, region("right lung").index, region("CS").index
    assert labels[ll, finding("pleural effusion").index] == 1.0  # a later "no" keeps the yes
    assert labels[rl, finding("pneumothorax").index] == 0.0
    assert labels[rl, finding("atelectasis").index] == 1.0
    assert labels[rl, finding("lung opacity").index] == 1.0
    assert labels[cs, finding("fluid overload/heart failure").index] == 1.0
    assert labels[cs, finding("enlarged cardiac silhouette").index] == 1.0
    assert labels.sum() == 5


def test_labels_from_attribute_list_directly() -> None:
    attrs = [{"bbox_name": "trachea", "attributes": [[f.attribute for f in FINDINGS]]}]
    labels = scene_graph_labels(attrs)
    assert labels[region("trachea").index].all() and labels.sum() == len(FINDINGS)


def test_read_scene_graph_from_path_and_errors(tmp_path: Path) -> None:
    path = tmp_path / f"{DICOM_A}_SceneGraph.json"
    path.write_text(json.dumps(_graph_a()))
    assert read_scene_graph(path) == read_scene_graph(str(path))
    with pytest.raises(ConfigurationError, match="does not exist"):
        read_scene_graph(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigurationError, match="not valid JSON"):
        read_scene_graph(bad)


def test_read_split(silver: Path) -> None:
    rows = read_split(silver / "splits" / "train.csv")
    assert [r.dicom_id for r in rows] == [DICOM_A, DICOM_B, DICOM_C]
    assert rows[1].subject_id == "10000033" and rows[1].view_position == "AP"
    assert rows[0].path == f"files/p10/p10000032/s50414267/{DICOM_A}.dcm"
    with pytest.raises(ConfigurationError):
        read_split(silver / "splits" / "nope.csv")


def test_dataset_reads_zip_and_excludes_images_to_avoid(silver: Path) -> None:
    train = ImaGenomeDataset(silver, "train")
    assert len(train) == 2  # DICOM_C is a gold-standard image
    entry, graph = train[0]
    assert entry.dicom_id == DICOM_A == graph.image_id
    assert graph.labels_array()[region("left lung").index, finding("L2").index] == 1.0
    test = ImaGenomeDataset(silver, "test")  # images_to_avoid applies to training only
    assert len(test) == 1
    explicit = ImaGenomeDataset(
        silver, "test", exclude_csv=silver / "splits" / "images_to_avoid.csv"
    )
    assert len(explicit) == 1
    assert math.isclose(test[0][1].boxes[0].x2, 300.0)


def test_dataset_folder_layout_and_jpg_fallback(silver: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(silver / "scene_graph.zip") as zf:
        zf.extractall(silver)
    (silver / "scene_graph.zip").unlink()
    images = tmp_path / "mimic-cxr-jpg"
    train = ImaGenomeDataset(silver, "train", image_root=images.parent)
    with pytest.raises(ConfigurationError, match="not found"):
        train.image_path(0)
    jpg = tmp_path / train.entries[0].path.replace(".dcm", ".jpg")
    jpg.parent.mkdir(parents=True)
    jpg.write_bytes(b"\xff\xd8")
    assert train.image_path(0) == jpg
    dcm = jpg.with_suffix(".dcm")
    dcm.write_bytes(b"DICM")
    assert train.image_path(0) == dcm  # the DICOM wins when both exist


def test_dataset_configuration_errors(tmp_path: Path, silver: Path) -> None:
    with pytest.raises(ConfigurationError, match="split"):
        ImaGenomeDataset(silver, "training")
    with pytest.raises(ConfigurationError, match="not a folder"):
        ImaGenomeDataset(tmp_path / "absent", "train")
    empty = tmp_path / "empty"
    (empty / "splits").mkdir(parents=True)
    with pytest.raises(ConfigurationError, match="scene_graph"):
        ImaGenomeDataset(empty, "train")
