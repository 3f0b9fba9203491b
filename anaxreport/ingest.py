"""DICOM in, :class:`Radiograph` out; and the first input gate (DESIGN.md §2, §7).

:func:`read_radiograph` turns a DICOM file or a :class:`pydicom.dataset.Dataset` into a frozen
:class:`Radiograph`: display-space float pixels in [0, 1] (1 = white/dense), source geometry,
identity and a copy of the header without pixel data, so nothing downstream re-reads the file.
The pixel pipeline follows DICOM PS3.4 N.2.1: modality LUT (PS3.3 C.11.1), VOI LUT or window
(C.11.2), then MONOCHROME1 inversion (C.7.6.3.1.2). :func:`check_supported` refuses images
anaxreport is not made for. Every failure is a typed :mod:`anaxreport.errors` error whose
one-line message names the file.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder
from pydicom.tag import Tag
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from anaxreport.errors import (
    InputFileNotFoundError,
    InvalidInputError,
    NoPixelDataError,
    NotDicomError,
    UnsupportedStudyError,
)

__all__ = [
    "ALLOWED_MODALITIES",
    "FRONTAL_VIEWS",
    "LATERAL_VIEWS",
    "MAX_SIDE",
    "MIN_SIDE",
    "Radiograph",
    "StudyIdentity",
    "check_supported",
    "read_radiograph",
]

logger = logging.getLogger(__name__)

#: Modalities the gate accepts: computed and digital radiography, and secondary capture
#: (digitised film, exported chest images; SC or OT in the Modality attribute).
ALLOWED_MODALITIES = frozenset({"CR", "DX", "SC", "OT"})
#: View Position (0018,5101) values taken as frontal; empty (absent) passes as well.
FRONTAL_VIEWS = frozenset({"", "PA", "AP"})
#: View Position values that mean a lateral projection (any value containing LATERAL does too).
LATERAL_VIEWS = frozenset({"LL", "RL", "LAT", "LATERAL"})
#: Rows and Columns outside [MIN_SIDE, MAX_SIDE] are refused as absurd.
MIN_SIDE = 64
MAX_SIDE = 8192

_PIXEL_TAGS = (
    Tag(0x7FE0, 0x0010),  # Pixel Data
    Tag(0x7FE0, 0x0008),  # Float Pixel Data
    Tag(0x7FE0, 0x0009),  # Double Float Pixel Data
)
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
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
        return cls(*(_text(ds, keyword) for keyword in _IDENTITY_KEYWORDS))


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
        if pixels.size and not (
            np.isfinite(pixels).all() and pixels.min() >= 0.0 and pixels.max() <= 1.0
        ):
            raise ValueError("Radiograph.pixels must be finite and within [0, 1]")
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


def read_radiograph(source: str | os.PathLike[str] | Dataset) -> Radiograph:
    """Read a DICOM file or data set into a :class:`Radiograph`.

    A :class:`~pydicom.dataset.Dataset` argument is not modified. Compressed transfer syntaxes
    are decoded by pydicom's plugins (pylibjpeg, openjpeg, libjpeg, RLE).

    Raises
    ------
    InputFileNotFoundError
        ``source`` is a path that does not exist or is not a regular file.
    NotDicomError
        The file is not DICOM.
    NoPixelDataError
        The data set has no Pixel Data.
    UnsupportedStudyError
        The pixels cannot form one grey-scale image (colour, multi-frame) or are absurdly large.
    InvalidInputError
        The pixel data cannot be decoded (missing plugin, truncated, inconsistent header).
    """
    if isinstance(source, Dataset):
        filename = getattr(source, "filename", None)  # set by dcmread; may be a file object
        name = os.fspath(filename) if isinstance(filename, (str, os.PathLike)) else "<dataset>"
        ds = copy.deepcopy(source)  # decode and strip a private copy; the caller's is untouched
    else:
        name = os.fspath(source)
        ds = _read_file(Path(name), name)
    if not any(tag in ds for tag in _PIXEL_TAGS) and "SOPClassUID" not in ds:
        raise NotDicomError(f"{name}: not a DICOM image (no SOP Class UID and no Pixel Data)")
    if "PixelData" not in ds:
        raise NoPixelDataError(f"{name}: DICOM data set has no Pixel Data (7FE0,0010)")
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
        samples, frames = _int(ds, "SamplesPerPixel", 1), _int(ds, "NumberOfFrames", 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise InvalidInputError(f"{name}: unusable Image Pixel module: {_one_line(exc)}") from exc
    _refuse_unformable(name, photometric, samples, frames, rows, columns)
    stored = _decode(ds, name)
    for tag in _PIXEL_TAGS:
        if tag in ds:
            del ds[tag]  # also drops pydicom's cached array
    pixels = _to_display(stored, ds, name, photometric)
    radiograph = Radiograph(
        pixels=pixels,
        rows=rows,
        columns=columns,
        pixel_spacing=_pixel_spacing(ds),
        view_position=_text(ds, "ViewPosition").upper(),
        modality=_text(ds, "Modality"),
        photometric_interpretation=_text(ds, "PhotometricInterpretation"),
        bits_stored=_int(ds, "BitsStored", _int(ds, "BitsAllocated", 0)),
        identity=StudyIdentity.from_dataset(ds),
        header=ds,
        source=name,
    )
    logger.debug("read %s: %dx%d %s", name, rows, columns, photometric)
    return radiograph


def check_supported(radiograph: Radiograph) -> None:
    """The first input gate: raise :class:`UnsupportedStudyError` for images we do not read.

    Refused: colour or multi-frame images, modalities other than CR, DX or secondary capture
    (SC/OT), lateral or other non-frontal views (View Position other than PA, AP or empty), and
    rows or columns outside [``MIN_SIDE``, ``MAX_SIDE``]. Returns None when the image passes.
    """
    name, header = radiograph.source, radiograph.header
    _refuse_unformable(
        name,
        radiograph.photometric_interpretation.strip().upper(),
        _int(header, "SamplesPerPixel", 1),
        _int(header, "NumberOfFrames", 1),
        radiograph.rows,
        radiograph.columns,
    )
    modality = radiograph.modality.strip().upper()
    if modality not in ALLOWED_MODALITIES:
        raise UnsupportedStudyError(
            f"{name}: modality {modality!r} is not supported; allowed: "
            f"{', '.join(sorted(ALLOWED_MODALITIES))}"
        )
    view = " ".join(radiograph.view_position.upper().replace("_", " ").split())
    if view in LATERAL_VIEWS or "LATERAL" in view:
        raise UnsupportedStudyError(
            f"{name}: lateral view (View Position {view!r}) is not supported; "
            "allowed: PA, AP or empty"
        )
    if view not in FRONTAL_VIEWS:
        raise UnsupportedStudyError(
            f"{name}: View Position {view!r} is not a frontal view; allowed: PA, AP or empty"
        )
    if min(radiograph.rows, radiograph.columns) < MIN_SIDE:
        raise UnsupportedStudyError(
            f"{name}: image of {radiograph.rows}x{radiograph.columns} pixels is too small; "
            f"rows and columns must be within {MIN_SIDE}..{MAX_SIDE}"
        )


# -- reading -------------------------------------------------------------------------------


def _read_file(path: Path, name: str) -> Dataset:
    """dcmread with typed errors; a preamble-less file only if it is a real image data set."""
    if not path.exists():
        raise InputFileNotFoundError(f"{name}: no such file")
    if not path.is_file():
        raise InputFileNotFoundError(f"{name}: not a regular file")
    try:
        return pydicom.dcmread(path)
    except InvalidDicomError as exc:
        first_error: Exception = exc
    except Exception as exc:  # any parse failure of a file that claims to be DICOM
        raise InvalidInputError(f"{name}: unreadable DICOM file: {_one_line(exc)}") from exc
    try:
        with warnings.catch_warnings():  # forced parsing of garbage warns on every element
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, force=True)
            usable = "PixelData" in ds and int(ds.Rows) > 0 and int(ds.Columns) > 0
    except Exception:  # arbitrary bytes can fail in arbitrary ways; that means "not DICOM"
        usable = False
    if not usable:
        raise NotDicomError(f"{name}: not a DICOM file ({_one_line(first_error)})") from first_error
    logger.debug("%s: read without DICOM preamble/file meta", name)
    return ds


def _transfer_syntax(ds: Dataset, name: str) -> UID:
    """The data set's transfer syntax; inferred from its encoding when file meta lacks one."""
    file_meta = getattr(ds, "file_meta", None)
    uid = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if uid:
        return UID(str(uid))
    if ds["PixelData"].is_undefined_length:
        raise InvalidInputError(
            f"{name}: encapsulated Pixel Data but no Transfer Syntax UID (0002,0010)"
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
    file_meta.TransferSyntaxUID = uid
    return UID(uid)


def _decode(ds: Dataset, name: str) -> np.ndarray:
    """Decode the stored values of the single frame, with typed errors."""
    uid = _transfer_syntax(ds, name)
    try:
        decoder = get_decoder(uid)
    except NotImplementedError as exc:
        raise InvalidInputError(
            f"{name}: no decoder for transfer syntax {uid.name} ({uid})"
        ) from exc
    try:
        arr, _ = decoder.as_array(ds, index=0, raw=True)
    except Exception as exc:  # plugins and numpy raise many types; all mean "cannot decode"
        raise InvalidInputError(
            f"{name}: cannot decode Pixel Data ({uid.name}): {_one_line(exc)}"
        ) from exc
    if arr.ndim != 2:
        raise InvalidInputError(f"{name}: decoded Pixel Data has shape {arr.shape}, expected 2-D")
    return arr


# -- pixels --------------------------------------------------------------------------------


def _to_display(stored: np.ndarray, header: Dataset, name: str, photometric: str) -> np.ndarray:
    """Modality LUT, VOI LUT/window, MONOCHROME1 inversion, scale to float32 [0, 1]."""
    ds = copy.deepcopy(header)  # pydicom's LUT functions write back coerced values
    try:
        values = apply_modality_lut(stored, ds)
    except Exception as exc:
        raise InvalidInputError(f"{name}: unusable Modality LUT: {_one_line(exc)}") from exc
    try:
        values, out_range = _apply_voi(values, ds)
    except Exception as exc:  # malformed window or LUT: show the data range instead
        logger.warning("%s: VOI LUT/window ignored (%s)", name, _one_line(exc))
        out_range = None
    values = np.asarray(values, dtype=np.float64)
    if out_range is None:
        out_range = (float(values.min()), float(values.max()))
    low, high = out_range
    if not high > low:
        return np.zeros(stored.shape, dtype=np.float32)
    scaled = np.clip((values - low) / (high - low), 0.0, 1.0)
    if photometric == "MONOCHROME1":
        scaled = 1.0 - scaled
    return scaled.astype(np.float32)


def _apply_voi(values: np.ndarray, ds: Dataset) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Apply the first VOI LUT (preferred) or first window; return the output range too."""
    items = ds.get("VOILUTSequence")
    if items and "LUTDescriptor" in items[0] and "LUTData" in items[0]:
        entries, first, _ = (int(v) for v in items[0].LUTDescriptor)
        entries = entries or 2**16
        inputs = np.clip(np.rint(values), first, first + entries - 1).astype(np.int64)
        table = apply_voi_lut(np.arange(first, first + entries, dtype=np.int64), ds)
        return apply_voi_lut(inputs, ds), (float(table.min()), float(table.max()))
    if ds.get("WindowCenter") not in (None, "") and ds.get("WindowWidth") not in (None, ""):
        probe = apply_voi_lut(np.array([-np.inf, np.inf]), ds)
        return apply_voi_lut(values, ds), (float(probe.min()), float(probe.max()))
    return values, None


# -- header values -------------------------------------------------------------------------


def _refuse_unformable(
    name: str, photometric: str, samples: int, frames: int, rows: int, columns: int
) -> None:
    """Refuse what cannot (or should not) become one grey-scale image, before decoding."""
    if samples != 1 or photometric not in _MONOCHROME:
        raise UnsupportedStudyError(
            f"{name}: colour image (Photometric Interpretation {photometric!r}, Samples per "
            f"Pixel {samples}) is not supported; allowed: MONOCHROME1 or MONOCHROME2, 1 sample"
        )
    if frames > 1:
        raise UnsupportedStudyError(
            f"{name}: multi-frame image ({frames} frames) is not supported; allowed: 1 frame"
        )
    if max(rows, columns) > MAX_SIDE or min(rows, columns) < 1:
        raise UnsupportedStudyError(
            f"{name}: image of {rows}x{columns} pixels is out of range; rows and columns "
            f"must be within {MIN_SIDE}..{MAX_SIDE}"
        )


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


def _text(ds: Dataset, keyword: str) -> str:
    """An attribute as a stripped string; ``""`` when absent, empty or malformed."""
    try:
        value = ds.get(keyword)
    except (TypeError, ValueError):
        return ""
    if value is None:
        return ""
    if isinstance(value, (list, MultiValue)):
        return "\\".join(str(v) for v in value).strip()
    return str(value).strip()


def _int(ds: Dataset, keyword: str, default: int) -> int:
    """An integer attribute, ``default`` when absent, empty or malformed."""
    try:
        value = ds.get(keyword)
        return default if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return default


def _one_line(exc: BaseException) -> str:
    """An exception message folded onto one line (pydicom's plugin messages span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__
