"""DICOM in, :class:`Radiograph` out (DESIGN.md §2, §7).

:func:`read_radiograph` turns a DICOM file or a :class:`pydicom.dataset.Dataset` into a frozen
:class:`Radiograph`: display-space float pixels in [0, 1] (1 = white/dense), source geometry,
identity and a copy of the header without pixel data, so nothing downstream re-reads the file.
The pixel pipeline follows DICOM PS3.4 N.2.1: modality LUT (PS3.3 C.11.1), VOI LUT or window
(C.11.2), then MONOCHROME1 inversion (C.7.6.3.1.2). Ingest refuses only what cannot become
one grey-scale frame (colour, multi-frame, absurd size: checked before decoding, so a hostile
header cannot make us decode gigabytes); what the model is made for is the input gate's call
(:mod:`anaxreport.gate`). Every failure is a typed :mod:`anaxreport.errors` error with a reason
code and a one-line message that names the file.

Corrupt input: pydicom, its pixel plugins and numpy raise many exception types on damaged data.
They are caught only around the third-party calls that meet the data (reading, value
conversion, decoding, LUTs), as :data:`CORRUPT_DATA_ERRORS`, so a bug in this module still
surfaces as itself. ``tests/fuzz_ingest.py`` checks that nothing else escapes.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder
from pydicom.tag import BaseTag, Tag
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pydicom.valuerep import AMBIGUOUS_VR

from anaxreport.errors import (
    InputFileNotFoundError,
    InvalidInputError,
    NoPixelDataError,
    NotDicomError,
    UnsupportedStudyError,
)

__all__ = [
    "CORRUPT_DATA_ERRORS",
    "DECODED_TRANSFER_SYNTAXES",
    "MAX_SIDE",
    "Radiograph",
    "StudyIdentity",
    "check_supported",
    "header_int",
    "header_text",
    "read_radiograph",
    "refuse_unformable",
]

logger = logging.getLogger(__name__)

#: Rows or Columns above this are refused before decoding (reason ``too-large``): a hostile or
#: corrupt header must not make us allocate gigabytes. The gate has its own, configurable limit.
MAX_SIDE = 8192

#: The transfer syntaxes :func:`read_radiograph` decodes, each with a round-trip case in
#: tests/test_ingest_syntaxes.py; the DICOM node accepts exactly these.
DECODED_TRANSFER_SYNTAXES = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
)

#: What pydicom, its pixel plugins and numpy raise on corrupt data, and why each is here. Caught
#: only around calls into those libraries, never around this module's own logic.
CORRUPT_DATA_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,  # invalid values and lengths, numpy reshape/frombuffer, UnicodeDecodeError
    TypeError,  # a value of an unexpected type after a corrupt VR or VM
    AttributeError,  # pydicom's way of saying a required element is missing (ds.Rows, LUTs)
    KeyError,  # a missing element looked up by tag inside pydicom
    IndexError,  # encapsulation offsets, LUT and window indices past their data
    struct.error,  # binary values shorter than their VR needs
    EOFError,  # the file ends inside an element
    OSError,  # pydicom's reads of a damaged file
    zlib.error,  # a damaged Deflated Explicit VR Little Endian stream
    RuntimeError,  # plugin decode failures; NotImplementedError (unknown VR); RecursionError
    OverflowError,  # lengths and values past what Python or numpy can hold
    InvalidDicomError,  # pydicom: not DICOM, or a damaged preamble / file meta
    BytesLengthException,  # pydicom: a value whose length does not fit its VR
)

_PIXEL_DATA = Tag(0x7FE0, 0x0010)
_PIXEL_TAGS = (
    _PIXEL_DATA,  # Pixel Data
    Tag(0x7FE0, 0x0008),  # Float Pixel Data
    Tag(0x7FE0, 0x0009),  # Double Float Pixel Data
)
_UNDEFINED_LENGTH = 0xFFFFFFFF
_ITEM, _SEQUENCE_DELIMITER = b"\xfe\xff\x00\xe0", b"\xfe\xff\xdd\xe0"
#: Elements that ``ds[tag]`` converts with more than the conversion (:func:`_converted`).
_NOT_PLAIN = frozenset({Tag(0x0008, 0x0005), *_PIXEL_TAGS})
_NATIVE_LITTLE_ENDIAN = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
_MAX_NESTING = 16  # sequence depth the header clean-up walks; deeper items are dropped
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_COLOUR = ("RGB", "YBR", "PALETTE", "HSV", "ARGB", "CMYK", "XYB")  # PS3.3 C.7.6.3.1.2, retired too
_IDENTITY_KEYWORDS = (
    "PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
    "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "AccessionNumber", "StudyID",
    "StudyDate", "StudyTime", "SeriesNumber", "InstanceNumber",
)  # fmt: skip


@dataclass(frozen=True)
class StudyIdentity:
    """Who and what the image is: patient, study, series and SOP identity (PS3.3 C.7.1-C.12.1).

    Every field is a string, empty when the attribute is absent, so renderers can copy them
    verbatim into SR/FHIR without None checks.
    """

    patient_id: str = ""
    patient_name: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    sop_instance_uid: str = ""
    sop_class_uid: str = ""
    accession_number: str = ""
    study_id: str = ""
    study_date: str = ""
    study_time: str = ""
    series_number: str = ""
    instance_number: str = ""

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not isinstance(value, str):
                raise TypeError(f"StudyIdentity.{name} must be a str, got {type(value).__name__}")

    @classmethod
    def from_dataset(cls, ds: Dataset) -> StudyIdentity:
        """Copy the identity attributes of ``ds``; malformed or absent values become ``""``."""
        return cls(*(header_text(ds, keyword) for keyword in _IDENTITY_KEYWORDS))


@dataclass(frozen=True, eq=False)
class Radiograph:
    """One frontal chest radiograph ready for the model; valid once constructed.

    Parameters
    ----------
    pixels
        float32 (rows, columns), read-only, display space in [0, 1], 1 = white (dense).
    rows, columns
        The source matrix size; equal to ``pixels.shape``.
    pixel_spacing
        (row, column) spacing in mm from Pixel Spacing, else Imager Pixel Spacing (detector
        plane, not corrected for magnification); None when absent or unusable.
    view_position
        View Position (0018,5101), upper case, ``""`` when absent.
    modality, photometric_interpretation, bits_stored
        As in the file.
    identity
        Patient/study/series/SOP identity.
    header
        A copy of the source data set without pixel data (file meta included), for renderers
        that need the source's modules (SR, GSPS). Treat it as read-only; copy before changing.
    source
        The file the image came from (``"<dataset>"`` for an in-memory data set); used in messages.
    value_range
        The lowest and highest display value (found when the pixels are checked; not given).
    """

    pixels: np.ndarray
    rows: int
    columns: int
    pixel_spacing: tuple[float, float] | None
    view_position: str
    modality: str
    photometric_interpretation: str
    bits_stored: int
    identity: StudyIdentity
    header: Dataset
    source: str = "<dataset>"
    value_range: tuple[float, float] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        pixels = self.pixels
        if not isinstance(pixels, np.ndarray) or pixels.dtype != np.float32 or pixels.ndim != 2:
            raise TypeError(
                "Radiograph.pixels must be a 2-D float32 numpy array, got "
                f"{type(pixels).__name__} {getattr(pixels, 'dtype', '')} "
                f"{getattr(pixels, 'shape', '')}"
            )
        if pixels.shape != (self.rows, self.columns):
            raise ValueError(
                f"Radiograph.pixels shape {pixels.shape} does not match rows, columns "
                f"({self.rows}, {self.columns})"
            )
        # min and max are NaN when any value is, and NaN fails both comparisons
        low, high = (float(pixels.min()), float(pixels.max())) if pixels.size else (0.0, 0.0)
        if not (low >= 0.0 and high <= 1.0):
            raise ValueError("Radiograph.pixels must be finite and within [0, 1]")
        object.__setattr__(self, "value_range", (low, high))  # frozen: set once, here
        if self.pixel_spacing is not None and (
            len(self.pixel_spacing) != 2
            or not all(math.isfinite(v) and v > 0 for v in self.pixel_spacing)
        ):
            raise ValueError(
                f"Radiograph.pixel_spacing must be two positive numbers or None, "
                f"got {self.pixel_spacing}"
            )
        if not isinstance(self.header, Dataset):
            raise TypeError(f"Radiograph.header must be a pydicom Dataset, got {type(self.header)}")
        if any(tag in self.header for tag in _PIXEL_TAGS):
            raise ValueError("Radiograph.header must not carry pixel data")
        pixels.flags.writeable = False


def read_radiograph(
    source: str | os.PathLike[str] | Dataset, *, max_side: int = MAX_SIDE
) -> Radiograph:
    """Read a DICOM file or data set into a :class:`Radiograph`.

    A :class:`~pydicom.dataset.Dataset` argument is not modified. Compressed transfer syntaxes
    are decoded by pydicom's plugins (pylibjpeg, openjpeg, libjpeg, pyjpegls, RLE). Header
    elements whose values cannot be converted are dropped from :attr:`Radiograph.header`
    (logged at DEBUG), so no later stage trips over them. ``max_side`` bounds Rows and Columns
    before anything is decoded.

    Raises
    ------
    InputFileNotFoundError
        ``source`` is a path that does not exist, is not a regular file or cannot be read
        (reason ``missing-file``).
    NotDicomError
        The file is not DICOM (``not-dicom``).
    NoPixelDataError
        The data set has no Pixel Data: a header-only file (``no-pixel-data``).
    UnsupportedStudyError
        The pixels cannot form one grey-scale image (``colour-image``, ``multi-frame``) or are
        larger than ``max_side`` (``too-large``).
    InvalidInputError
        The file or its Pixel Data is cut short (``truncated``), the pixels cannot be decoded
        (``undecodable``: corrupt, unknown transfer syntax, missing plugin), or the Image Pixel
        module or a LUT is unusable (``bad-header``).
    """
    if isinstance(source, Dataset):
        filename = getattr(source, "filename", None)  # set by dcmread; may be a file object
        name = os.fspath(filename) if isinstance(filename, (str, os.PathLike)) else "<dataset>"
        ds = copy.deepcopy(source)  # decode and strip a private copy; the caller's is untouched
    else:
        name = os.fspath(source)
        ds = _read_file(Path(name), name)
    cut = _cut_short(ds)
    _drop_unreadable(ds, name)
    if _PIXEL_DATA not in ds:
        if cut:
            raise InvalidInputError(f"{name}: file ends inside its header", reason="truncated")
        if "SOPClassUID" not in ds and not any(tag in ds for tag in _PIXEL_TAGS):
            raise NotDicomError(f"{name}: not a DICOM image (no SOP Class UID and no Pixel Data)")
        raise NoPixelDataError(f"{name}: DICOM data set has no Pixel Data (7FE0,0010)")
    rows, columns = header_int(ds, "Rows", 0), header_int(ds, "Columns", 0)
    if rows < 1 or columns < 1:
        raise InvalidInputError(
            f"{name}: unusable Image Pixel module: Rows {rows}, Columns {columns}; both must be "
            "positive",
            reason="bad-header",
        )
    photometric = header_text(ds, "PhotometricInterpretation").upper()
    samples, frames = header_int(ds, "SamplesPerPixel", 1), header_int(ds, "NumberOfFrames", 1)
    refuse_unformable(name, photometric, samples, frames, rows, columns, max_side)
    uid = _transfer_syntax(ds, name)
    if cut:
        raise InvalidInputError(f"{name}: file ends inside its Pixel Data", reason="truncated")
    if _pixel_data_short(ds, rows * columns * samples * max(frames, 1)):
        raise InvalidInputError(
            f"{name}: Pixel Data is shorter than Rows x Columns x Bits Allocated need",
            reason="truncated",
        )
    stored = _decode(ds, uid, name, (rows, columns))
    for tag in _PIXEL_TAGS:
        if tag in ds:
            del ds[tag]  # also drops pydicom's cached array
    pixels = _to_display(stored, ds, name, photometric)
    radiograph = Radiograph(
        pixels=pixels,
        rows=rows,
        columns=columns,
        pixel_spacing=_pixel_spacing(ds),
        view_position=header_text(ds, "ViewPosition").upper(),
        modality=header_text(ds, "Modality"),
        photometric_interpretation=header_text(ds, "PhotometricInterpretation"),
        bits_stored=header_int(ds, "BitsStored", header_int(ds, "BitsAllocated", 0)),
        identity=StudyIdentity.from_dataset(ds),
        header=ds,
        source=name,
    )
    logger.debug("read %s: %dx%d %s", name, rows, columns, photometric)
    return radiograph


def check_supported(radiograph: Radiograph) -> None:
    """The input gate with its default rules; kept for callers of the first release.

    Use :func:`anaxreport.gate.check` with a :class:`~anaxreport.gate.GateRules` to configure it.
    """
    from anaxreport.gate import check  # the gate imports this module

    check(radiograph)


def refuse_unformable(
    name: str,
    photometric: str,
    samples: int,
    frames: int,
    rows: int,
    columns: int,
    max_side: int = MAX_SIDE,
) -> None:
    """Refuse what cannot (or should not) become one grey-scale frame, before decoding.

    Colour, several frames and more than ``max_side`` rows or columns are refused
    (:class:`UnsupportedStudyError`); a grey-scale Photometric Interpretation other than
    MONOCHROME1/2 is a bad header (:class:`InvalidInputError`). Shared with the gate, which
    checks a :class:`Radiograph` built by other means the same way.
    """
    if samples == 1 and photometric not in _MONOCHROME and not photometric.startswith(_COLOUR):
        raise InvalidInputError(
            f"{name}: unusable Image Pixel module: Photometric Interpretation {photometric!r}; "
            "allowed: MONOCHROME1 or MONOCHROME2",
            reason="bad-header",
        )
    if samples != 1 or photometric not in _MONOCHROME:
        raise UnsupportedStudyError(
            f"{name}: colour image (Photometric Interpretation {photometric!r}, Samples per "
            f"Pixel {samples}) is not supported; allowed: MONOCHROME1 or MONOCHROME2, 1 sample",
            reason="colour-image",
        )
    if frames > 1:
        raise UnsupportedStudyError(
            f"{name}: multi-frame image ({frames} frames) is not supported; allowed: 1 frame",
            reason="multi-frame",
        )
    if max(rows, columns) > max_side:
        raise UnsupportedStudyError(
            f"{name}: image of {rows}x{columns} pixels is too large; rows and columns must be "
            f"at most {max_side}",
            reason="too-large",
        )


# -- reading -------------------------------------------------------------------------------


def _read_file(path: Path, name: str) -> Dataset:
    """dcmread with typed errors; a preamble-less file only if it is a real image data set."""
    if not path.exists():
        raise InputFileNotFoundError(f"{name}: no such file")
    if not path.is_file():
        raise InputFileNotFoundError(f"{name}: not a regular file")
    try:
        with path.open("rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise InputFileNotFoundError(f"{name}: cannot read: {exc.strerror or exc}") from exc
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as exc:
        first_error: BaseException = exc
    except CORRUPT_DATA_ERRORS as exc:  # the file claims to be DICOM but does not parse
        reason = "truncated" if isinstance(exc, EOFError) else "bad-header"
        raise InvalidInputError(
            f"{name}: unreadable DICOM file: {_one_line(exc)}", reason=reason
        ) from exc
    else:
        if not len(ds) and _bytes_after_file_meta(ds, path) > 0:
            # pydicom drops every element it had read when the file ends inside one of
            # undefined length (it warns "End of file reached before delimiter")
            raise InvalidInputError(
                f"{name}: the data set cannot be read to its end (file cut short)",
                reason="truncated",
            )
        return ds
    try:
        with warnings.catch_warnings():  # forced parsing of garbage warns on every element
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, force=True)
            usable = _PIXEL_DATA in ds and int(ds.Rows) > 0 and int(ds.Columns) > 0
    except CORRUPT_DATA_ERRORS:  # arbitrary bytes fail in arbitrary ways: that is "not DICOM"
        usable = False
    if not usable:
        raise NotDicomError(f"{name}: not a DICOM file ({_one_line(first_error)})") from first_error
    logger.debug("%s: read without DICOM preamble/file meta", name)
    return ds


def _bytes_after_file_meta(ds: Dataset, path: Path) -> int:
    """How many bytes the file holds after its preamble and File Meta Information."""
    meta = getattr(ds, "file_meta", None)
    meta_length = header_int(meta, "FileMetaInformationGroupLength", 0) if meta else 0
    return path.stat().st_size - (128 + 4 + 12 + meta_length)


def _cut_short(ds: Dataset) -> bool:
    """Whether reading hit the end of the file inside an element.

    pydicom reads a cut file without complaint: the last element, still raw, simply holds fewer
    bytes than its length says; encapsulated Pixel Data (undefined length) ends inside an item.
    """
    tags = list(ds.keys())
    if not tags:
        return False
    last = ds.get_item(max(tags), keep_deferred=True)  # no conversion: it may be corrupt
    if not isinstance(last, RawDataElement) or last.value is None:
        return False
    if last.length != _UNDEFINED_LENGTH:
        return len(last.value) < last.length
    return last.tag == _PIXEL_DATA and _items_overrun(last.value)


def _items_overrun(value: bytes) -> bool:
    """Whether encapsulated Pixel Data (PS3.5 A.4) ends inside an item header or value."""
    pos = 0
    while pos + 8 <= len(value):
        tag = value[pos : pos + 4]
        if tag == _SEQUENCE_DELIMITER:
            return False
        if tag != _ITEM:
            return False  # not an item: malformed, which the decoder reports
        pos += 8 + int.from_bytes(value[pos + 4 : pos + 8], "little")
    return pos != len(value)


def _pixel_data_short(ds: Dataset, samples: int) -> bool:
    """Whether native (defined-length) Pixel Data holds fewer bytes than ``samples`` need."""
    elem = ds[_PIXEL_DATA]
    bits = header_int(ds, "BitsAllocated", 0)
    if elem.is_undefined_length or bits not in (1, 8, 16, 32, 64):
        return False  # encapsulated, or a layout the decoder will refuse with its own words
    value = elem.value if isinstance(elem.value, bytes) else b""
    return len(value) < (samples * bits + 7) // 8


def _drop_unreadable(ds: Dataset, name: str, depth: int = 0) -> None:
    """Convert every element now and drop those whose value is corrupt (logged at DEBUG).

    pydicom converts values lazily, so a damaged element would otherwise raise wherever it is
    first touched: here, in a renderer, in a user's code. File meta is walked too.
    """
    try:
        encoding = ds.original_character_set or ds._character_set  # as ``ds[tag]`` decodes
    except CORRUPT_DATA_ERRORS:
        encoding = None  # each ``ds[tag]`` below meets the error in its own element
    elements = ds._dict
    for tag in list(elements):
        try:
            elem = _converted(ds, tag, elements[tag], encoding)
            if elem.VR == "SQ":
                if depth >= _MAX_NESTING:
                    raise RecursionError(f"sequences nested deeper than {_MAX_NESTING}")
                for item in elem.value:
                    _drop_unreadable(item, name, depth + 1)
        except CORRUPT_DATA_ERRORS as exc:
            logger.debug("%s: dropped unreadable element %s (%s)", name, tag, _one_line(exc))
            del ds[tag]
    meta = getattr(ds, "file_meta", None)
    if depth == 0 and isinstance(meta, Dataset):
        _drop_unreadable(meta, name, depth + 1)


def _converted(
    ds: Dataset, tag: BaseTag, elem: object, encoding: str | list[str] | None
) -> DataElement:
    """``ds[tag]``, the element converted in place; a plain one (public, not a sequence, nor
    of ambiguous VR, Pixel Data or the character set) without Dataset's per-call checks, which
    cost more than converting: ``ds[tag]`` would store the same element."""
    if (
        encoding is None
        or not isinstance(elem, RawDataElement)
        or elem.value is None  # deferred: ``ds[tag]`` reads it
        or tag.is_private
        or tag in _NOT_PLAIN
    ):
        return ds[tag]
    converted = convert_raw_data_element(elem, encoding=encoding, ds=ds)
    if converted.VR == "SQ" or converted.VR in AMBIGUOUS_VR:
        return ds[tag]  # the element is still raw: Dataset converts and corrects it
    ds._dict[tag] = converted
    return converted


def _transfer_syntax(ds: Dataset, name: str) -> UID:
    """The data set's transfer syntax; inferred from its encoding when file meta lacks one."""
    file_meta = getattr(ds, "file_meta", None)
    uid = header_text(file_meta, "TransferSyntaxUID") if isinstance(file_meta, Dataset) else ""
    if uid:
        return UID(uid)
    if ds[_PIXEL_DATA].is_undefined_length:
        raise InvalidInputError(
            f"{name}: encapsulated Pixel Data but no Transfer Syntax UID (0002,0010)",
            reason="undecodable",
        )
    implicit, little = ds.original_encoding
    if implicit is None:  # built in memory: native little-endian pixel data
        uid = ExplicitVRLittleEndian
    elif implicit:
        uid = ImplicitVRLittleEndian
    else:
        uid = ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    if not isinstance(file_meta, FileMetaDataset):
        ds.file_meta = file_meta = FileMetaDataset()
    if "TransferSyntaxUID" in file_meta:
        del file_meta.TransferSyntaxUID  # empty, maybe with a corrupt VR that refuses a UID
    file_meta.TransferSyntaxUID = uid
    return UID(uid)


def _native_frame(ds: Dataset, uid: UID, shape: tuple[int, int]) -> np.ndarray | None:
    """The frame of native little-endian Pixel Data of one grey sample of 8 or 16 bits a pixel
    (nearly every uncompressed radiograph) as a read-only view of its bytes: what pydicom's
    decoder gives (raw, as a view) after 0.4 ms of checks that this file has passed. None for
    anything else, which the decoder takes."""
    bits = header_int(ds, "BitsAllocated", 0)
    signed = header_int(ds, "PixelRepresentation", -1)
    value = ds[_PIXEL_DATA].value
    if (
        uid not in _NATIVE_LITTLE_ENDIAN
        or bits not in (8, 16)
        or signed not in (0, 1)
        or not isinstance(value, bytes)
        or header_int(ds, "SamplesPerPixel", 1) != 1
        or header_int(ds, "NumberOfFrames", 1) != 1
        or len(value) < math.prod(shape) * bits // 8
    ):
        return None
    dtype = f"<{'iu'[signed == 0]}{bits // 8}"
    return np.frombuffer(value, dtype=dtype, count=math.prod(shape)).reshape(shape)


def _decode(ds: Dataset, uid: UID, name: str, shape: tuple[int, int]) -> np.ndarray:
    """Decode the stored values of the single frame, with typed errors."""
    arr = _native_frame(ds, uid, shape)
    if arr is None:
        arr = _decode_by_pydicom(ds, uid, name)
    return _unused_bits_cleared(arr, header_int(ds, "BitsStored", 0))


def _decode_by_pydicom(ds: Dataset, uid: UID, name: str) -> np.ndarray:
    try:
        decoder = get_decoder(uid)
    except NotImplementedError as exc:
        raise InvalidInputError(
            f"{name}: no decoder for transfer syntax {uid.name} ({uid})", reason="undecodable"
        ) from exc
    try:
        # native data as a read-only view of the element's bytes: the display stage makes the
        # float copy anyway; pydicom's own writable copy and bit shifts cost a 3000 x 2500
        # film 4 ms, and are done below only where a value needs them
        arr, _ = decoder.as_array(ds, index=0, raw=True, view_only=True, correct_unused_bits=False)
    except CORRUPT_DATA_ERRORS as exc:
        raise InvalidInputError(
            f"{name}: cannot decode Pixel Data ({uid.name}): {_one_line(exc)}",
            reason="undecodable",
        ) from exc
    if arr.ndim != 2:
        raise InvalidInputError(
            f"{name}: decoded Pixel Data has shape {arr.shape}, expected 2-D", reason="undecodable"
        )
    return arr


def _unused_bits_cleared(arr: np.ndarray, bits_stored: int) -> np.ndarray:
    """pydicom's ``correct_unused_bits``: the values as Bits Stored bits (PS3.5 8.1.1), with
    the bits above them ignored (sign-extended when signed). The shifts run only where some
    value sets those bits; most files leave them clear, and one pass finds that."""
    bits = arr.dtype.itemsize * 8
    if arr.dtype.kind not in "iu" or not 0 < bits_stored < bits or arr.size == 0:
        return arr
    if arr.dtype.kind == "u":
        clear = int(arr.max()) < 1 << bits_stored
    else:
        limit = 1 << (bits_stored - 1)
        clear = -limit <= int(arr.min()) and int(arr.max()) < limit
    if clear:
        return arr
    arr = arr.copy()
    np.left_shift(arr, bits - bits_stored, out=arr)
    np.right_shift(arr, bits - bits_stored, out=arr)
    return arr


# -- pixels --------------------------------------------------------------------------------


def _to_display(stored: np.ndarray, ds: Dataset, name: str, photometric: str) -> np.ndarray:
    """Modality LUT, VOI LUT/window, MONOCHROME1 inversion, scale to float32 [0, 1].

    What nearly every radiograph has, a linear rescale and a window function (PS3.3 C.11.2.1.2),
    is computed here in float32, in place: pydicom's float64 functions took ~150 ms for a
    3000 x 2500 film, as long as the model. LUT tables (Modality or VOI LUT Sequences) and
    anything else go through pydicom (:func:`_display_by_pydicom`), which is also the reference
    the tests hold this to. The header is only read here; pydicom's functions, which write
    coerced values back, get a private copy of what they read (:func:`_lut_attributes`).
    """
    function = str(ds.get("VOILUTFunction") or "LINEAR").upper()
    if (
        ds.get("ModalityLUTSequence")
        or ds.get("VOILUTSequence")
        or photometric not in ("MONOCHROME1", "MONOCHROME2")
        or (_has_window(ds) and function not in _WINDOW_FUNCTIONS)
    ):
        return _display_by_pydicom(stored, _lut_attributes(ds), name, photometric)
    values = stored.astype(np.float32)
    slope = 1.0
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:  # as pydicom's apply_modality_lut
        try:
            slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        except CORRUPT_DATA_ERRORS as exc:
            raise InvalidInputError(
                f"{name}: unusable Modality LUT: {_one_line(exc)}", reason="bad-header"
            ) from exc
        if not _rescale_is_finite(stored, slope, intercept):
            raise InvalidInputError(
                f"{name}: unusable Modality LUT: Rescale Slope/Intercept give non-finite values",
                reason="bad-header",
            )
        # each pass over a film costs ~2 ms: the identity (slope 1, intercept 0) skips its own
        if slope != 1.0:
            values *= np.float32(slope)
        if intercept != 0.0:
            values += np.float32(intercept)
    shown = None
    if _has_window(ds):
        try:
            shown = _window(values, ds, function, descending=slope < 0)
        except CORRUPT_DATA_ERRORS as exc:  # malformed window: show the data range instead
            logger.warning("%s: VOI LUT/window ignored (%s)", name, _one_line(exc))
    if shown is None:
        low, high = float(values.min()), float(values.max())
        if not high > low:
            return np.zeros(stored.shape, dtype=np.float32)
        values -= low
        values /= high - low
        shown = values
    if photometric == "MONOCHROME1":
        np.subtract(1.0, shown, out=shown)
    return shown


def _rescale_is_finite(stored: np.ndarray, slope: float, intercept: float) -> bool:
    """Whether ``stored * slope + intercept`` in float32 is finite everywhere: a float32
    product or sum of finite values is monotone in the stored value and infinite only where it
    overflows, so the two extreme stored values decide (no pass over the film's floats)."""
    if stored.size == 0:
        return math.isfinite(slope) and math.isfinite(intercept)
    ends = np.array([stored.min(), stored.max()], dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        ends *= np.float32(slope)
        ends += np.float32(intercept)
    return bool(np.isfinite(ends).all())


#: The VOI LUT Functions :func:`_window` computes (PS3.3 C.11.2.1.2, C.11.2.1.3).
_WINDOW_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


def _has_window(ds: Dataset) -> bool:
    return ds.get("WindowCenter") not in (None, "") and ds.get("WindowWidth") not in (None, "")


def _first(ds: Dataset, keyword: str) -> float:
    """The first value of a window attribute (pydicom's default view), as a finite float."""
    element = ds[keyword]
    value = float(element.value[0] if element.VM > 1 else element.value)
    if not math.isfinite(value):
        raise ValueError(f"{keyword} is not finite")
    return value


def _window(values: np.ndarray, ds: Dataset, function: str, descending: bool) -> np.ndarray:
    """The window of ``values`` (float32, after the rescale) mapped onto [0, 1], computed in
    place: the function's output over its full output range, which is what pydicom's
    ``apply_windowing`` gives once scaled by its range (inverted when the rescale slope is
    negative, as that range is then). Raises ValueError where pydicom does, before writing."""
    center, width = _first(ds, "WindowCenter"), _first(ds, "WindowWidth")
    if function == "LINEAR":
        if width < 1:
            raise ValueError("Window Width must be at least 1 for a LINEAR window")
        center, width = center - 0.5, width - 1
    elif width <= 0:
        raise ValueError(f"Window Width must be greater than 0 for a {function} window")
    if "RescaleSlope" in ds and "RescaleIntercept" in ds and float(ds.RescaleSlope) == 0:
        raise ValueError("a Rescale Slope of 0 leaves the window no output range")
    with np.errstate(over="ignore"):
        if function == "SIGMOID":  # 1 / (1 + exp(-4 (x - c) / w))
            values -= center
            values *= -4.0 / width
            np.exp(values, out=values)
            values += 1.0
            np.reciprocal(values, out=values)
        elif width == 0:  # LINEAR of width 1: a step at the center
            np.greater(values, center, out=values)
        else:  # (x - c) / w + 0.5, clipped
            values -= center
            values /= width
            values += 0.5
            np.clip(values, 0.0, 1.0, out=values)
    if descending:
        np.subtract(1.0, values, out=values)
    return values


def _display_by_pydicom(stored: np.ndarray, ds: Dataset, name: str, photometric: str) -> np.ndarray:
    """:func:`_to_display` through pydicom's LUT functions (float64): for LUT tables, and the
    reference the tests hold the fast path to."""
    try:
        values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    except CORRUPT_DATA_ERRORS as exc:
        raise InvalidInputError(
            f"{name}: unusable Modality LUT: {_one_line(exc)}", reason="bad-header"
        ) from exc
    if not np.isfinite(values).all():
        raise InvalidInputError(
            f"{name}: unusable Modality LUT: Rescale Slope/Intercept give non-finite values",
            reason="bad-header",
        )
    try:
        shown, out_range = _apply_voi(values, ds)
    except CORRUPT_DATA_ERRORS as exc:  # malformed window or LUT: show the data range instead
        logger.warning("%s: VOI LUT/window ignored (%s)", name, _one_line(exc))
        shown, out_range = values, None
    if out_range is not None and not (
        np.isfinite(out_range).all() and np.isfinite(shown).all() and out_range[1] > out_range[0]
    ):
        logger.warning("%s: VOI LUT/window ignored (it gives no finite range)", name)
        shown, out_range = values, None
    low, high = out_range if out_range is not None else (float(shown.min()), float(shown.max()))
    if not high > low:
        return np.zeros(stored.shape, dtype=np.float32)
    scaled = np.clip((shown - low) / (high - low), 0.0, 1.0)
    if photometric == "MONOCHROME1":
        scaled = 1.0 - scaled
    return scaled.astype(np.float32)


#: What pydicom's Modality and VOI LUT functions read (pydicom.pixels.processing).
_LUT_KEYWORDS = (
    "BitsStored", "ModalityLUTSequence", "PhotometricInterpretation", "PixelRepresentation",
    "RescaleIntercept", "RescaleSlope", "VOILUTFunction", "VOILUTSequence", "WindowCenter",
    "WindowWidth",
)  # fmt: skip


def _lut_attributes(header: Dataset) -> Dataset:
    """A private copy of the attributes the LUT functions read (they write coerced values
    back), with the header's encoding, which an OW LUT Data needs; copying the whole header
    cost a fifth of decoding."""
    ds = Dataset()
    for keyword in _LUT_KEYWORDS:
        if keyword in header:
            element = header[keyword]  # a new element; a LUT sequence's items copied too
            ds[keyword] = copy.deepcopy(element) if element.VR == "SQ" else copy.copy(element)
    if getattr(header, "file_meta", None) is not None:
        ds.file_meta = header.file_meta  # read only
    implicit, little = header.original_encoding
    ds.set_original_encoding(implicit, little, header.original_character_set)
    return ds


def _apply_voi(values: np.ndarray, ds: Dataset) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Apply the first VOI LUT (preferred) or the first window; return its output range too.

    The range is the LUT's (or the window function's) full output range, not the image's, so
    what the window clips stays black or white (PS3.3 C.11.2.1.2).
    """
    items = ds.get("VOILUTSequence")
    if items and "LUTDescriptor" in items[0] and "LUTData" in items[0]:
        entries, first, _ = (int(v) for v in items[0].LUTDescriptor)
        entries = entries or 2**16
        inputs = np.clip(np.rint(values), first, first + entries - 1).astype(np.int64)
        table = np.asarray(
            apply_voi_lut(np.arange(first, first + entries, dtype=np.int64), ds), np.float64
        )
        shown = np.asarray(apply_voi_lut(inputs, ds), np.float64)
        return shown, (float(table.min()), float(table.max()))
    if _has_window(ds):
        probe = np.asarray(apply_voi_lut(np.array([-np.inf, np.inf]), ds), np.float64)
        shown = np.asarray(apply_voi_lut(values, ds), np.float64)
        return shown, (float(probe.min()), float(probe.max()))
    return values, None


# -- header values -------------------------------------------------------------------------


def _pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    """(row, column) mm from Pixel Spacing, else Imager Pixel Spacing; None if unusable."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        try:
            values = [float(v) for v in ds.get(keyword) or ()]
        except (TypeError, ValueError, OverflowError):
            logger.debug("malformed %s ignored", keyword)
            continue
        if len(values) == 2 and all(math.isfinite(v) and v > 0 for v in values):
            return (values[0], values[1])
    return None


def header_text(ds: Dataset, keyword: str) -> str:
    """An attribute as a stripped string; ``""`` when absent, empty or malformed."""
    try:
        value = ds.get(keyword)
    except CORRUPT_DATA_ERRORS:
        return ""
    if value is None:
        return ""
    if isinstance(value, (list, MultiValue)):
        return "\\".join(str(v) for v in value).strip()
    return str(value).strip()


def header_int(ds: Dataset, keyword: str, default: int) -> int:
    """An integer attribute, ``default`` when absent, empty, multi-valued or malformed."""
    try:
        value = ds.get(keyword)
        return default if value in (None, "") else int(value)
    except CORRUPT_DATA_ERRORS:
        return default


def _one_line(exc: BaseException) -> str:
    """An exception message folded onto one line (pydicom's plugin messages span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__
