"""The single source of truth for regions, findings and their codes.

Order matters: a region's position in :data:`REGIONS` is its detector class id minus one and its
row in the 18×9 target; a finding's position in :data:`FINDINGS` is its column (DESIGN.md §3).
Names are Chest ImaGenome's ``bbox_name`` and label strings; abbreviations follow Table 2 of the
AnaXNet paper; codes follow DESIGN.md §5.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "ABSENT",
    "BOUNDED_BY",
    "CERTAINTY_OF_FINDING",
    "FINDINGS",
    "FINDING_NAMES",
    "LOCAL_SCHEME",
    "PRESENT",
    "PROCEDURE",
    "REGIONS",
    "REGION_NAMES",
    "TRACKING_UID",
    "CodedConcept",
    "Finding",
    "FindingCategory",
    "Laterality",
    "Region",
    "finding",
    "region",
]

#: FHIR system URIs for the DICOM coding scheme designators used here (DESIGN.md §5).
FHIR_SYSTEMS: dict[str, str] = {
    "SCT": "http://snomed.info/sct",
    "LN": "http://loinc.org",
    "DCM": "http://dicom.nema.org/resources/ontology/DCM",
    "UCUM": "http://unitsofmeasure.org",
}

#: The project's own coding scheme, for concepts that have no verified standard code.
LOCAL_SCHEME = "99ANAX"
FHIR_SYSTEMS[LOCAL_SCHEME] = "urn:anaxreport:codes"


@dataclass(frozen=True)
class CodedConcept:
    """A code as DICOM writes it: value, coding scheme designator, meaning."""

    value: str
    scheme: str
    meaning: str

    def __post_init__(self) -> None:
        if not self.value or not self.meaning:
            raise ValueError(f"CodedConcept needs a value and a meaning, got {self!r}")
        if self.scheme not in FHIR_SYSTEMS:
            raise ValueError(
                f"CodedConcept scheme {self.scheme!r} is not one of {sorted(FHIR_SYSTEMS)}"
            )

    @property
    def fhir_system(self) -> str:
        """The FHIR ``system`` URI of this code's scheme."""
        return FHIR_SYSTEMS[self.scheme]


class Laterality(enum.Enum):
    """Laterality of a region; unpaired structures have none."""

    RIGHT = CodedConcept("24028007", "SCT", "Right")
    LEFT = CodedConcept("7771000", "SCT", "Left")
    UNPAIRED = None


class FindingCategory(enum.Enum):
    """Chest ImaGenome attribute categories of the 9 findings."""

    ANATOMICAL_FINDING = "anatomicalfinding"
    DISEASE = "disease"


@dataclass(frozen=True)
class Region:
    """One of the 18 anatomical regions the detector boxes.

    ``site`` is the anatomic location; ``laterality`` and ``modifier`` post-coordinate it as DICOM
    TID 1500 does. ``fhir_site`` is a pre-coordinated code where one exists (right/left lung).
    """

    index: int
    name: str
    abbreviation: str
    laterality: Laterality
    site: CodedConcept
    modifier: CodedConcept | None = None
    fhir_site: CodedConcept | None = None

    @property
    def class_id(self) -> int:
        """The detector's class id (0 is background)."""
        return self.index + 1

    def __hash__(self) -> int:  # equal regions have equal indices; hashing every field is slow
        return self.index


@dataclass(frozen=True)
class Finding:
    """One of the 9 findings AnaXNet scores per region."""

    index: int
    name: str
    abbreviation: str
    category: FindingCategory
    code: CodedConcept

    def __hash__(self) -> int:  # equal findings have equal indices; hashing every field is slow
        return self.index

    @property
    def attribute(self) -> str:
        """The positive Chest ImaGenome attribute string, ``category|yes|name``."""
        return f"{self.category.value}|yes|{self.name}"


_LUNG = CodedConcept("39607008", "SCT", "Lung")
_APEX = CodedConcept("86598002", "SCT", "Apex of lung")
_UPPER_ZONE = CodedConcept("281392002", "SCT", "Upper lung zone")
_MID_ZONE = CodedConcept("281393007", "SCT", "Middle lung zone")
_LOWER_ZONE = CodedConcept("281394001", "SCT", "Lower lung zone")
_HILUM = CodedConcept("46750007", "SCT", "Hilum of lung")
_COSTOPHRENIC = CodedConcept("CPA", LOCAL_SCHEME, "Costophrenic angle")
_MEDIASTINUM = CodedConcept("72410000", "SCT", "Mediastinum")
_SUPERIOR = CodedConcept("264217000", "SCT", "Superior")
_HEART = CodedConcept("80891009", "SCT", "Heart")
_TRACHEA = CodedConcept("44567001", "SCT", "Trachea")


def _sided(start: int, side: Laterality, prefix: str, letter: str) -> list[Region]:
    lung_fhir = (
        CodedConcept("3341006", "SCT", "Right lung")
        if side is Laterality.RIGHT
        else CodedConcept("44029006", "SCT", "Left lung")
    )
    parts = [
        ("lung", "L", _LUNG, lung_fhir),
        ("apical zone", "AZ", _APEX, None),
        ("upper lung zone", "ULZ", _UPPER_ZONE, None),
        ("mid lung zone", "MLZ", _MID_ZONE, None),
        ("lower lung zone", "LLZ", _LOWER_ZONE, None),
        ("hilar structures", "HS", _HILUM, None),
        ("costophrenic angle", "CA", _COSTOPHRENIC, None),
    ]
    return [
        Region(start + i, f"{prefix} {part}", letter + abbr, side, site, None, fhir)
        for i, (part, abbr, site, fhir) in enumerate(parts)
    ]


REGIONS: tuple[Region, ...] = (
    *_sided(0, Laterality.RIGHT, "right", "R"),
    *_sided(7, Laterality.LEFT, "left", "L"),
    Region(14, "mediastinum", "Med", Laterality.UNPAIRED, _MEDIASTINUM),
    Region(15, "upper mediastinum", "UMed", Laterality.UNPAIRED, _MEDIASTINUM, _SUPERIOR),
    Region(16, "cardiac silhouette", "CS", Laterality.UNPAIRED, _HEART),
    Region(17, "trachea", "Trach", Laterality.UNPAIRED, _TRACHEA),
)

_AF = FindingCategory.ANATOMICAL_FINDING
FINDINGS: tuple[Finding, ...] = (
    Finding(0, "lung opacity", "L1", _AF, CodedConcept("112001", "DCM", "Opacity")),
    Finding(1, "pleural effusion", "L2", _AF, CodedConcept("60046008", "SCT", "Pleural effusion")),
    Finding(2, "atelectasis", "L3", _AF, CodedConcept("46621007", "SCT", "Atelectasis")),
    Finding(
        3, "enlarged cardiac silhouette", "L4", _AF, CodedConcept("8186001", "SCT", "Cardiomegaly")
    ),
    Finding(
        4,
        "pulmonary edema/hazy opacity",
        "L5",
        _AF,
        CodedConcept("19242006", "SCT", "Pulmonary edema"),
    ),
    Finding(5, "pneumothorax", "L6", _AF, CodedConcept("36118008", "SCT", "Pneumothorax")),
    Finding(6, "consolidation", "L7", _AF, CodedConcept("95436008", "SCT", "Lung consolidation")),
    Finding(
        7,
        "fluid overload/heart failure",
        "L8",
        FindingCategory.DISEASE,
        CodedConcept("84114007", "SCT", "Heart failure"),
    ),
    Finding(
        8, "pneumonia", "L9", FindingCategory.DISEASE, CodedConcept("233604007", "SCT", "Pneumonia")
    ),
)

# Codes every output shares (DESIGN.md §5): the procedure, the value of a region call, the
# certainty of a finding (a probability, UCUM "1"), the purpose of a box, the tracking UID.
PROCEDURE = CodedConcept("36554-4", "LN", "XR Chest Single view")
PRESENT = CodedConcept("52101004", "SCT", "Present")
ABSENT = CodedConcept("272519000", "SCT", "Absent")
CERTAINTY_OF_FINDING = CodedConcept("111012", "DCM", "Certainty of Finding")
BOUNDED_BY = CodedConcept("75958009", "SCT", "Bounded by")
TRACKING_UID = CodedConcept("112040", "DCM", "Tracking Unique Identifier")

REGION_NAMES: tuple[str, ...] = tuple(r.name for r in REGIONS)
FINDING_NAMES: tuple[str, ...] = tuple(f.name for f in FINDINGS)

_REGION_LOOKUP = {key.lower(): r for r in REGIONS for key in (r.name, r.abbreviation)}
_FINDING_LOOKUP = {key.lower(): f for f in FINDINGS for key in (f.name, f.abbreviation)}


def region(key: str | int | Region) -> Region:
    """Look a region up by ImaGenome name, abbreviation (``"RCA"``) or index."""
    if isinstance(key, Region):
        return key
    if isinstance(key, int):
        if not 0 <= key < len(REGIONS):
            raise ValueError(f"region index {key} is outside 0..{len(REGIONS) - 1}")
        return REGIONS[key]
    try:
        return _REGION_LOOKUP[key.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown region {key!r}; expected one of {list(REGION_NAMES)}") from None


def finding(key: str | int | Finding) -> Finding:
    """Look a finding up by ImaGenome name, abbreviation (``"L2"``) or index."""
    if isinstance(key, Finding):
        return key
    if isinstance(key, int):
        if not 0 <= key < len(FINDINGS):
            raise ValueError(f"finding index {key} is outside 0..{len(FINDINGS) - 1}")
        return FINDINGS[key]
    try:
        return _FINDING_LOOKUP[key.strip().lower()]
    except KeyError:
        raise ValueError(
            f"unknown finding {key!r}; expected one of {list(FINDING_NAMES)}"
        ) from None
