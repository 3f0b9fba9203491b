"""anaxreport.ingest: DICOM -> Radiograph, and the first input gate.

Every case writes a real DICOM file with pydicom into tmp_path and reads it back.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pydicom
import pytest
from _dicom_factory import gradient, make_dataset, write
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.uid import ImplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from anaxreport.errors import (
    AnaxReportError,
    InputFileNotFoundError,
    InvalidInputError,
    NoPixelDataError,
    NotDicomError,
    UnsupportedStudyError,
)
from anaxreport.ingest import Radiograph, StudyIdentity, read_radiograph


def _read(ds: Dataset, tmp_path: Path, name: str = "image.dcm") -> Radiograph:
    return read_radiograph(write(ds, tmp_path / name))


def _raises_one_line(
    cls: type[AnaxReportError], source: object, name: str, reason: str
) -> AnaxReportError:
    """Reading ``source`` raises exactly ``cls`` with ``reason`` and a one-line message."""
    with pytest.raises(cls) as info:
        read_radiograph(source)  # type: ignore[arg-type]
    assert type(info.value) is cls
    message = str(info.value)
    assert "\n" not in message and name in message
    assert info.value.reason == reason, message
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


@pytest.mark.parametrize("function", ["LINEAR_EXACT", "SIGMOID"])
def test_voi_lut_function_is_applied(tmp_path: Path, function: str) -> None:
    stored = gradient(bits_stored=12)
    ds = make_dataset(stored, WindowCenter=2000, WindowWidth=1000, VOILUTFunction=function)
    radiograph = _read(ds, tmp_path)
    x = stored.astype(np.float64)
    if function == "LINEAR_EXACT":  # PS3.3 C.11.2.1.3.2
        expected = np.clip((x - 2000) / 1000 + 0.5, 0.0, 1.0)
    else:  # C.11.2.1.3.1, scaled to its full output range
        expected = 1.0 / (1.0 + np.exp(-4.0 * (x - 2000) / 1000))
    np.testing.assert_allclose(radiograph.pixels, expected, atol=1e-5)


def test_modality_lut_sequence_is_applied(tmp_path: Path) -> None:
    stored = gradient(bits_stored=12)
    lut = (np.arange(4096) // 2).astype(np.uint16)  # a step LUT: values halve
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.ModalityLUTType = "US"
    item.add_new("LUTData", "OW", lut.astype("<u2").tobytes())
    radiograph = _read(make_dataset(stored, ModalityLUTSequence=[item]), tmp_path)
    halved = stored // 2
    np.testing.assert_allclose(radiograph.pixels, halved / halved.max(), atol=1e-6)


@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")
def test_non_finite_rescale_is_a_bad_header(tmp_path: Path) -> None:
    path = write(make_dataset(RescaleSlope="1.0", RescaleIntercept="0.0"), tmp_path / "nan.dcm")
    path.write_bytes(path.read_bytes().replace(b"1.0 ", b"nan "))  # same length, invalid DS
    _raises_one_line(InvalidInputError, path, "nan.dcm", "bad-header")


@pytest.mark.parametrize(
    ("slope", "intercept", "stored", "finite"),
    [("1e35", "0", [0, 4095], False), ("-1e35", "0", [0, 4095], False),  # overflow at an end
     ("1e30", "0", [0, 0], True), ("1e-30", "-3.4e38", [0, 4095], True),
     ("1", "3.4e38", [0, 4095], True), ("1e35", "3.4e38", [4095, 0], False)],
)  # fmt: skip
def test_a_rescale_that_overflows_float32_is_a_bad_header(
    tmp_path: Path, slope: str, intercept: str, stored: list[int], finite: bool
) -> None:
    """Decided from the two extreme stored values, as a pass over every value would."""
    pixels = np.resize(np.array(stored, dtype=np.uint16), (8, 8))
    ds = make_dataset(pixels, RescaleSlope=slope, RescaleIntercept=intercept)
    path = write(ds, tmp_path / "overflow.dcm")
    with np.errstate(over="ignore"):
        expected = np.isfinite(
            pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)
        )
    assert expected.all() == finite
    if finite:
        assert read_radiograph(path).pixels.shape == (8, 8)
    else:
        _raises_one_line(InvalidInputError, path, "overflow.dcm", "bad-header")


@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")
def test_non_finite_window_falls_back_to_the_data_range(tmp_path: Path) -> None:
    stored = gradient(bits_stored=12)
    ds = make_dataset(stored, WindowCenter="2048", WindowWidth="4321.5")
    path = write(ds, tmp_path / "w.dcm")
    path.write_bytes(path.read_bytes().replace(b"4321.5", b"nan   "))
    np.testing.assert_allclose(read_radiograph(path).pixels, stored / 4095.0, atol=1e-6)


def test_secondary_capture_chest_image(tmp_path: Path) -> None:
    """A digitised film: SC Image Storage, Modality OT, 8 bits, no pixel spacing at all."""
    stored = (gradient(200, 160, bits_stored=8) // 1).astype(np.uint8)
    ds = make_dataset(
        stored, bits_stored=8, Modality="OT", PixelSpacing=None, ViewPosition=None,
        SOPClassUID="1.2.840.10008.5.1.4.1.1.7", ConversionType="DF",
    )  # fmt: skip
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    radiograph = _read(ds, tmp_path)
    assert radiograph.modality == "OT" and radiograph.bits_stored == 8
    assert radiograph.pixel_spacing is None and radiograph.pixels.shape == (200, 160)
    np.testing.assert_allclose(radiograph.pixels, stored / 255.0, atol=1e-6)


def test_single_frame_of_a_multi_frame_class_is_read(tmp_path: Path) -> None:
    """Multi-frame Grayscale Word SC with Number of Frames 1 is one image."""
    ds = make_dataset(NumberOfFrames=1, SOPClassUID="1.2.840.10008.5.1.4.1.1.7.3")
    assert _read(ds, tmp_path).pixels.shape == (96, 80)


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


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("syntax", ["native", RLELossless])
def test_bits_above_bits_stored_are_ignored(tmp_path: Path, signed: bool, syntax: str) -> None:
    """PS3.5 8.1.1: what the unused high bits hold means nothing (pydicom shifts them out; we
    shift only where they are set)."""
    clean = gradient(64, 48, bits_stored=12, signed=signed)
    noise = np.random.default_rng(7).integers(0, 16, clean.shape, dtype=np.uint16) << 12
    dirty = ((clean.view(np.uint16) & 0x0FFF) | noise).view(clean.dtype)
    assert (dirty != clean).mean() > 0.9
    read = []
    for name, stored in (("clean", clean), ("dirty", dirty)):
        ds = make_dataset(stored, bits_stored=12)
        if syntax != "native":
            ds.compress(syntax, encoding_plugin="pydicom")
        read.append(read_radiograph(write(ds, tmp_path / f"{name}.dcm")).pixels)
    np.testing.assert_array_equal(read[0], read[1])
    low, high = float(clean.min()), float(clean.max())
    np.testing.assert_allclose(read[0], (clean - low) / (high - low), atol=1e-6)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16])
@pytest.mark.parametrize("implicit", [False, True])
def test_native_frames_are_the_values_pydicoms_decoder_gives(
    tmp_path: Path, dtype: type, implicit: bool
) -> None:
    """The view of native Pixel Data (no decoder) holds what pydicom's decoder reads."""
    from anaxreport.ingest import _native_frame

    info = np.iinfo(dtype)
    stored = np.random.default_rng(3).integers(info.min, info.max, (37, 53), dtype=dtype)
    source = make_dataset(stored, bits_stored=info.bits)
    if implicit:
        source.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds = pydicom.dcmread(write(source, tmp_path / "image.dcm"))
    syntax = ds.file_meta.TransferSyntaxUID
    frame = _native_frame(ds, syntax, (37, 53))
    expected, _ = get_decoder(syntax).as_array(ds, raw=True)
    assert frame is not None and frame.dtype == expected.dtype == dtype
    np.testing.assert_array_equal(frame, expected)


def test_header_elements_are_the_elements_pydicom_converts(tmp_path: Path) -> None:
    """Reading converts every header element as indexing the data set would: private, nested,
    ambiguous-VR and Latin-1 elements included."""
    ds = make_dataset(
        PatientName="Müller^Jürgen", StudyDescription="Thorax", WindowCenter=[40, 400]
    )
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.add_new(0x00090010, "LO", "ANAX")
    ds.add_new(0x00091001, "DS", "1.5\\2")
    ds.add_new(0x00091002, "SQ", [Dataset()])
    ds[0x00091002].value[0].PatientID = "inner"
    ds.add_new(0x00281101, "US", [4096, 0, 16])  # Red Palette Color LUT Descriptor: US or SS
    path = write(ds, tmp_path / "image.dcm")
    header = read_radiograph(path).header
    expected = pydicom.dcmread(path)
    del expected.PixelData
    for element in expected:  # converted as ``expected[tag]`` converts it
        assert header[element.tag] == element, element.tag
        assert type(header[element.tag].value) is type(element.value), element.tag
    assert header.keys() == expected.keys()
    assert str(header.PatientName) == "Müller^Jürgen" and header[0x00091001].value == [1.5, 2]


def test_non_square_image_keeps_rows_and_columns(tmp_path: Path) -> None:
    stored = np.tile(np.arange(130, dtype=np.uint16) * 30, (70, 1))  # brighter to the right
    radiograph = _read(make_dataset(stored), tmp_path)
    assert (radiograph.rows, radiograph.columns) == (70, 130)
    assert radiograph.pixels.shape == (70, 130)
    assert radiograph.pixels[35, 0] == 0.0 and radiograph.pixels[35, -1] == 1.0


def test_tall_narrow_image(tmp_path: Path) -> None:
    stored = gradient(301, 97, bits_stored=14)
    radiograph = _read(make_dataset(stored, bits_stored=14), tmp_path)
    assert radiograph.pixels.shape == (301, 97) and radiograph.pixels[-1, -1] == 1.0


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


def test_unreadable_header_elements_are_dropped_not_fatal(tmp_path: Path) -> None:
    """pydicom converts values lazily: a corrupt one must not fail a later stage."""
    path = write(make_dataset(AccessionNumber="ACC1"), tmp_path / "image.dcm")
    data = path.read_bytes()
    at = data.index(b"\x08\x00\x50\x00SH")  # (0008,0050) Accession Number, explicit VR
    path.write_bytes(data[: at + 4] + b"ZZ" + data[at + 6 :])  # a VR no reader knows
    radiograph = read_radiograph(path)
    assert "AccessionNumber" not in radiograph.header
    assert radiograph.identity.accession_number == "" and radiograph.identity.patient_id


@pytest.mark.filterwarnings("ignore")
def test_empty_transfer_syntax_with_a_corrupt_vr_is_inferred(tmp_path: Path) -> None:
    """Found by the fuzzer (seed 7, input 10259): an empty (0002,0010) whose VR is IS."""
    path = write(make_dataset(), tmp_path / "image.dcm")
    data = path.read_bytes()
    element = b"\x02\x00\x10\x00UI\x14\x001.2.840.10008.1.2.1\x00"
    assert element in data
    path.write_bytes(data.replace(element, b"\x02\x00\x10\x00IS\x00\x00"))
    radiograph = read_radiograph(path)
    assert radiograph.header.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"


def test_deeply_nested_sequences_are_cut_at_a_fixed_depth(tmp_path: Path) -> None:
    ds = make_dataset()
    ds.add_new(0x00090010, "LO", "NEST")
    top = node = Dataset()
    for _ in range(60):
        child = Dataset()
        node.add_new(0x00091001, "SQ", [child])
        node = child
    ds.add_new(0x00091001, "SQ", [top])
    radiograph = _read(ds, tmp_path)
    depth, item = 0, radiograph.header
    while 0x00091001 in item:
        item, depth = item[0x00091001].value[0], depth + 1
    assert 10 < depth < 60 and radiograph.pixels.shape == (96, 80)


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
    error = _raises_one_line(
        InputFileNotFoundError, tmp_path / "nope.dcm", "nope.dcm", "missing-file"
    )
    assert isinstance(error, FileNotFoundError) and error.exit_code == 4


def test_directory(tmp_path: Path) -> None:
    folder = tmp_path / "study_dir"
    folder.mkdir()
    _raises_one_line(InputFileNotFoundError, folder, "study_dir", "missing-file")


def test_text_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("Patient is fine.\nNo findings.\n" * 20)
    error = _raises_one_line(NotDicomError, path, "notes.txt", "not-dicom")
    assert error.exit_code == 5 and error.__cause__ is not None


def test_png_like_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "image.png"
    noise = np.random.default_rng(7).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + noise)
    _raises_one_line(NotDicomError, str(path), "image.png", "not-dicom")


def test_empty_dicom_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.dcm"
    path.write_bytes(b"\x00" * 128 + b"DICM")
    error = _raises_one_line(NotDicomError, path, "empty.dcm", "not-dicom")
    assert isinstance(error, InvalidInputError)


def test_no_pixel_data(tmp_path: Path) -> None:
    path = write(make_dataset(PixelData=None), tmp_path / "nopixels.dcm")
    assert _raises_one_line(NoPixelDataError, path, "nopixels.dcm", "no-pixel-data").exit_code == 6


def test_pixel_data_shorter_than_the_header_says(tmp_path: Path) -> None:
    ds = make_dataset()
    ds.PixelData = ds.PixelData[:-1000]
    path = write(ds, tmp_path / "short.dcm")
    assert "Pixel Data" in str(_raises_one_line(InvalidInputError, path, "short.dcm", "truncated"))


def test_truncated_file(tmp_path: Path) -> None:
    path = write(make_dataset(), tmp_path / "cut.dcm")
    path.write_bytes(path.read_bytes()[:-2001])
    error = _raises_one_line(InvalidInputError, path, "cut.dcm", "truncated")
    assert error.reason == "truncated" and "ends inside its Pixel Data" in str(error)


def test_file_cut_inside_the_header(tmp_path: Path) -> None:
    path = write(make_dataset(), tmp_path / "cut.dcm")
    data = path.read_bytes()
    cut = data.index(b"TEST-001") + 3  # inside Patient ID, long before Pixel Data
    path.write_bytes(data[:cut])
    _raises_one_line(InvalidInputError, path, "cut.dcm", "truncated")


def test_header_only_file(tmp_path: Path) -> None:
    """A complete DICOM file that simply has no Pixel Data: not truncated."""
    path = write(make_dataset(PixelData=None), tmp_path / "header.dcm")
    _raises_one_line(NoPixelDataError, path, "header.dcm", "no-pixel-data")


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")
def test_file_cut_inside_encapsulated_pixel_data(tmp_path: Path, syntax: str) -> None:
    ds = make_dataset(gradient(200, 180))
    ds.compress(syntax)
    path = write(ds, tmp_path / "cut.dcm")
    path.write_bytes(path.read_bytes()[:-500])
    _raises_one_line(InvalidInputError, path, "cut.dcm", "truncated")


def test_truncated_compressed_pixel_data(tmp_path: Path) -> None:
    ds = make_dataset()
    ds.compress(RLELossless)
    path = write(ds, tmp_path / "rle.dcm")
    data = path.read_bytes()
    start = data.index(b"\xfe\xff\x00\xe0", data.index(b"\xe0\x7f\x10\x00"))
    corrupt = data[: start + 200] + b"\x00" * (len(data) - start - 208) + data[-8:]
    path.write_bytes(corrupt)
    _raises_one_line(InvalidInputError, path, "rle.dcm", "undecodable")


def test_unknown_transfer_syntax(tmp_path: Path) -> None:
    ds = make_dataset()
    ds.compress(RLELossless)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder
    path = write(ds, tmp_path / "mpeg.dcm")
    assert "MPEG2" in str(_raises_one_line(InvalidInputError, path, "mpeg.dcm", "undecodable"))


# -- radiograph validation -----------------------------------------------------------------


def test_radiograph_validates_its_pixels(tmp_path: Path) -> None:
    good = _read(make_dataset(), tmp_path)
    assert good.value_range == (good.pixels.min(), good.pixels.max()) == (0.0, 1.0)
    fields = {f.name: getattr(good, f.name) for f in dataclasses.fields(good) if f.init}
    dim = Radiograph(**{**fields, "pixels": np.full((96, 80), 0.25, np.float32)})
    assert dim.value_range == (0.25, 0.25)  # found from the pixels given
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


# -- what cannot become one grey-scale frame --------------------------------------------


def test_colour_image_is_refused_before_decoding(tmp_path: Path) -> None:
    rgb = np.zeros((96, 80, 3), dtype=np.uint8)
    path = write(make_dataset(rgb), tmp_path / "colour.dcm")
    error = _raises_one_line(UnsupportedStudyError, path, "colour.dcm", "colour-image")
    assert "RGB" in str(error) and "MONOCHROME2" in str(error)


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")
@pytest.mark.parametrize("photometric", ["MONOCHROME3", "", "GREY"])
def test_unknown_grey_scale_photometric_is_a_bad_header(tmp_path: Path, photometric: str) -> None:
    path = write(make_dataset(photometric=photometric or "X"), tmp_path / "grey.dcm")
    if not photometric:
        ds = pydicom.dcmread(path)
        del ds.PhotometricInterpretation
        ds.save_as(path)
    _raises_one_line(InvalidInputError, path, "grey.dcm", "bad-header")


def test_multi_frame_image_is_refused(tmp_path: Path) -> None:
    frames = np.stack([gradient()] * 3)
    path = write(make_dataset(frames), tmp_path / "frames.dcm")
    assert "3 frames" in str(
        _raises_one_line(UnsupportedStudyError, path, "frames.dcm", "multi-frame")
    )


def test_absurdly_large_image_is_refused_before_decoding(tmp_path: Path) -> None:
    ds = make_dataset(Rows=9000)  # pixel data too short, too: refused before decoding
    path = write(ds, tmp_path / "huge.dcm")
    assert "9000x80" in str(_raises_one_line(UnsupportedStudyError, path, "huge.dcm", "too-large"))


def test_missing_decoder_plugin_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = make_dataset()
    ds.compress(RLELossless)
    path = write(ds, tmp_path / "rle.dcm")
    decoder = get_decoder(RLELossless)
    if not hasattr(decoder, "_available"):  # pydicom internals changed; nothing to simulate
        pytest.skip("cannot simulate a missing plugin with this pydicom")
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", {"pylibjpeg": ("pylibjpeg-rle",)})
    error = _raises_one_line(InvalidInputError, path, "rle.dcm", "undecodable")
    assert "pylibjpeg-rle" in str(error) and error.__cause__ is not None


_WINDOWS = {
    "no window": {},
    "linear": {"WindowCenter": 2000, "WindowWidth": 1000},
    "linear width 1": {"WindowCenter": 2000, "WindowWidth": 1},
    "linear, two views": {"WindowCenter": [1500, 3000], "WindowWidth": [901, 50]},
    "linear exact": {"WindowCenter": 1800.5, "WindowWidth": 700, "VOILUTFunction": "LINEAR_EXACT"},
    "sigmoid": {"WindowCenter": 2100, "WindowWidth": 1500, "VOILUTFunction": "SIGMOID"},
    "linear width 0": {"WindowCenter": 2000, "WindowWidth": 0},
    "sigmoid width 0": {"WindowCenter": 2000, "WindowWidth": 0, "VOILUTFunction": "SIGMOID"},
}
_RESCALES = {
    "none": {},
    "ct-like": {"RescaleSlope": 1, "RescaleIntercept": -1024},
    "scaled": {"RescaleSlope": 0.5, "RescaleIntercept": 10.25},
    "negative slope": {"RescaleSlope": -2, "RescaleIntercept": 8000},
    "zero slope": {"RescaleSlope": 0, "RescaleIntercept": 7},
}


@pytest.mark.filterwarnings("ignore:.*Window Width.*")
@pytest.mark.parametrize("window", sorted(_WINDOWS))
@pytest.mark.parametrize("rescale", sorted(_RESCALES))
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_float32_display_path_equals_pydicoms(window, rescale, signed, photometric, caplog):
    """The in-place float32 rescale and window give what pydicom's float64 LUT functions give
    (the path LUT tables still take), warnings and fall-backs included."""
    from anaxreport.ingest import _display_by_pydicom, _lut_attributes, _to_display

    stored = gradient(64, 48, bits_stored=12, signed=signed)
    header = make_dataset(stored, photometric=photometric, **_RESCALES[rescale], **_WINDOWS[window])
    fast = _to_display(stored, header, "x.dcm", photometric)
    warned = [r.getMessage() for r in caplog.records]
    caplog.clear()
    reference = _display_by_pydicom(stored, _lut_attributes(header), "x.dcm", photometric)
    assert fast.dtype == np.float32 and fast.shape == stored.shape
    np.testing.assert_allclose(fast, reference, atol=2e-6, rtol=0)
    assert bool(warned) == bool(caplog.records)  # the same windows are ignored
    assert fast.min() >= 0.0 and fast.max() <= 1.0
    if window != "no window" and rescale != "zero slope" and "width 0" not in window:
        assert not warned  # a real window was applied: on the unsigned data, inside its range
        assert signed or fast.max() > fast.min()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -0.5, 1.5])
def test_radiograph_refuses_pixels_outside_zero_one(tmp_path: Path, bad: float) -> None:
    radiograph = _read(make_dataset(gradient(bits_stored=12)), tmp_path)
    pixels = radiograph.pixels.copy()
    pixels[3, 4] = bad
    with pytest.raises(ValueError, match=r"finite and within \[0, 1\]"):
        dataclasses.replace(radiograph, pixels=pixels)
