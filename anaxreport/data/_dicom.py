"""The DICOM side of a phantom: CR Image or DX (For Presentation) data sets.

Each data set carries the modules its IOD requires (PS3.3 A.2 CR, A.26 DX) so dciodvfy finds
no error, and varies the storage details the real world varies: MONOCHROME1/2, Bits Stored
10-16, Rescale Slope/Intercept and a VOI window on some.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
)

from anaxreport.errors import ConfigurationError

if TYPE_CHECKING:
    from anaxreport.data.phantom import StudyIdentity

__all__ = ["MANUFACTURER", "build_dataset"]

MANUFACTURER = "anaxreport phantom"
_BITS = (10, 12, 14, 16)


_UID_NAMESPACE = uuid.UUID("5b0b7c36-0b7e-4c3e-9a57-2f1d2a1f0a11")


def _uid(ident: StudyIdentity, what: str) -> str:
    """A deterministic ``2.25`` UID (PS3.5 B.2): a name-based UUID of the seed and the role.

    ``generate_uid(prefix=None, ...)`` ignores its entropy sources, so it cannot be used here.
    """
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, f'{ident.uid_seed}/{what}').int}"


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _store(
    pixels: np.ndarray, bits: int, mono1: bool, rng: np.random.Generator
) -> tuple[np.ndarray, int, int]:
    """Quantise the display image into ``bits``; MONOCHROME1 stores it inverted."""
    top = (1 << bits) - 1
    lo = int(rng.uniform(0.0, 0.08) * top)
    hi = int(rng.uniform(0.88, 1.0) * top)
    values = np.round(lo + pixels * (hi - lo)).astype(np.int64)
    if mono1:
        values = top - values
    values = np.clip(values, 0, top).astype(np.uint16)
    return values, int(values.min()), int(values.max())


def build_dataset(
    pixels: np.ndarray,
    ident: StudyIdentity,
    view: str,
    spacing: float,
    sex: str,
    rng: np.random.Generator,
    *,
    photometric: str | None = None,
    bits_stored: int | None = None,
    modality: str | None = None,
) -> Dataset:
    """A complete CR or DX data set (with file meta) holding ``pixels``."""
    modality = modality or ("CR" if rng.random() < 0.5 else "DX")
    photometric = photometric or ("MONOCHROME1" if rng.random() < 0.3 else "MONOCHROME2")
    bits = bits_stored or int(rng.choice(_BITS))
    if modality not in ("CR", "DX"):
        raise ConfigurationError(f"modality must be 'CR' or 'DX', got {modality!r}")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ConfigurationError(f"photometric must be MONOCHROME1/2, got {photometric!r}")
    if bits not in _BITS:
        raise ConfigurationError(f"bits_stored must be one of {_BITS}, got {bits!r}")
    mono1 = photometric == "MONOCHROME1"
    values, vmin, vmax = _store(pixels, bits, mono1, rng)
    ds = Dataset()
    sop_class = (
        ComputedRadiographyImageStorage
        if modality == "CR"
        else (DigitalXRayImageStorageForPresentation)
    )
    _patient_study_series(ds, ident, modality, view, sex, sop_class)
    rows, cols = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits, bits - 1
    ds.PixelRepresentation = 0
    ds.ImagerPixelSpacing = [round(spacing, 6), round(spacing, 6)]
    slope, intercept = 1.0, 0.0
    if modality == "DX":
        _dx_modules(ds, mono1, view)
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
    else:
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        if rng.random() < 0.5:
            ds.PixelSpacing = [round(spacing, 6), round(spacing, 6)]
        if rng.random() < 0.5:
            slope = float(rng.choice([1.0, 1.0, 0.5, 2.0]))
            intercept = float(rng.choice([0.0, -1024.0, -(1 << (bits - 1))]))
            ds.RescaleIntercept, ds.RescaleSlope = f"{intercept:g}", f"{slope:g}"
            ds.RescaleType = "US"
    if modality == "DX" or rng.random() < 0.6:
        lo, hi = vmin * slope + intercept, vmax * slope + intercept
        ds.WindowCenter = f"{(lo + hi) / 2.0:.1f}"
        ds.WindowWidth = f"{max(hi - lo, 2.0):.1f}"
        ds.VOILUTFunction = "LINEAR"
    ds.LossyImageCompression = "00"
    ds.BurnedInAnnotation = "NO"
    ds.PixelData = values.tobytes()
    return ds


def _patient_study_series(
    ds: Dataset, ident: StudyIdentity, modality: str, view: str, sex: str, sop_class: str
) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = _uid(ident, "sop")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = ident.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = ident.study_time
    ds.AccessionNumber = ident.study_id[-8:]
    ds.Modality = modality
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = "synthetic chest"
    ds.SoftwareVersions = "1"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CHEST (PA AND LAT)" if view == "PA" else "CHEST (PORTABLE AP)"
    ds.SeriesDescription = f"CHEST {view}"
    ds.PatientName = f"Phantom^{ident.subject_id}"
    ds.PatientID = ident.subject_id
    ds.PatientBirthDate = f"{int(ident.study_date[:4]) - 55}0101"
    ds.PatientSex = sex
    ds.BodyPartExamined = "CHEST"
    ds.StudyInstanceUID = _uid(ident, "study")
    ds.SeriesInstanceUID = _uid(ident, "series")
    ds.StudyID = ident.study_id[-8:]
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.PatientOrientation = ["L", "F"]  # patient's right on the image left, feet down
    ds.ViewPosition = view
    ds.DeidentificationMethod = "synthetic phantom, no patient data"


def _dx_modules(ds: Dataset, mono1: bool, view: str) -> None:
    """DX Series, Anatomy Imaged, Image, Detector and Acquisition Context (PS3.3 A.26)."""
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.ImageLaterality = "U"
    ds.AnatomicRegionSequence = Sequence([_code("43799004", "SCT", "Chest")])
    ds.PixelIntensityRelationship = "LOG"
    # +1: lower values mean less X-ray intensity (MONOCHROME1 here: bone is dark in storage).
    ds.PixelIntensityRelationshipSign = 1 if mono1 else -1
    ds.PresentationLUTShape = "INVERSE" if mono1 else "IDENTITY"
    ds.DetectorType = "SCINTILLATOR"
    ds.AcquisitionContextSequence = Sequence([])
    ds.PositionerType = "COLUMN"
    value, meaning = _VIEW_CODES[view]
    view_code = _code(value, "SCT", meaning)
    view_code.ViewModifierCodeSequence = Sequence([])
    ds.ViewCodeSequence = Sequence([view_code])


_VIEW_CODES = {
    "PA": ("272479007", "postero-anterior"),
    "AP": ("399348003", "antero-posterior"),
}
