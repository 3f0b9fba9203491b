"""The fast DICOM encoder writes exactly pydicom's bytes, or lets pydicom write them.

Every comparison is byte for byte against ``Dataset.save_as(..., enforce_file_format=True)``;
the hand-built data sets also check (through the module's debug log) that the fast path, not the
fallback, produced them, and the fallback cases that pydicom did.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import pickle
import struct
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from _reports import make_findings
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)
from pydicom.valuerep import DA, DS, DT, TM, PersonName

from anaxreport import Reporter
from anaxreport.render.encode import encode
from anaxreport.render.shared import LazyCopy, editable_copy, read_only
from anaxreport.rules import apply_rules, load_rules

SAMPLES = sorted((Path(__file__).resolve().parents[1] / "samples").glob("*.dcm"))
FALLBACK = "falls back to pydicom"
LOGGER = "anaxreport.render.encode"


def _pydicom_bytes(dataset: Dataset) -> bytes:
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _fast(dataset: Dataset, caplog: pytest.LogCaptureFixture) -> bytes:
    """``encode(dataset)``, asserting the fast path wrote it (no fallback logged)."""
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        data = encode(dataset)
    assert not [r for r in caplog.records if FALLBACK in r.getMessage()], caplog.text
    return data


def _fallback(dataset: Dataset, caplog: pytest.LogCaptureFixture) -> bytes:
    """``encode(dataset)``, asserting it fell back to pydicom."""
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        data = encode(dataset)
    assert [r for r in caplog.records if FALLBACK in r.getMessage()], "expected a fallback"
    return data


def _base(transfer_syntax: str = ExplicitVRLittleEndian) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.34"
    ds.SOPInstanceUID = generate_uid()
    return ds


def _item(**keywords: object) -> Dataset:
    item = Dataset()
    for keyword, value in keywords.items():
        setattr(item, keyword, value)
    return item


# --- our own SR and GSPS, for every sample --------------------------------------------------


@pytest.fixture(scope="module")
def reporter() -> Reporter:
    return Reporter.from_pretrained()


@pytest.fixture(scope="module", params=SAMPLES, ids=[p.stem for p in SAMPLES])
def report(request: pytest.FixtureRequest, reporter: Reporter):
    return reporter.run(request.param)


def test_samples_exist() -> None:
    assert len(SAMPLES) >= 6


@pytest.mark.parametrize("what", ["to_sr", "to_gsps"])
def test_report_objects_match_pydicom(report, what: str, caplog) -> None:
    dataset = getattr(report, what)()
    fast = _fast(dataset, caplog)
    assert fast == _pydicom_bytes(dataset)
    assert fast[128:132] == b"DICM"


def test_sr_reads_back_equal(report) -> None:
    sr = report.to_sr()
    back = pydicom.dcmread(BytesIO(encode(sr)))
    assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert back.file_meta.MediaStorageSOPInstanceUID == sr.SOPInstanceUID
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "PatientID", "Modality"):
        assert back[keyword].value == sr[keyword].value, keyword
    assert str(back.PatientName) == str(sr.PatientName)
    assert len(back.ContentSequence) == len(sr.ContentSequence)
    for read, made in zip(back.ContentSequence, sr.ContentSequence, strict=True):
        assert read.ValueType == made.ValueType
        assert read.RelationshipType == made.RelationshipType
        read_name, made_name = read.ConceptNameCodeSequence[0], made.ConceptNameCodeSequence[0]
        assert read_name.CodeValue == made_name.CodeValue
        assert read_name.CodeMeaning == made_name.CodeMeaning
    # the whole tree, element by element, against what pydicom's own bytes read back as
    assert back == pydicom.dcmread(BytesIO(_pydicom_bytes(sr)))


# --- hand-built data sets, one VR family at a time ------------------------------------------


def _every_vr() -> Dataset:
    ds = _base()
    ds.add_new(0x00080005, "CS", "ISO_IR 100")
    ds.add_new(0x00020000 + 0x00090000, "UL", 1234)  # (000B,0000) group length: never written
    ds.add_new(0x00080054, "AE", "ODDAE")
    ds.add_new(0x00101010, "AS", "042Y")
    ds.add_new(0x00080060, "CS", "SR")
    ds.add_new(0x00080008, "CS", ["DERIVED", "PRIMARY", "X"])
    ds.add_new(0x00080020, "DA", DA("20240102"))
    ds.add_new(0x00080021, "DA", "20240103")  # string date, written as is
    ds.add_new(0x00080032, "TM", "101112.12")  # odd string time: space padded
    ds.add_new(0x0008002A, "DT", DT("20240102030405.123456"))
    ds.add_new(0x00080030, "TM", TM("101112"))
    ds.add_new(0x00080031, "TM", TM("101112.5"))
    ds.add_new(0x00180088, "DS", "1.5")
    ds.add_new(0x00280030, "DS", [0.1, 0.25])
    ds.add_new(0x00200013, "IS", 7)
    ds.add_new(0x00181164, "DS", ["3", "4.25"])
    ds.add_new(0x00081030, "LO", "odd")
    ds.add_new(0x00081090, "LO", ["a", "bc", "Ünïcode"])
    ds.add_new(0x00204000, "LT", "line one\r\nline two.")
    ds.add_new(0x00080050, "SH", "ACC1")
    ds.add_new(0x00081010, "SH", "Ström")
    ds.add_new(0x00321060, "LO", "x")
    ds.add_new(0x00400280, "ST", "odd text")
    ds.add_new(0x00400441, "SQ", [])
    ds.add_new(0x0040A160, "UT", "unlimited text, odd")
    ds.add_new(0x0018991F, "UC", "uc")
    ds.add_new(0x00404052, "UR", "http://example.com/x")
    ds.add_new(0x0020000D, "UI", "1.2.3")  # odd UI: NUL padded
    ds.add_new(0x00100010, "PN", "Doe^John")
    ds.add_new(0x00081050, "PN", ["Smith^A", "Jones^Björn"])
    ds.add_new(0x00209165, "AT", 0x00100010)
    ds.add_new(0x00209167, "AT", [0x00100020, (0x0008, 0x0018)])
    ds.add_new(0x0040A30A, "DS", [])  # empty multi
    ds.add_new(0x00700022, "FL", [1.5, -2.25, 3.0])
    ds.add_new(0x00186028, "FD", 0.1)
    ds.add_new(0x0040A161, "FD", [1.0, 2.0])
    ds.add_new(0x00186020, "SL", -5)
    ds.add_new(0x00186024, "US", 3)
    ds.add_new(0x00280010, "US", [1, 2, 3])
    ds.add_new(0x00189219, "SS", -3)
    ds.add_new(0x0040A132, "UL", [1, 2, 4000000000])
    ds.add_new(0x00660040, "OL", b"\x01\x02\x03\x04")
    ds.add_new(0x00720082, "SV", [-(2**40), 5])
    ds.add_new(0x00720083, "UV", 2**50)
    ds.add_new(0x00280004, "CS", "")  # empty CS
    ds.add_new(0x00100020, "LO", None)  # empty LO
    ds.add_new(0x00100030, "DA", None)
    ds.add_new(0x00100040, "CS", "")
    ds.add_new(0x00101030, "DS", None)
    ds.add_new(0x00280100, "US", None)
    ds.add_new(0x00080090, "PN", "")
    ds.add_new(0x00209128, "UL", None)
    ds.add_new(0x00640009, "OF", b"\x00\x00\x80\x3f")
    ds.add_new(0x00640010, "OD", b"\x00" * 8)
    ds.add_new(0x00660050, "OV", b"\x00" * 8)
    ds.add_new(0x00420011, "OB", b"\x01\x02\x03")  # odd OB: NUL padded
    ds.add_new(0x00660023, "OW", b"\x01\x02")
    ds.add_new(0x00191001, "UN", b"\x01\x02\x03")  # odd UN: never padded
    ds.add_new(0x00190010, "LO", "PRIVATE CREATOR")
    return ds


def test_every_vr(caplog) -> None:
    ds = _every_vr()
    assert _fast(ds, caplog) == _pydicom_bytes(ds)


def test_nested_and_empty_sequences(caplog) -> None:
    ds = _base()
    inner = _item(CodeValue="1", CodingSchemeDesignator="DCM", CodeMeaning="odd")
    inner.add_new(0x0040A730, "SQ", [])  # empty sequence inside an item
    middle = _item(ValueType="CONTAINER")
    middle.ConceptNameCodeSequence = [inner]
    middle.ContentSequence = [_item(), _item(TextValue="x" * 3)]  # an empty item
    ds.ContentSequence = [middle, _item(ValueType="TEXT", TextValue="y")]
    ds.add_new(0x00081115, "SQ", [])
    assert _fast(ds, caplog) == _pydicom_bytes(ds)


def test_undefined_length_sequences_and_items(caplog) -> None:
    """As read from a file written with undefined lengths: kept undefined, as pydicom does."""
    ds = _base()
    first = _item(CodeValue="1", CodeMeaning="one")
    first.is_undefined_length_sequence_item = True
    ds.ConceptNameCodeSequence = [first, _item(CodeValue="22")]
    ds["ConceptNameCodeSequence"].is_undefined_length = True
    ds.add_new(0x00081115, "SQ", [])
    ds["ReferencedSeriesSequence"].is_undefined_length = True
    assert _fast(ds, caplog) == _pydicom_bytes(ds)


def test_utf8_text_and_names(caplog) -> None:
    ds = _base()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Müller^Jürgen=山田^太郎"
    ds.StudyDescription = "Thorax ä"  # odd number of UTF-8 bytes
    ds.add_new(0x00081090, "LO", ["日本語", "Ωmega"])
    ds.ContentSequence = [_item(TextValue="naïve — text", CodeMeaning="Größe")]
    fast = _fast(ds, caplog)
    assert fast == _pydicom_bytes(ds)
    assert "Müller".encode() in fast


def test_item_character_set_overrides_parent(caplog) -> None:
    ds = _base()
    item = _item(SpecificCharacterSet="ISO_IR 192", CodeMeaning="Größe", PatientName="Zoë")
    ds.ContentSequence = [item, _item(CodeMeaning="Größe")]  # second: inherits the default
    fast = _fast(ds, caplog)
    assert fast == _pydicom_bytes(ds)
    assert "Größe".encode() in fast and "Größe".encode("latin-1") in fast


def test_file_meta_is_completed_like_pydicom(caplog) -> None:
    """No group length, version or implementation: added as pydicom adds them; stale UIDs fixed."""
    ds = _base()
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"  # stale: pydicom replaces it
    ds.file_meta.SourceApplicationEntityTitle = "ANAX"
    ds.preamble = b"\x01" * 128
    before = [(e.tag, e.VR, e.value) for e in ds.file_meta]
    fast = _fast(ds, caplog)
    assert [(e.tag, e.VR, e.value) for e in ds.file_meta] == before  # completed on a copy
    assert fast == _pydicom_bytes(ds)
    assert fast[:128] == b"\x01" * 128
    assert "FileMetaInformationGroupLength" not in ds.file_meta  # the caller's meta untouched


def test_kept_file_meta_holds_each_documents_own_uid(caplog) -> None:
    """The File Meta Information is made once per kind of data set and kept: documents of that
    kind, with UIDs of odd and even length, get pydicom's bytes, and so does a data set whose
    meta differs in any other value (another kind) or holds another SOP Instance UID."""
    written = []
    for uid in ("1.2.3.4", "1.2.3.45", "1.2.826.0.1.3680043.8.498.1", "1.2.3.4"):
        ds = _base()
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.file_meta.FileMetaInformationGroupLength = 1  # stale: written anew
        ds.ContentLabel = "BOX"
        written.append(_fast(ds, caplog))
        assert written[-1] == _pydicom_bytes(ds)
        assert uid.encode() in written[-1]
    assert written[0] == written[-1]
    other_kind = _base()
    other_kind.file_meta.MediaStorageSOPInstanceUID = other_kind.SOPInstanceUID
    other_kind.file_meta.SourceApplicationEntityTitle = "OTHER"
    assert _fast(other_kind, caplog) == _pydicom_bytes(other_kind)
    stale = _base()
    stale.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    assert _fast(stale, caplog) == _pydicom_bytes(stale)


def test_multivalue_numbers_from_multivalue(caplog) -> None:
    ds = _base()
    ds.add_new(0x00700022, "FL", MultiValue(float, [0.5, 1.5]))
    ds.add_new(0x00281050, "DS", MultiValue(str, ["40", "400"]))
    assert _fast(ds, caplog) == _pydicom_bytes(ds)


# --- fallbacks: pydicom writes (or refuses) -------------------------------------------------


def test_fallback_implicit_vr(caplog) -> None:
    ds = _base(ImplicitVRLittleEndian)
    ds.PatientName = "Doe^Jane"
    assert _fallback(ds, caplog) == _pydicom_bytes(ds)


def test_fallback_pixel_data(caplog) -> None:
    ds = _base()
    ds.Rows = ds.Columns = 2
    ds.BitsAllocated = 8
    ds.add_new(0x7FE00010, "OB", b"\x00\x01\x02\x03")
    assert _fallback(ds, caplog) == _pydicom_bytes(ds)


def test_fallback_other_character_set(caplog) -> None:
    ds = _base()
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    ds.PatientName = "Yamada^Tarou"
    assert _fallback(ds, caplog) == _pydicom_bytes(ds)


def test_fallback_ambiguous_vr(caplog) -> None:
    ds = _base()
    ds.PixelRepresentation = 1
    ds.add_new(0x00280106, "US or SS", 5)  # Smallest Image Pixel Value
    assert _fallback(ds, caplog) == _pydicom_bytes(ds)


def test_fallback_unencodable_text_same_as_pydicom(caplog) -> None:
    """Latin-1 cannot hold it: pydicom warns and replaces; the fallback does just that."""
    ds = _base()
    ds.StudyDescription = "日本"
    with pytest.warns(UserWarning):
        fast = _fallback(ds, caplog)
    with pytest.warns(UserWarning):
        assert fast == _pydicom_bytes(ds)


def test_fallback_long_short_value(caplog) -> None:
    """Over 64 KiB in a 16-bit-length VR: pydicom rewrites it as UN (with a warning)."""
    ds = _base()
    with pytest.warns(UserWarning, match="exceeds the maximum length"):
        ds.add_new(0x00400280, "ST", "x" * 70000)
    with pytest.warns(UserWarning):
        fast = _fallback(ds, caplog)
    with pytest.warns(UserWarning):
        assert fast == _pydicom_bytes(ds)


def test_fallback_raw_elements_as_read(caplog, tmp_path) -> None:
    """Raw elements of a data set read in the same encoding are copied as read, by pydicom."""
    ds = _every_vr()
    path = tmp_path / "x.dcm"
    ds.save_as(path, enforce_file_format=True)
    read = pydicom.dcmread(path)
    assert _fallback(read, caplog) == _pydicom_bytes(pydicom.dcmread(path))


def test_errors_are_pydicom_errors(caplog) -> None:
    ds = Dataset()  # no file meta, no transfer syntax: pydicom refuses, so does encode
    ds.PatientName = "x"
    with pytest.raises(ValueError):
        _pydicom_bytes(ds)
    with pytest.raises(ValueError):
        encode(ds)


def test_data_element_value_sequence_type(caplog) -> None:
    """Sequence values given as a pydicom Sequence of Datasets, one holding a DataElement."""
    ds = _base()
    item = Dataset()
    item.add(DataElement(0x00080100, "SH", "121071"))
    ds.ConceptNameCodeSequence = Sequence([item])
    assert _fast(ds, caplog) == _pydicom_bytes(ds)


def test_person_name_object(caplog) -> None:
    ds = _base()
    ds.PatientName = PersonName("Doe^Jo")
    assert _fast(ds, caplog) == _pydicom_bytes(ds)


# --- read-only items (encoded once), editable and lazy copies -------------------------------


def _code(value: str, meaning: str) -> Dataset:
    return _item(CodeValue=value, CodingSchemeDesignator="DCM", CodeMeaning=meaning)


def _shared_item() -> Dataset:
    """A read-only item as the SR writer shares them: nested sequences, a multi-value, text."""
    item = _item(RelationshipType="CONTAINS", ValueType="NUM")
    item.ConceptNameCodeSequence = [_code("1", "Größe")]  # Latin-1 and UTF-8 bytes differ
    item.MeasuredValueSequence = [_item(MeasurementUnitsCodeSequence=[_code("2", "unit")])]
    item.ReferencedFrameNumber = [1, 2]
    return read_only(item)


def _tags(*keywords: str) -> dict[str, BaseTag]:
    return {keyword: Tag(keyword) for keyword in keywords}


def test_new_data_sets_have_the_state_of_datasets_constructor() -> None:
    """render._dicom.new_dataset copies the state Dataset.__init__ sets: the same attributes,
    values and types, and mutable ones of its own."""
    from anaxreport.render._dicom import new_dataset

    elements = {Tag("PatientID"): DataElement(Tag("PatientID"), "LO", "1")}
    made, constructed = new_dataset(FileMetaDataset, elements), Dataset(elements)
    assert type(made) is FileMetaDataset and made._dict is elements
    assert made.__dict__ == constructed.__dict__
    assert {k: type(v) for k, v in vars(made).items()} == {
        k: type(v) for k, v in vars(constructed).items()
    }
    other = new_dataset(Dataset, {})
    for name, value in vars(made).items():
        if isinstance(value, dict):
            assert value is not getattr(other, name)  # never shared between data sets
    assert made.PatientID == "1" and other.is_undefined_length_sequence_item is False


def test_read_only_items_refuse_every_change() -> None:
    item = _shared_item()
    nested = item.ConceptNameCodeSequence[0]
    changes = [
        lambda: setattr(item, "ValueType", "TEXT"),
        lambda: delattr(item, "ValueType"),
        lambda: item.pop(Tag("ValueType")),
        lambda: item.clear(),
        lambda: item.update({"ValueType": "TEXT"}),
        lambda: setattr(item["ValueType"], "value", "TEXT"),
        lambda: setattr(item["ValueType"], "VR", "LO"),
        lambda: setattr(item["ConceptNameCodeSequence"], "is_undefined_length", True),
        lambda: item.ConceptNameCodeSequence.append(_code("3", "x")),
        lambda: item.ConceptNameCodeSequence.pop(),
        lambda: item.ConceptNameCodeSequence.__setitem__(0, _code("3", "x")),
        lambda: item.ReferencedFrameNumber.append(3),
        lambda: setattr(nested, "CodeMeaning", "other"),
        lambda: setattr(nested, "is_undefined_length_sequence_item", True),
        lambda: item.MeasuredValueSequence[0].MeasurementUnitsCodeSequence.clear(),
    ]
    for change in changes:
        with pytest.raises(TypeError, match="read-only"):
            change()
    assert item.ConceptNameCodeSequence[0].CodeMeaning == "Größe"
    assert list(item.ReferencedFrameNumber) == [1, 2]


def test_read_only_items_copy_and_pickle_as_editable_items() -> None:
    item = _shared_item()
    for twin in (copy.deepcopy(item), pickle.loads(pickle.dumps(item))):
        assert twin == item
        twin.ValueType = "TEXT"
        twin.ConceptNameCodeSequence[0].CodeMeaning = "other"
        twin.ReferencedFrameNumber.append(3)
        twin.MeasuredValueSequence.append(_code("3", "x"))
    assert item.ValueType == "NUM" and item.ConceptNameCodeSequence[0].CodeMeaning == "Größe"


@pytest.mark.parametrize("charset", [None, "ISO_IR 100", "ISO_IR 192"])
def test_read_only_items_encode_as_pydicom_in_every_parent(charset, caplog) -> None:
    """The kept bytes depend on the parent's character set: one item, three data sets."""
    shared = _shared_item()
    ds = _base()
    if charset:
        ds.SpecificCharacterSet = charset
    ds.ContentSequence = [shared, _item(TextValue="own"), shared]
    first = _fast(ds, caplog)
    assert first == _pydicom_bytes(ds) == _fast(ds, caplog)  # the second from the kept bytes
    assert first == _fast(copy.deepcopy(ds), caplog)  # editable again: nothing kept


def test_editable_copies_share_until_reached_and_never_change_the_prototype(caplog) -> None:
    shared = _shared_item()
    t = _tags("ValueType", "TextValue")
    made = editable_copy(shared, {t["ValueType"]: "TEXT", t["TextValue"]: "new"})
    ds = _base()
    ds.ContentSequence = [made]
    unreached = _fast(ds, caplog)  # from the shared elements' kept bytes
    assert unreached == _pydicom_bytes(ds)  # pydicom reaches (and copies) every element
    assert _fast(ds, caplog) == unreached
    made.ConceptNameCodeSequence.append(_code("3", "x"))  # the copy's own sequence
    made.MeasuredValueSequence[0] = _item(NumericValue="1")
    made["RelationshipType"].value = "HAS PROPERTIES"  # and its own elements
    made.ReferencedFrameNumber.append(3)
    assert _fast(ds, caplog) == _pydicom_bytes(ds) != unreached
    assert len(shared.ConceptNameCodeSequence) == 1
    assert shared.RelationshipType == "CONTAINS" and list(shared.ReferencedFrameNumber) == [1, 2]
    with pytest.raises(TypeError, match="read-only"):  # the items in them are the shared ones
        made.ConceptNameCodeSequence[0].CodeMeaning = "other"


def test_lazy_copies_encode_as_the_copies_they_make(caplog) -> None:
    """Sequences of LazyCopy are made when reached; until then the encoder writes them from
    the prototypes' bytes: the same bytes, in every character set, before and after."""
    shared = _shared_item()
    unit = shared.MeasuredValueSequence[0]
    t = _tags("MeasuredValueSequence", "NumericValue", "FloatingPointValue", "TextValue")
    for charset in (None, "ISO_IR 192"):
        lazy = [
            LazyCopy(
                shared,
                {
                    t["MeasuredValueSequence"]: (
                        LazyCopy(unit, {t["NumericValue"]: DS(0.5), t["FloatingPointValue"]: x}),
                        _code("9", "an item as it is"),
                    ),
                    t["TextValue"]: "Ünïcode",  # a tag the prototype lacks
                },
            )
            for x in (0.25, 0.75)
        ]
        container = read_only(_item(ValueType="CONTAINER", ContentSequence=[]))
        made = editable_copy(container, {Tag("ContentSequence"): (shared, *lazy)})
        ds = _base()
        if charset:
            ds.SpecificCharacterSet = charset
        ds.ContentSequence = [made]
        lazily = _fast(ds, caplog)
        assert lazily == _fast(ds, caplog)
        assert lazily == _pydicom_bytes(ds)  # pydicom makes every copy
        assert lazily == _fast(ds, caplog)  # now from the made items
        first = made.ContentSequence[1]
        assert first.MeasuredValueSequence[0].FloatingPointValue == 0.25
        first.MeasuredValueSequence[0].FloatingPointValue = 1.0  # a made copy is editable
        assert _fast(ds, caplog) == _pydicom_bytes(ds) != lazily


@pytest.mark.parametrize("codec", ["iso8859", "utf_8"])
@pytest.mark.parametrize(
    "values",
    [
        {"FloatingPointValue": 0.25, "NumericValue": "0.25", "UID": "1.2.3"},  # the fast forms
        {"FloatingPointValue": 3, "NumericValue": DS(0.123456789012345678, auto_format=True),
         "UID": UID("1.2.34")},  # others: written as the encoder writes them
        {"GraphicData": [1.5, 2.25, 3.0], "NumericValue": "", "TextValue": "Ünïcode"},
        {"GraphicData": MultiValue(float, [1.5, 2.0]), "FloatingPointValue": [0.5, 1.5]},
        {"GraphicData": [1, 2], "MeasuredValueSequence": b""},
        {"GraphicGroupID": 70000, "NumberOfGraphicPoints": 5, "SimpleFrameList": [1, 2**31]},
    ],
    ids=["fast", "other-types", "float-list", "multivalue", "ints-and-empty-sequence",
         "binary-integers"],
)  # fmt: skip
def test_item_templates_write_what_the_encoder_writes(values, codec) -> None:
    """ItemTemplate's bytes for a read-only item with new values: those of the copy holding
    them, as the encoder writes every element."""
    from anaxreport.render.encode import ItemTemplate, encode_item

    shared = _shared_item()
    by_tag = {Tag(keyword): value for keyword, value in values.items()}
    template = ItemTemplate(shared, tuple(sorted(by_tag)), codec)
    # a sequence's value is its items' bytes: b"" (no items) in the template, () in the copy
    copied = {tag: () if value == b"" else value for tag, value in by_tag.items()}
    assert template.item(by_tag) == encode_item(editable_copy(shared, copied), codec)


def test_item_templates_write_values_of_lengths_seen_before_as_the_encoder() -> None:
    """ItemTemplate keeps a frame per combination of its values' lengths: items of other values
    of lengths it has seen, and of new lengths, are still those the encoder writes."""
    from anaxreport.render.encode import ItemTemplate, encode_item

    shared = _shared_item()
    tags = _tags("FloatingPointValue", "GraphicData", "NumericValue", "TextValue", "UID")
    order = tuple(sorted(tags.values()))
    template = ItemTemplate(shared, order, "utf_8")
    for x, text, uid, number in (
        (0.25, "abc", "1.2.3", "0.5"),
        (0.75, "abd", UID("1.2.4"), "0.7"),  # the same lengths: the kept frame
        (1.0, "Ünï", "1.2.34", DS("0.25")),  # new lengths, and types the encoder converts
        (0.5, "xyz", "9.8.7", "0.1"),
    ):
        by_keyword = {"FloatingPointValue": x, "GraphicData": [x, 2 * x], "TextValue": text,
                      "UID": uid, "NumericValue": number}  # fmt: skip
        by_tag = {tags[keyword]: value for keyword, value in by_keyword.items()}
        expected = encode_item(editable_copy(shared, by_tag), "utf_8")
        assert template.item_of(*[by_tag[tag] for tag in order]) == expected


@pytest.mark.parametrize("undefined", [False, True])
def test_item_template_frames_hold_every_value_of_the_same_length(undefined) -> None:
    """A frame (the item cut around its values' bytes) joined with other values of the same
    lengths is the item of those values; a nested item's frame too, and for a sequence of
    undefined length, whose delimiter comes after the value."""
    from anaxreport.render.encode import ItemTemplate

    item = _item(RelationshipType="CONTAINS", ValueType="NUM")
    item.MeasuredValueSequence = [_item(MeasurementUnitsCodeSequence=[_code("2", "unit")])]
    item["MeasuredValueSequence"].is_undefined_length = undefined
    outer = ItemTemplate(read_only(item), (Tag("MeasuredValueSequence"),), "iso8859")
    inner = ItemTemplate(
        _shared_item(), (Tag("FloatingPointValue"), Tag("NumericValue")), "iso8859"
    )
    double = struct.Struct("<d").pack
    before, between, after = inner.frame((0.5, double(0.5)), ("0.5", b"0.5 "))
    for value, text in ((0.25, "0.25"), (0.125, "0.12"), (1e-9, "1e-9")):
        data = text.encode() + b" " * (len(text) % 2)
        nested = inner.item_of(value, text)
        assert before + double(value) + between + data + after == nested
        head, tail = outer.frame((nested, nested))
        assert head + nested + tail == outer.item_of(nested)
    with pytest.raises(ValueError, match="does not hold the bytes given"):
        inner.frame((0.5, double(0.25)), ("0.5", b"0.5 "))


@pytest.mark.parametrize("charset", [None, "ISO_IR 100", "ISO_IR 192"])
def test_deferred_items_encode_as_the_items_they_make(charset, caplog) -> None:
    """The SR's measurement groups and the GSPS's graphic groups, boxes and labels are written
    from compiled templates, never made unless reached: the same bytes as the items pydicom
    makes and writes, in each character set, with every kind of call and a region the
    detector missed."""
    findings = make_findings(
        {("right lung", "pleural effusion"): 0.93, ("left lung", "pleural effusion"): 0.61,
         ("cardiac silhouette", "enlarged cardiac silhouette"): 0.8},
        missing=("trachea",),
    )  # fmt: skip
    header = copy.deepcopy(findings.header)
    if charset:
        header.SpecificCharacterSet = charset
        header.PatientName = "Müller^Jürgen"
    report = apply_rules(dataclasses.replace(findings, header=header), load_rules())
    sr = report.to_sr()
    lazily = _fast(sr, caplog)
    assert lazily == _pydicom_bytes(sr)  # pydicom reaches, and so makes, every group
    assert lazily == _fast(sr, caplog)  # now written from the made groups
    groups = sr.ContentSequence[-2].ContentSequence
    assert len(groups) == 17  # every region but the one missed
    if charset == "ISO_IR 192":
        assert "Müller".encode() in lazily
    gsps = report.to_gsps()
    lazily = _fast(gsps, caplog)
    assert lazily == _pydicom_bytes(gsps)
    assert len(gsps.GraphicGroupSequence) == 17


def test_a_tuple_is_only_a_sequence_value() -> None:
    with pytest.raises(TypeError, match="sequence"):
        editable_copy(_shared_item(), {Tag("ReferencedFrameNumber"): (1, 2)})
    with pytest.raises(TypeError, match="read-only items"):
        editable_copy(_item(ValueType="TEXT"), {})
