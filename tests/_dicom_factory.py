"""Minimal, well-formed DICOM images for tests (CR Image Storage unless told otherwise).

Kept independent of the phantom generator: a test that needs "a DICOM image with these
attributes" builds one here in a few lines and writes it with pydicom.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"

__all__ = ["CR_IMAGE_STORAGE", "acceptance_files", "gradient", "make_dataset", "write"]


def gradient(
    rows: int = 96, columns: int = 80, bits_stored: int = 12, signed: bool = False
) -> np.ndarray:
    """A deterministic image spanning the full stored range (top-left darkest)."""
    lo, hi = (
        (-(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1)
        if signed
        else (0, 2**bits_stored - 1)
    )
    ramp = np.add.outer(np.arange(rows), np.arange(columns)) / (rows + columns - 2)
    return np.round(lo + ramp * (hi - lo)).astype(np.int16 if signed else np.uint16)


def make_dataset(
    pixels: np.ndarray | None = None,
    *,
    bits_stored: int = 12,
    photometric: str = "MONOCHROME2",
    **attributes: Any,
) -> Dataset:
    """A CR image data set with file meta (Explicit VR Little Endian) around ``pixels``.

    ``pixels`` is (rows, columns) integer data (default :func:`gradient`), or (rows, columns, 3)
    uint8 for RGB, or (frames, rows, columns) for multi-frame. Signedness follows the dtype.
    ``attributes`` are set last by keyword (``None`` deletes), so any default can be overridden.
    """
    if pixels is None:
        pixels = gradient(bits_stored=bits_stored)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = CR_IMAGE_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "Test^Patient"
    ds.PatientID = "TEST-001"
    ds.PatientBirthDate = "19600101"
    ds.PatientSex = "F"
    ds.AccessionNumber = "ACC1"
    ds.StudyID = "S1"
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PixelSpacing = [0.2, 0.2]

    if pixels.ndim == 3 and pixels.shape[-1] == 3 and pixels.dtype == np.uint8:
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated = ds.BitsStored = 8
        rows, columns = pixels.shape[:2]
    else:
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        ds.BitsAllocated = 8 if pixels.dtype.itemsize == 1 else 16
        ds.BitsStored = min(bits_stored, ds.BitsAllocated)
        rows, columns = pixels.shape[-2:]
        if pixels.ndim == 3:
            ds.NumberOfFrames = pixels.shape[0]
    ds.Rows, ds.Columns = rows, columns
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(np.issubdtype(pixels.dtype, np.signedinteger))
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    for keyword, value in attributes.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def write(ds: Dataset, path: Path) -> Path:
    """Write ``ds`` as a DICOM Part 10 file and return the path."""
    ds.save_as(path, enforce_file_format=True)
    return path


def acceptance_files(tmp_path: Path) -> dict[str, Path]:
    """One file of each kind the gate must refuse (by its reason code) and a good one ("")."""
    lateral = write(make_dataset(ViewPosition="LL"), tmp_path / "lateral.dcm")
    extremity = write(make_dataset(BodyPartExamined="HAND"), tmp_path / "hand.dcm")
    colour = write(make_dataset(np.zeros((96, 80, 3), np.uint8)), tmp_path / "colour.dcm")
    frames = write(make_dataset(np.stack([gradient()] * 2)), tmp_path / "frames.dcm")
    truncated = write(make_dataset(), tmp_path / "truncated.dcm")
    truncated.write_bytes(truncated.read_bytes()[:-999])
    header_only = write(make_dataset(PixelData=None), tmp_path / "header_only.dcm")
    good = write(make_dataset(), tmp_path / "good.dcm")
    return {
        "lateral-view": lateral,
        "not-chest": extremity,
        "colour-image": colour,
        "multi-frame": frames,
        "truncated": truncated,
        "no-pixel-data": header_only,
        "": good,
    }
