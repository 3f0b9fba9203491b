"""anaxreport.ingest: DICOM -> Radiograph, and the first input gate.

Every case writes a real DICOM file with pydicom into tmp_path and reads it back.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest
from _dicom_factory import gradient, make_dataset, write
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.uid import JPEG2000Lossless, RLELossless

from anaxreport.errors import (
    InputFileNotFoundError,
    InvalidInputError,
    NoPixelDataError,
    NotDicomError,
    UnsupportedStudyError,
)
from anaxreport.ingest import Radiograph, StudyIdentity, check_supported, read_radiograph


def _read(ds: Dataset, tmp_path: Path, name: str = "image.dcm") -> Radiograph:
    return read_radiograph(write(ds, tmp_path / name))


def _raises_one_line(cls: type[Exception], source: object, name: str) -> Exception:
    with pytest.raises(cls) as info:
        read_radiograph(source)  # type: ignore[arg-type]
    assert type(info.value) is cls
    message = str(info.value)
    assert "\n" not in message and name in message
    return info.value


# -- pixel pipeline ------------------------------------------------------------------------


def test_monochrome1_and_monochrome2_give_the_same_display_pixels(tmp_path: Path) -> None:
    stored = gradient(bits_stored=12)
    mono2 = _read(make_dataset(stored, photometric="MONOCHROME2"), tmp_path, "m2.dcm")
    mono1 = _read(
        make_dataset((4095 - stored).astype(np.uint16), photometric="MONOCHROME1"),
        tmp_path,
        "m1.dcm",
    )
    assert mono1.photometric_interpretation == "MONOCHROME1"
    np.testing.assert_allclose(mono1.pixels, mono2.pixels, atol=1e-6)
    # display space: 1 is white; the gradient's largest stored value is its bottom-right corner
    assert mono2.pixels[-1, -1] == pytest.approx(1.0) and mono2.pixels[0, 0] == pytest.approx(0.0)
    assert mono2.pixels.dtype == np.float32 and mono2.pixels.shape == stored.shape


def test_rescale_then_window_clips_outside_the_window(tmp_path: Path) -> None:
    stored = gradient(bits_stored=12)
    ds = make_dataset(
        stored, RescaleSlope=2, RescaleIntercept=-100, WindowCenter=2048, WindowWidth=1025
    )
    radiograph = _read(ds, tmp_path)
    value = 2.0 * stored - 100  # modality LUT, then the LINEAR window of PS3.3 C.11.2.1.2.1
    expected = np.clip((value - 2047.5) / 1024 + 0.5, 0.0, 1.0)
    np.testing.assert_allclose(radiograph.pixels, expected, atol=1e-5)
    assert (radiograph.pixels == 0).any() and (radiograph.pixels == 1).any()


def test_multi_valued_window_uses_the_first(tmp_path: Path) -> None:
    stored = gradient(bits_stored=12)
    single = _read(make_dataset(stored, WindowCenter=1000, WindowWidth=801), tmp_path, "a.dcm")
    multi = _read(
        make_dataset(stored, WindowCenter=[1000, 3000], WindowWidth=[801, 50]), tmp_path, "b.dcm"
    )
    np.testing.assert_array_equal(single.pixels, multi.pixels)


def test_voi_lut_sequence_is_applied_and_preferred_to_the_window(tmp_path: Path) -> None:
    stored = gradient(bits_stored=12)
    lut = np.round(np.sqrt(np.arange(4096) / 4095) * 65535).astype(np.uint16)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new("LUTData", "OW", lut.astype("<u2").tobytes())
    ds = make_dataset(stored, VOILUTSequence=[item], WindowCenter=100, WindowWidth=10)
    radiograph = _read(ds, tmp_path)
    np.testing.assert_allclose(radiograph.pixels, lut[stored] / 65535.0, atol=1e-6)


def test_malformed_window_falls_back_to_the_data_range(tmp_path: Path) -> None:
    stored = gradient(bits_stored=12)
    radiograph = _read(make_dataset(stored, WindowCenter=2048, WindowWidth=0), tmp_path)
    np.testing.assert_allclose(radiograph.pixels, stored / 4095.0, atol=1e-6)


@pytest.mark.parametrize(
    ("bits_stored", "signed"), [(10, False), (12, False), (16, False), (12, True), (16, True)]
)
def test_bit_depths_and_signed_data_span_zero_to_one(
    tmp_path: Path, bits_stored: int, signed: bool
) -> None:
    stored = gradient(bits_stored=bits_stored, signed=signed)
    radiograph = _read(make_dataset(stored, bits_stored=bits_stored), tmp_path)
    low, high = float(stored.min()), float(stored.max())
    np.testing.assert_allclose(radiograph.pixels, (stored - low) / (high - low), atol=1e-6)
    assert radiograph.bits_stored == bits_stored
    assert radiograph.header.PixelRepresentation == int(signed)


def test_non_square_image_keeps_rows_and_columns(tmp_path: Path) -> None:
    stored = np.tile(np.arange(130, dtype=np.uint16) * 30, (70, 1))  # brighter to the right
    radiograph = _read(make_dataset(stored), tmp_path)
    assert (radiograph.rows, radiograph.columns) == (70, 130)
    assert radiograph.pixels.shape == (70, 130)
    assert radiograph.pixels[35, 0] == 0.0 and radiograph.pixels[35, -1] == 1.0


def test_constant_image_is_zeros_and_pixels_are_read_only(tmp_path: Path) -> None:
    radiograph = _read(make_dataset(np.full((80, 80), 700, dtype=np.uint16)), tmp_path)
    assert not radiograph.pixels.any()
    assert not radiograph.pixels.flags.writeable
    with pytest.raises(ValueError):
        radiograph.pixels[0, 0] = 1.0


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        ({"PixelSpacing": [0.2, 0.3]}, (0.2, 0.3)),
        ({"PixelSpacing": [0, 0]}, None),
        ({"PixelSpacing": [-0.1, 0.1]}, None),
        ({"PixelSpacing": 0.2}, None),
        ({"PixelSpacing": None}, None),
        ({"PixelSpacing": None, "ImagerPixelSpacing": [0.15, 0.16]}, (0.15, 0.16)),
        ({"PixelSpacing": [0, 0], "ImagerPixelSpacing": [0.15, 0.16]}, (0.15, 0.16)),
    ],
)
def test_pixel_spacing(tmp_path: Path, attributes: dict, expected: object) -> None:
    assert _read(make_dataset(**attributes), tmp_path).pixel_spacing == expected


def test_malformed_pixel_spacing_is_none(tmp_path: Path) -> None:
    path = write(make_dataset(), tmp_path / "image.dcm")
    raw = path.read_bytes().replace(b"0.2\\0.2", b"abc\\0.2")  # same length, invalid DS
    path.write_bytes(raw)
    assert read_radiograph(path).pixel_spacing is None


# -- identity, header, Dataset input -------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")  # lower case, as sites send
def test_identity_and_scalars_are_copied(tmp_path: Path) -> None:
    ds = make_dataset(ViewPosition="ap", SeriesNumber=3, InstanceNumber=7)
    radiograph = _read(ds, tmp_path)
    assert radiograph.identity == StudyIdentity(
        patient_id="TEST-001",
        patient_name="Test^Patient",
        patient_birth_date="19600101",
        patient_sex="F",
        study_instance_uid=ds.StudyInstanceUID,
        series_instance_uid=ds.SeriesInstanceUID,
        sop_instance_uid=ds.SOPInstanceUID,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
        accession_number="ACC1",
        study_id="S1",
        study_date="20260101",
        study_time="120000",
        series_number="3",
        instance_number="7",
    )
    assert radiograph.view_position == "AP" and radiograph.modality == "CR"
    assert radiograph.source.endswith("image.dcm")


def test_absent_identity_fields_are_empty_strings(tmp_path: Path) -> None:
    ds = make_dataset(PatientName=None, AccessionNumber=None, StudyID="", ViewPosition=None)
    radiograph = _read(ds, tmp_path)
    assert radiograph.identity.patient_name == ""
    assert radiograph.identity.accession_number == "" and radiograph.identity.study_id == ""
    assert radiograph.view_position == ""


def test_header_has_no_pixel_data_but_keeps_the_modules(tmp_path: Path) -> None:
    ds = make_dataset()
    radiograph = _read(ds, tmp_path)
    header = radiograph.header
    assert "PixelData" not in header
    assert header.SOPInstanceUID == ds.SOPInstanceUID and header.PatientName == "Test^Patient"
    assert header.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID


def test_dataset_input_is_not_mutated_and_matches_the_file(tmp_path: Path) -> None:
    ds = make_dataset(RescaleSlope=1, RescaleIntercept=0, WindowCenter=2048, WindowWidth=4096)
    from_file = _read(ds, tmp_path)
    loaded = pydicom.dcmread(tmp_path / "image.dcm")
    before = copy.deepcopy(loaded)
    from_dataset = read_radiograph(loaded)
    assert loaded == before and loaded.file_meta == before.file_meta
    assert "PixelData" in loaded and "PixelData" not in from_dataset.header
    np.testing.assert_array_equal(from_dataset.pixels, from_file.pixels)
    in_memory = make_dataset()
    del in_memory.file_meta  # e.g. built by a program, never written
    radiograph = read_radiograph(in_memory)
    assert radiograph.source == "<dataset>" and radiograph.pixels.shape == (96, 80)
    assert not hasattr(in_memory, "file_meta")


def test_preamble_less_raw_data_set_is_read(tmp_path: Path) -> None:
    ds = make_dataset()
    del ds.file_meta
    path = tmp_path / "raw.dcm"
    ds.save_as(path, implicit_vr=True, little_endian=True)
    assert read_radiograph(path).pixels.shape == (96, 80)


def _compressed(syntax: str, tmp_path: Path) -> tuple[Radiograph, Radiograph]:
    stored = gradient(bits_stored=12)
    plain = _read(make_dataset(stored), tmp_path, "plain.dcm")
    ds = make_dataset(stored)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = plain.identity.sop_instance_uid
    try:
        ds.compress(syntax)
    except RuntimeError as exc:  # no encoder plugin installed here
        pytest.skip(f"cannot encode {syntax}: {exc}")
    return plain, _read(ds, tmp_path, "compressed.dcm")


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_lossless_compressed_file_decodes_to_the_same_pixels(tmp_path: Path, syntax: str) -> None:
    plain, compressed = _compressed(syntax, tmp_path)
    assert compressed.header.file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(compressed.pixels, plain.pixels)


# -- errors --------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    error = _raises_one_line(InputFileNotFoundError, tmp_path / "nope.dcm", "nope.dcm")
    assert isinstance(error, FileNotFoundError) and error.exit_code == 4


def test_directory(tmp_path: Path) -> None:
    folder = tmp_path / "study_dir"
    folder.mkdir()
    _raises_one_line(InputFileNotFoundError, folder, "study_dir")


def test_text_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("Patient is fine.\nNo findings.\n" * 20)
    error = _raises_one_line(NotDicomError, path, "notes.txt")
    assert error.exit_code == 5 and error.__cause__ is not None


def test_png_like_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "image.png"
    noise = np.random.default_rng(7).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + noise)
    _raises_one_line(NotDicomError, str(path), "image.png")


def test_empty_dicom_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.dcm"
    path.write_bytes(b"\x00" * 128 + b"DICM")
    error = _raises_one_line(NotDicomError, path, "empty.dcm")
    assert isinstance(error, InvalidInputError)


def test_no_pixel_data(tmp_path: Path) -> None:
    path = write(make_dataset(PixelData=None), tmp_path / "nopixels.dcm")
    assert _raises_one_line(NoPixelDataError, path, "nopixels.dcm").exit_code == 6


def test_pixel_data_shorter_than_the_header_says(tmp_path: Path) -> None:
    ds = make_dataset()
    ds.PixelData = ds.PixelData[:-1000]
    path = write(ds, tmp_path / "short.dcm")
    assert "Pixel Data" in str(_raises_one_line(InvalidInputError, path, "short.dcm"))


def test_truncated_file(tmp_path: Path) -> None:
    path = write(make_dataset(), tmp_path / "cut.dcm")
    path.write_bytes(path.read_bytes()[:-2001])
    assert _raises_one_line(InvalidInputError, path, "cut.dcm").__cause__ is not None


def test_truncated_compressed_pixel_data(tmp_path: Path) -> None:
    ds = make_dataset()
    ds.compress(RLELossless)
    path = write(ds, tmp_path / "rle.dcm")
    data = path.read_bytes()
    start = data.index(b"\xfe\xff\x00\xe0", data.index(b"\xe0\x7f\x10\x00"))
    corrupt = data[: start + 200] + b"\x00" * (len(data) - start - 208) + data[-8:]
    path.write_bytes(corrupt)
    _raises_one_line(InvalidInputError, path, "rle.dcm")


def test_unknown_transfer_syntax(tmp_path: Path) -> None:
    ds = make_dataset()
    ds.compress(RLELossless)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder
    path = write(ds, tmp_path / "mpeg.dcm")
    assert "MPEG2" in str(_raises_one_line(InvalidInputError, path, "mpeg.dcm"))


# -- radiograph validation -----------------------------------------------------------------


def test_radiograph_validates_its_pixels(tmp_path: Path) -> None:
    good = _read(make_dataset(), tmp_path)
    fields = {k: getattr(good, k) for k in good.__dataclass_fields__}
    with pytest.raises(TypeError):
        Radiograph(**{**fields, "pixels": np.zeros((96, 80))})  # float64
    with pytest.raises(ValueError):
        Radiograph(**{**fields, "pixels": np.zeros((80, 96), np.float32)})
    with pytest.raises(ValueError):
        Radiograph(**{**fields, "pixels": np.full((96, 80), 2.0, np.float32)})
    with pytest.raises(ValueError):
        Radiograph(**{**fields, "pixel_spacing": (0.0, 0.2)})
    with pytest.raises(ValueError):
        Radiograph(**{**fields, "header": make_dataset()})  # still has Pixel Data
    with pytest.raises(TypeError):
        StudyIdentity(patient_id=None)  # type: ignore[arg-type]


# -- the gate ------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")  # lower case, as sites send
@pytest.mark.parametrize("view", ["PA", "AP", "", None, "pa"])
def test_gate_passes_frontal_views(tmp_path: Path, view: str | None) -> None:
    check_supported(_read(make_dataset(ViewPosition=view), tmp_path))


@pytest.mark.parametrize("modality", ["CR", "DX", "SC", "OT"])
def test_gate_passes_radiography_and_secondary_capture(tmp_path: Path, modality: str) -> None:
    check_supported(_read(make_dataset(Modality=modality), tmp_path))


def _gate_refuses(radiograph: Radiograph, *words: str) -> None:
    with pytest.raises(UnsupportedStudyError) as info:
        check_supported(radiograph)
    message = str(info.value)
    assert "\n" not in message and "image.dcm" in message and info.value.exit_code == 7
    assert all(word in message for word in words), message


@pytest.mark.parametrize("view", ["LL", "RL", "LATERAL", "LAT", "XTABLE LATERAL"])
def test_gate_refuses_lateral_views(tmp_path: Path, view: str) -> None:
    _gate_refuses(_read(make_dataset(ViewPosition=view), tmp_path), "lateral", view, "PA")


def test_gate_refuses_unknown_views(tmp_path: Path) -> None:
    _gate_refuses(_read(make_dataset(ViewPosition="RLO"), tmp_path), "RLO", "frontal")


@pytest.mark.parametrize("modality", ["MR", "CT", "MG", "US"])
def test_gate_refuses_other_modalities(tmp_path: Path, modality: str) -> None:
    _gate_refuses(_read(make_dataset(Modality=modality), tmp_path), modality, "CR")


@pytest.mark.parametrize("shape", [(32, 32), (96, 40)])
def test_gate_refuses_tiny_images(tmp_path: Path, shape: tuple[int, int]) -> None:
    stored = gradient(*shape)
    _gate_refuses(_read(make_dataset(stored), tmp_path), f"{shape[0]}x{shape[1]}", "64")


def test_colour_image_is_refused_before_decoding(tmp_path: Path) -> None:
    rgb = np.zeros((96, 80, 3), dtype=np.uint8)
    path = write(make_dataset(rgb), tmp_path / "colour.dcm")
    error = _raises_one_line(UnsupportedStudyError, path, "colour.dcm")
    assert "RGB" in str(error) and "MONOCHROME2" in str(error)


def test_multi_frame_image_is_refused(tmp_path: Path) -> None:
    frames = np.stack([gradient()] * 3)
    path = write(make_dataset(frames), tmp_path / "frames.dcm")
    assert "3 frames" in str(_raises_one_line(UnsupportedStudyError, path, "frames.dcm"))


def test_absurdly_large_image_is_refused_before_decoding(tmp_path: Path) -> None:
    ds = make_dataset(Rows=9000)  # pixel data too short, too: refused before decoding
    path = write(ds, tmp_path / "huge.dcm")
    assert "9000x80" in str(_raises_one_line(UnsupportedStudyError, path, "huge.dcm"))


def test_missing_decoder_plugin_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = make_dataset()
    ds.compress(RLELossless)
    path = write(ds, tmp_path / "rle.dcm")
    decoder = get_decoder(RLELossless)
    if not hasattr(decoder, "_available"):  # pydicom internals changed; nothing to simulate
        pytest.skip("cannot simulate a missing plugin with this pydicom")
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", {"pylibjpeg": ("pylibjpeg-rle",)})
    error = _raises_one_line(InvalidInputError, path, "rle.dcm")
    assert "pylibjpeg-rle" in str(error) and error.__cause__ is not None
