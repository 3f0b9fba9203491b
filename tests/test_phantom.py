"""Phantoms: valid DICOM, ground truth that matches the image, findings where labels say."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from anaxreport.data.imagenome import ImaGenomeDataset, read_scene_graph
from anaxreport.data.phantom import SAMPLES, generate_phantoms, render_phantom
from anaxreport.geometry import BoundingBox
from anaxreport.vocab import REGIONS, finding, region

SAMPLES_DIR = Path(__file__).resolve().parents[1] / "samples"
CS = region("cardiac silhouette").index
ENLARGED = finding("enlarged cardiac silhouette").index


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("phantoms")
    return out, generate_phantoms(out, 10, seed=7)


def _mean(pixels: np.ndarray, box: BoundingBox | None) -> float:
    assert box is not None
    x1, y1, x2, y2 = (round(v) for v in box.as_tuple())
    return float(pixels[y1:y2, x1:x2].mean())


def _display(ds: pydicom.Dataset) -> np.ndarray:
    values = ds.pixel_array.astype(np.float64)
    return values.max() - values if ds.PhotometricInterpretation == "MONOCHROME1" else values


def test_generated_files_pass_dciodvfy(generated, dciodvfy) -> None:
    out, _ = generated
    files = sorted(out.glob("files/p*/p*/s*/*.dcm"))
    assert len(files) == 10
    for path in files:
        assert dciodvfy(path) == [], path


def test_splits_are_disjoint_by_patient_and_cover_all_studies(generated) -> None:
    out, summary = generated
    subjects, dicoms = {}, []
    for split in ("train", "valid", "test"):
        with (out / "splits" / f"{split}.csv").open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert list(rows[0]) == ["", "subject_id", "study_id", "dicom_id", "path", "ViewPosition"]
        subjects[split] = {r["subject_id"] for r in rows}
        dicoms += [r["dicom_id"] for r in rows]
        assert summary.counts[split] == len(rows)
    assert not subjects["train"] & subjects["valid"]
    assert not subjects["train"] & subjects["test"]
    assert not subjects["valid"] & subjects["test"]
    assert sorted(dicoms) == sorted(
        p.name[: -len("_SceneGraph.json")] for p in (out / "scene_graph").iterdir()
    )
    assert len(set(dicoms)) == 10 == sum(summary.counts.values())
    assert summary.counts["train"] >= summary.counts["test"] >= 1


def test_dicom_scene_graph_round_trip(generated) -> None:
    out, _ = generated
    for split in ("train", "valid", "test"):
        data = ImaGenomeDataset(out, split)
        for i in range(len(data)):
            entry, graph = data[i]
            ds = pydicom.dcmread(data.image_path(i))
            raw = json.loads(
                (out / "scene_graph" / f"{entry.dicom_id}_SceneGraph.json").read_text()
            )
            for obj in raw["objects"]:  # each box's own size, as in Chest ImaGenome
                assert obj["original_width"] == obj["original_x2"] - obj["original_x1"]
                assert obj["original_height"] == obj["original_y2"] - obj["original_y1"]
            assert ds.ViewPosition == entry.view_position == raw["viewpoint"]
            assert str(ds.PatientID) == entry.subject_id == graph.patient_id
            assert ds.Manufacturer == "anaxreport phantom" and ds.BodyPartExamined == "CHEST"
            assert int(ds.pixel_array.max()) < 2 ** int(ds.BitsStored)
            assert ds.HighBit == ds.BitsStored - 1 and ds.BitsAllocated == 16
            assert all(b is not None for b in graph.boxes)
            for box in graph.boxes:
                assert 0 <= box.x1 < box.x2 <= ds.Columns and 0 <= box.y1 < box.y2 <= ds.Rows
            _check_224(raw, ds.Columns, ds.Rows)
            labels = graph.labels_array()
            for name in ("mediastinum", "upper mediastinum", "trachea"):
                assert labels[region(name).index].sum() == 0
            allowed = {ENLARGED, finding("fluid overload/heart failure").index}
            assert set(np.flatnonzero(labels[CS])) <= allowed


def _check_224(raw: dict, w: int, h: int) -> None:
    """x1..y2 are the original box on the 224 image (of a ``w`` × ``h`` film): longest side
    scaled, padded evenly."""
    for obj in raw["objects"]:
        s = 224 / max(w, h)
        px, py = (224 - round(w * s)) // 2, (224 - round(h * s)) // 2
        assert abs(obj["x1"] - (obj["original_x1"] * s + px)) <= 1
        assert abs(obj["y2"] - (obj["original_y2"] * s + py)) <= 1
        assert obj["width"] == obj["x2"] - obj["x1"]
        assert obj["object_id"] == f"{raw['image_id']}_{obj['bbox_name']}"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_boxes_cover_the_anatomy(seed: int) -> None:
    ph = render_phantom(np.random.default_rng(seed), findings=(), size=(520, 500))
    px = ph.pixels
    box = dict(zip((r.name for r in REGIONS), ph.boxes, strict=True))
    med = _mean(px, box["mediastinum"])
    for lung in ("right lung", "left lung"):
        assert _mean(px, box[lung]) < med - 0.05
    # The patient's right lung is on the image left.
    assert box["right lung"].x1 < box["left lung"].x1
    assert box["right lung"].iou(box["left lung"]) < 0.05
    # The trachea is a lucent column: darker than the mediastinum beside it.
    t = box["trachea"]
    y1, y2 = int(max(t.y1, box["upper mediastinum"].y1)), int(t.y2)
    x1, x2 = int(t.x1), int(t.x2)
    w = max((x2 - x1) // 2, 2)
    beside = np.concatenate([px[y1:y2, x1 - w : x1], px[y1:y2, x2 : x2 + w]], axis=1)
    assert float(px[y1:y2, x1:x2].mean()) < float(beside.mean())
    # Zones stack inside their lung; the costophrenic angle sits at its lateral-inferior corner.
    for side in ("right", "left"):
        lung = box[f"{side} lung"]
        upper, lower = box[f"{side} upper lung zone"], box[f"{side} lower lung zone"]
        assert upper.y1 <= box[f"{side} mid lung zone"].y1 <= lower.y1
        corner = box[f"{side} costophrenic angle"]
        assert corner.y2 >= lung.y2 - 3 and corner.area < 0.1 * lung.area
        assert lung.iou(BoundingBox(*lung.as_tuple())) == 1.0


def test_effusion_brightens_the_costophrenic_angle() -> None:
    kwargs = {"view": "PA", "size": (540, 540), "modality": "CR"}
    normal = render_phantom(np.random.default_rng(11), findings=(), **kwargs)
    sick = render_phantom(
        np.random.default_rng(11), findings=["pleural effusion"], side="right", **kwargs
    )
    rca = region("right costophrenic angle").index
    assert normal.boxes[rca] == sick.boxes[rca]
    assert _mean(sick.pixels, sick.boxes[rca]) > _mean(normal.pixels, normal.boxes[rca]) + 0.1
    eff = finding("pleural effusion").index
    assert sick.labels_array()[rca, eff] == 1.0
    assert sick.labels_array()[region("right lung").index, eff] == 1.0
    assert sick.labels_array()[region("left lung").index, eff] == 0.0
    assert normal.labels_array().sum() == 0
    # The left side was not touched.
    lca = region("left costophrenic angle").index
    assert abs(_mean(sick.pixels, sick.boxes[lca]) - _mean(normal.pixels, normal.boxes[lca])) < 0.05


def test_cardiothoracic_ratio_decides_enlarged_cardiac_silhouette() -> None:
    seen = set()
    for seed in range(8):
        forced = ["enlarged cardiac silhouette"] if seed % 3 == 0 else None
        ph = render_phantom(np.random.default_rng(100 + seed), findings=forced, size=(440, 440))
        enlarged = bool(ph.labels[CS][ENLARGED])
        assert enlarged == (ph.ctr > 0.5), (seed, ph.ctr)
        seen.add(enlarged)
        # The boxes agree with the measurement to within the small rotation.
        box = dict(zip((r.name for r in REGIONS), ph.boxes, strict=True))
        thorax = box["left lung"].x2 - box["right lung"].x1
        assert abs(box["cardiac silhouette"].width / thorax - ph.ctr) < 0.06
    assert seen == {True, False}


def test_pneumothorax_and_labels_follow_the_side() -> None:
    ph = render_phantom(
        np.random.default_rng(4), findings=["pneumothorax"], side="left", size=(500, 500)
    )
    labels = ph.labels_array()
    ptx = finding("pneumothorax").index
    assert labels[region("left lung").index, ptx] == 1.0
    assert labels[region("left apical zone").index, ptx] == 1.0
    assert labels[region("right lung").index, ptx] == 0.0
    # "No tension pneumothorax" style negations never remove the positive label.
    assert read_scene_graph(ph.scene_graph).labels == ph.labels


def test_same_seed_same_study() -> None:
    a = render_phantom(np.random.default_rng(5), size=(450, 470))
    b = render_phantom(np.random.default_rng(5), size=(450, 470))
    assert np.array_equal(a.pixels, b.pixels)
    assert a.boxes == b.boxes and a.labels == b.labels and a.scene_graph == b.scene_graph
    assert a.dataset.PixelData == b.dataset.PixelData
    assert a.dataset.SOPInstanceUID == b.dataset.SOPInstanceUID
    c = render_phantom(np.random.default_rng(6), size=(450, 470))
    assert c.dataset.SOPInstanceUID != a.dataset.SOPInstanceUID
    assert len(a.identity.dicom_id.split("-")) == 5


def test_monochrome1_stores_inverted_values(tmp_path: Path, dciodvfy) -> None:
    kwargs = {"size": (460, 480), "modality": "DX", "bits_stored": 12, "findings": ()}
    m1 = render_phantom(np.random.default_rng(9), photometric="MONOCHROME1", **kwargs)
    m2 = render_phantom(np.random.default_rng(9), photometric="MONOCHROME2", **kwargs)
    v1 = m1.dataset.pixel_array.astype(np.int64)
    v2 = m2.dataset.pixel_array.astype(np.int64)
    assert np.array_equal(v1 + v2, np.full_like(v1, 4095))
    lung, med = region("right lung").index, region("mediastinum").index
    assert _mean(v1, m1.boxes[lung]) > _mean(v1, m1.boxes[med])  # air is bright when stored
    assert m1.dataset.PresentationLUTShape == "INVERSE"
    path = tmp_path / "m1.dcm"
    m1.dataset.save_as(path, enforce_file_format=True)
    assert dciodvfy(path) == []


def test_variation_in_storage_and_geometry(generated) -> None:
    out, _ = generated
    seen = {"modality": set(), "photometric": set(), "bits": set(), "view": set()}
    for path in out.glob("files/p*/p*/s*/*.dcm"):
        ds = pydicom.dcmread(path)
        seen["modality"].add(ds.Modality)
        seen["photometric"].add(ds.PhotometricInterpretation)
        seen["bits"].add(int(ds.BitsStored))
        seen["view"].add(ds.ViewPosition)
        assert 400 <= ds.Rows <= 1000 and 400 <= ds.Columns <= 1000
        mm = float(ds.ImagerPixelSpacing[1]) * ds.Columns
        assert 250 < mm < 1000
    assert seen["modality"] == {"CR", "DX"} and len(seen["bits"]) >= 2
    assert seen["photometric"] == {"MONOCHROME1", "MONOCHROME2"}


@pytest.mark.skipif(not SAMPLES_DIR.joinpath("pa_normal.dcm").exists(), reason="no samples")
def test_shipped_samples_are_valid(dciodvfy) -> None:
    for name in SAMPLES:
        path = SAMPLES_DIR / f"{name}.dcm"
        assert dciodvfy(path) == [], path
        ds = pydicom.dcmread(path)
        graph = read_scene_graph(SAMPLES_DIR / f"{name}_SceneGraph.json")
        assert graph.image_id and all(b is not None for b in graph.boxes)
        assert max(b.x2 for b in graph.boxes) <= ds.Columns
        assert path.stat().st_size <= 700_000
        _display(ds)


@pytest.mark.slow
def test_worker_count_does_not_change_output(tmp_path: Path) -> None:
    generate_phantoms(tmp_path / "a", 4, seed=3, workers=1)
    generate_phantoms(tmp_path / "b", 4, seed=3, workers=2)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.*"))
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.*"))
    assert files_a == files_b
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()


def test_the_loader_clips_truth_boxes_to_the_image_it_reads(generated, tmp_path) -> None:
    """Chest ImaGenome's boxes can reach outside the film; the loader cuts them to the image
    it decodes (the scene graph does not give the image's size)."""
    import shutil

    from anaxreport.data.loader import load_split

    out = tmp_path / "data"
    shutil.copytree(generated[0], out)
    data = ImaGenomeDataset(out, "test")
    entry, _ = data[0]
    path = out / "scene_graph" / f"{entry.dicom_id}_SceneGraph.json"
    raw = json.loads(path.read_text())
    lung = next(o for o in raw["objects"] if o["bbox_name"] == "right lung")
    lung["original_x1"], lung["original_x2"] = -50, 10**5
    path.write_text(json.dumps(raw))
    (sample,) = load_split(ImaGenomeDataset(out, "test"), 64, limit=1)
    columns = pydicom.dcmread(data.image_path(0)).Columns
    box = sample.boxes[region("right lung").index]
    assert (box[0], box[2]) == (0.0, columns) and box[1] == lung["original_y1"]
