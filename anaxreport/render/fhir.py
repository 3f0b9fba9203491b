"""The report as a FHIR transaction Bundle, R4B or R5 (DESIGN.md §6, FHIR R4B/R5 §3.1.0.11).

Why a *transaction* Bundle: an EHR or a FHIR server takes the results with one POST to its base
URL, atomically, and the Patient, ImagingStudy and Device it already holds are matched instead of
duplicated (``ifNoneExist`` on their identifiers, FHIR http.html#cond-update). Results carry
deterministic ``urn:uuid`` identifiers, so a retried POST does not create them twice either.
A ``collection`` Bundle could only be stored as one opaque Bundle resource.

Contents::

    Patient            identifier = PatientID (type MR), name from PN, birthDate, gender;
                       anonymised input (no PatientID): a Patient with what is left, posted
                       unconditionally (ImagingStudy.subject needs one)
    Device             the algorithm: name, versions, manufacturer, weights sha256 identifier,
                       a note with the provenance and the not-for-diagnostic-use disclaimer
    ImagingStudy       identifier urn:dicom:uid / urn:oid:<Study UID>, accession (ACSN),
                       the source series and instance (modality, SOP class)
    DiagnosticReport   preliminary, RAD, LOINC 36554-4, conclusion = impression, conclusionCode
                       = the present findings, presentedForm = the text report, narrative (and
                       R5 note) with provenance and disclaimer
    Observation        one per present region × finding call: code = finding, value Present
                       (SCT 52101004), where, component Certainty of Finding (DCM 111012) =
                       probability (UCUM "1"), identifier = the SR group's tracking UID; and one
                       per finding present nowhere: value Absent (SCT 272519000), certainty =
                       its highest region probability. So all 9 findings are stated.
    R5 only:
    ImagingSelection   per region with a present call: the box as a closed 5-point polyline
                       (column, row) in source pixels (``imageRegion2D``)
    BodyStructure      per such region: site + laterality (+ modifier), pointing at the box

Where: R4B puts the site in ``Observation.bodySite`` (the pre-coordinated right/left lung code
where vocab has one) with the laterality in the core extension ``observation-structureLaterality``
(FHIR Extensions Registry); R5 references the BodyStructure from ``Observation.bodyStructure``
instead, since invariant obs-8 forbids bodySite beside it. The R4B bodySite of the upper
mediastinum is coded as mediastinum with the region name as text: a CodeableConcept has no place
for the topographical modifier (the R5 BodyStructure carries it as a qualifier).

Times: DICOM StudyDate/StudyTime have no time zone; FHIR dateTime needs one when a time is
given, so ``effective`` is the date alone unless the header has TimezoneOffsetFromUTC.

Plain data, checked where it can be wrong: the Bundle is written directly as JSON data, exactly
what fhir.resources' ``model_dump(mode="json", exclude_none=True)`` gives, in FHIR element order.
Building it with the fhir.resources models (which validate on construction) cost ~28 ms a study,
more than all other renderers together; plain data costs ~2 ms, mostly the deterministic ids and
the text report in ``presentedForm``. Only values from outside can break FHIR's rules: the DICOM
header (patient, UIDs, numbers, times, description, modality) and the caller (``issued``, the
provenance). Each is checked against its FHIR primitive type as fhir.resources checks it
(:meth:`_Context.valid`), and a value FHIR does not allow is one ExportError naming the source
image. Everything else is our vocabulary, our numbers and our ids. :func:`validate_bundle` is the
referee: it parses a whole Bundle with fhir.resources, and the tests check that its dump of every
Bundle equals ours, so the plain data cannot drift from the models. fhir.resources does not check
code bindings: the tests run the FHIR R4 JSON schema and FHIR.js over the R4B Bundles for that.
"""

from __future__ import annotations

import base64
import html
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from pydicom.uid import UID

from ..errors import ConfigurationError, ExportError
from ..report import Refusal
from ..vocab import (
    ABSENT,
    BOUNDED_BY,
    CERTAINTY_OF_FINDING,
    FINDINGS,
    PRESENT,
    PROCEDURE,
    TRACKING_UID,
    CodedConcept,
    Finding,
    Laterality,
    Region,
)
from .uids import derived_uuid, tracking_uid

if TYPE_CHECKING:
    from ..report import RegionCall, Report

__all__ = ["FHIR_VERSIONS", "render_fhir", "render_refusal", "validate_bundle"]

#: The FHIR releases a Bundle can be made in.
FHIR_VERSIONS = ("R4B", "R5")

#: UCUM unit of a probability (dimensionless).
UCUM_SYSTEM = "http://unitsofmeasure.org"
UCUM_ONE = "1"

# FHIR's own code systems and URIs.
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"  # diagnostic service section
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"  # identifier type
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
LATERALITY_EXTENSION = "http://hl7.org/fhir/StructureDefinition/observation-structureLaterality"
DICOM_UID_SYSTEM = "urn:dicom:uid"
URI_SYSTEM = "urn:ietf:rfc:3986"
DCM_SYSTEM = "http://dicom.nema.org/resources/ontology/DCM"
WEIGHTS_SYSTEM = "urn:anaxreport:weights-sha256"
MANUFACTURER = "anaxreport"
XHTML = "http://www.w3.org/1999/xhtml"

RADIOLOGY = {"coding": [{"system": V2_0074, "code": "RAD", "display": "Radiology"}]}
_GENDERS = {"M": "male", "F": "female", "O": "other"}
_MODALITIES = {"CR": "Computed Radiography", "DX": "Digital Radiography"}

# --- FHIR primitive types of the values from outside (datatypes.html#primitive) -------------
# As fhir.resources (fhir_core.types) checks them, so a value passes here exactly when it passes
# there: its regexes run in pydantic's Rust engine, where \s is Unicode White_Space, and a
# string's pattern is searched, not matched whole.
_WS = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_YEAR = r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)"
_TIME = r"([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?"
_ZONE = r"(Z|[+\-]((0[0-9]|1[0-3]):[0-5][0-9]|14:00))"
_MONTH = r"(0[1-9]|1[0-2])"
_DAY = r"(0[1-9]|[1-2][0-9]|3[0-1])"
_PRIMITIVES = {
    "string": re.compile(rf"[ \r\n\t]|[^{_WS}]"),  # searched: not empty nor only other spaces
    "code": re.compile(rf"[^{_WS}]+([{_WS}][^{_WS}]+)*"),
    "id": re.compile(r"[A-Za-z0-9\-.]{1,255}"),  # FHIR says at most 64, fhir.resources 255
    "dateTime": re.compile(rf"{_YEAR}(-{_MONTH}(-{_DAY}(T{_TIME}{_ZONE})?)?)?"),
    "instant": re.compile(rf"{_YEAR}-{_MONTH}-{_DAY}T{_TIME}{_ZONE}"),
}
_UNSIGNED_INT_MAX = 2**31 - 1

_T = TypeVar("_T", str, int)


def render_fhir(
    report: Report, version: str = "R4B", issued: datetime | None = None
) -> dict[str, Any]:
    """The transaction Bundle of ``report`` in FHIR ``version`` ("R4B" or "R5") as JSON data.

    ``issued`` (time-zone aware) is when the results were made available; now by default. The
    same report gives the same Bundle apart from ``issued`` (all ids are derived from the input
    image, the weights, the rules and the thresholds, as the DICOM UIDs are).
    """
    ctx = _Context.make(report, version, issued)
    entries = [
        _patient(ctx),
        _device(ctx),
        _imaging_study(ctx),
        _diagnostic_report(ctx),
        *(_region_observation(ctx, call) for call in report.present_calls()),
        *(_absent_observation(ctx, f) for f in _absent_findings(report)),
    ]
    if ctx.r5:
        for region in _present_regions(report):
            entries += [_imaging_selection(ctx, region), _body_structure(ctx, region)]
    return _bundle(ctx, entries)


def render_refusal(
    refusal: Refusal, version: str = "R4B", issued: datetime | None = None
) -> dict[str, Any]:
    """A transaction Bundle for a study the gate refused: Patient, Device, ImagingStudy and a
    DiagnosticReport with status ``cancelled`` whose conclusion says why; no Observations."""
    ctx = _Context.make(refusal, version, issued)  # type: ignore[arg-type]
    text = f"Not analysed by {refusal.provenance.model_name}: {refusal.message}"
    dr_id = ctx.id("DiagnosticReport")
    study = {"study" if ctx.r5 else "imagingStudy": [ctx.ref("ImagingStudy")]}
    diagnostic_report = _resource(
        "DiagnosticReport",
        id=dr_id,
        text={
            "status": "generated",
            "div": f'<div xmlns="{XHTML}"><p>{html.escape(text)}</p>'
            f"<p>{html.escape(refusal.provenance.disclaimer)}</p></div>",
        },
        identifier=[_uuid_identifier(dr_id)],
        status="cancelled",
        category=[RADIOLOGY],
        code=_concept(PROCEDURE),
        subject=ctx.ref("Patient"),
        effectiveDateTime=ctx.effective,
        issued=ctx.issued,
        note=_note(refusal) if ctx.r5 else None,  # type: ignore[arg-type]
        **study,
        conclusion=f"{text} (reason code {refusal.reason})",
    )
    entries = [
        _patient(ctx),
        _device(ctx),
        _imaging_study(ctx),
        _Entry(diagnostic_report, _condition(URI_SYSTEM, f"urn:uuid:{dr_id}")),
    ]
    return _bundle(ctx, entries)


def validate_bundle(bundle: dict[str, Any], version: str) -> None:
    """Parse ``bundle`` with the fhir.resources models of FHIR ``version``; one ExportError if
    they find it invalid.

    The referee of the plain data :func:`render_fhir` writes (the tests run it on every Bundle);
    too slow (~25 ms) to run on every report.
    """
    from pydantic import ValidationError

    version = _version(version)
    if version == "R5":
        from fhir.resources.bundle import Bundle
    else:
        from fhir.resources.R4B.bundle import Bundle
    try:
        Bundle.model_validate(bundle)
    except ValidationError as exc:
        errors = exc.errors()
        where = ".".join(str(part) for part in errors[0]["loc"])
        message = " ".join(errors[0]["msg"].split())
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ExportError(
            f"FHIR {version} Bundle {bundle.get('id', '')} is invalid: {where}: {message}{more}"
        ) from exc


def _version(version: str) -> str:
    if not isinstance(version, str) or version.upper() not in FHIR_VERSIONS:
        raise ConfigurationError(
            f"FHIR version {version!r} is not supported; expected one of {FHIR_VERSIONS}"
        )
    return version.upper()


def _bundle(ctx: _Context, entries: Sequence[_Entry]) -> dict[str, Any]:
    """The transaction Bundle of ``entries``."""
    bundle_id = ctx.id("Bundle")
    return _resource(
        "Bundle",
        id=bundle_id,
        identifier=_uuid_identifier(bundle_id),
        type="transaction",
        timestamp=ctx.issued,
        entry=[entry.as_dict() for entry in entries],
    )


def _resource(kind: str, **elements: Any) -> dict[str, Any]:
    """A resource as fhir.resources dumps it: ``resourceType`` first, then the ``elements``
    (given in FHIR element order) that have a value; FHIR elements are never empty."""
    resource: dict[str, Any] = {"resourceType": kind}
    for k, v in elements.items():
        if v is not None and v != [] and v != "":
            resource[k] = v
    return resource


# --- context -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Context:
    """What every resource builder needs: the report, the release, the times, the ids."""

    report: Report
    version: str
    issued: str
    effective: str | None
    ids: dict[tuple[str, ...], str] = field(default_factory=dict, repr=False, compare=False)
    urns: dict[tuple[str, ...], str] = field(default_factory=dict, repr=False, compare=False)
    #: :func:`_provenance_text`, which every Observation's note carries: made once.
    provenance_text: str = field(default="", repr=False, compare=False)

    @classmethod
    def make(cls, report: Report, version: str, issued: datetime | None) -> _Context:
        version = _version(version)
        when = issued if issued is not None else datetime.now().astimezone()
        if when.tzinfo is None or when.utcoffset() is None:
            raise ConfigurationError(f"issued must be time-zone aware, got {when.isoformat()}")
        ctx = cls(report, version, _instant(when), _effective(report),
                  provenance_text=_provenance_text(report))  # fmt: skip
        ctx.valid("instant", ctx.issued, "issued")
        if ctx.effective is not None:
            ctx.valid("dateTime", ctx.effective, "StudyDate/StudyTime/TimezoneOffsetFromUTC")
        return ctx

    @property
    def r5(self) -> bool:
        return self.version == "R5"

    def id(self, kind: str, *key: str) -> str:
        """The deterministic id (a UUID) of one resource of this report (or refusal);
        remembered, as references ask for the same ids again and again."""
        known = self.ids.get((kind, *key))
        if known is not None:
            return known
        if isinstance(self.report, Refusal):
            p = self.report.provenance
            value = derived_uuid("fhir-refusal", kind, *key, self.report.study.sop_instance_uid,
                                 p.weights_sha256, self.report.reason)  # fmt: skip
        else:  # result_uid's UUID
            value = derived_uuid("fhir", kind, *key, *self.report.result_key)
        self.ids[kind, *key] = str(uuid.UUID(int=value))
        return self.ids[kind, *key]

    def ref(self, kind: str, *key: str) -> dict[str, str]:
        """A Reference to a resource of this Bundle (a new dict: the caller's to keep)."""
        urn = self.urns.get((kind, *key))
        if urn is None:
            urn = self.urns[kind, *key] = f"urn:uuid:{self.id(kind, *key)}"
        return {"reference": urn}

    def valid(self, fhir_type: str, value: _T, where: str) -> _T:
        """``value`` (from the header or the caller) if FHIR type ``fhir_type`` allows it, else
        one ExportError naming the source image and the element (a patient's value unquoted)."""
        if isinstance(value, int):
            ok = 0 <= value <= _UNSIGNED_INT_MAX  # the only integers here are unsignedInt
        elif fhir_type == "string":
            ok = _PRIMITIVES["string"].search(value) is not None
        else:
            ok = _PRIMITIVES[fhir_type].fullmatch(value) is not None
        if ok:
            return value
        shown = "the value" if where.startswith("Patient") else repr(value)
        raise ExportError(
            f"FHIR {self.version} {where} of {self.report.study.sop_instance_uid or 'the image'}"
            f" is invalid: {shown} is not a FHIR {fhir_type}"
        )


@dataclass(frozen=True)
class _Entry:
    """One Bundle entry: the resource and how a server should create it."""

    resource: dict[str, Any]
    condition: str | None = None

    def as_dict(self) -> dict[str, Any]:
        request = {"method": "POST", "url": self.resource["resourceType"]}
        if self.condition:
            request["ifNoneExist"] = self.condition
        return {
            "fullUrl": f"urn:uuid:{self.resource['id']}",
            "resource": self.resource,
            "request": request,
        }


# --- small datatypes -----------------------------------------------------------------------


def _coding(code: CodedConcept) -> dict[str, str]:
    return {"system": code.fhir_system, "code": code.value, "display": code.meaning}


def _concept(code: CodedConcept, text: str | None = None) -> dict[str, Any]:
    return {"coding": [_coding(code)], "text": text or code.meaning}


def _uuid_identifier(value: str) -> dict[str, str]:
    return {"system": URI_SYSTEM, "value": f"urn:uuid:{value}"}


def _condition(system: str, value: str) -> str:
    """An ``ifNoneExist`` search on identifier ``system|value`` (FHIR search, token)."""
    token = f"{system}|{value}" if system else value
    if _UNQUOTED.fullmatch(token):  # what quote leaves as it is (the usual urn:uuid token)
        return "identifier=" + token
    return "identifier=" + quote(token, safe=":/|")


#: The characters urllib's quote never quotes, with the ones _condition keeps (":/|").
_UNQUOTED = re.compile(r"[A-Za-z0-9_.~:/|-]*")


def _decimal(value: float, digits: int) -> float:
    """``value`` rounded as a FHIR decimal, as fhir.resources dumps it: through its text (so
    a numpy scalar becomes the float its text says)."""
    return float(str(round(value, digits)))


def _provenance_text(report: Report) -> str:
    p = report.provenance
    return (
        f"Made by the model {p.model_name} {p.model_version} (weights sha256 "
        f"{p.weights_sha256}; trained on {p.training_data}) with {p.software}. {p.disclaimer}"
    )


def _note(report: Report) -> list[dict[str, str]]:
    return [{"text": _provenance_text(report)}]


def _sop_class(ctx: _Context, uid: str, where: str) -> dict[str, str]:
    coding = {"system": URI_SYSTEM, "code": ctx.valid("code", f"urn:oid:{uid}", where)}
    name = UID(uid).name
    if name != uid:
        coding["display"] = name
    return coding


def _modality(ctx: _Context) -> dict[str, Any] | None:
    """The image's modality as a Coding (R4B ImagingStudy) or CodeableConcept (R5)."""
    image, header = ctx.report.image, ctx.report.header
    if image is not None:
        modality = image.modality
    else:  # a refusal whose image facts are unknown
        modality = str(header.get("Modality", "")) if header is not None else ""
    if not modality:
        return None
    coding = {"system": DCM_SYSTEM, "code": ctx.valid("code", modality, "ImagingStudy.modality")}
    if modality in _MODALITIES:
        coding["display"] = _MODALITIES[modality]
    return {"coding": [coding]} if ctx.r5 else coding


# --- dates, names --------------------------------------------------------------------------


def _date(value: str) -> str | None:
    """DICOM DA (YYYYMMDD) as a FHIR date; None when empty or malformed."""
    try:
        return datetime.strptime(value.strip(), "%Y%m%d").date().isoformat()
    except ValueError:
        return None


def _instant(when: datetime) -> str:
    """``when`` as fhir.resources writes an instant: to the second, UTC as "Z"."""
    text = when.isoformat(timespec="seconds")
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _effective(report: Report) -> str | None:
    """Study date and time as a FHIR dateTime: with the time only if the time zone is known.

    Written as fhir.resources writes it: a zero offset as "Z", except in a leap second (a
    second of 60), which it keeps as given."""
    date = _date(report.study.study_date)
    header = report.header
    offset = str(header.get("TimezoneOffsetFromUTC", "")) if header is not None else ""
    time = re.fullmatch(r"(\d{2})(\d{2})(\d{2})(?:\.\d*)?", report.study.study_time.strip())
    zone = re.fullmatch(r"([+-])(\d{2})(\d{2})", offset.strip())
    if date is None or time is None or zone is None:
        return date
    hh, mm, ss = time.groups()
    sign, zh, zm = zone.groups()
    utc = zh == zm == "00" and ss != "60"
    return f"{date}T{hh}:{mm}:{ss}" + ("Z" if utc else f"{sign}{zh}:{zm}")


def _human_name(ctx: _Context, pn: str) -> dict[str, Any] | None:
    """DICOM PN (Family^Given^Middle^Prefix^Suffix, first component group) as a HumanName."""
    parts = [p.strip() for p in pn.split("=")[0].split("^")] + [""] * 5
    for part in parts[:5]:
        if part:
            ctx.valid("string", part, "Patient.name")
    family, given, middle, prefix, suffix = parts[:5]
    name = {
        "family": family,
        "given": [g for g in (given, middle) if g],
        "prefix": [prefix] if prefix else [],
        "suffix": [suffix] if suffix else [],
    }
    name = {k: v for k, v in name.items() if v}
    return name or None


# --- resources -----------------------------------------------------------------------------


def _patient(ctx: _Context) -> _Entry:
    study = ctx.report.study
    pid = study.patient_id.strip()
    name = _human_name(ctx, study.patient_name)
    sex = study.patient_sex.strip().upper()
    identifier = None
    if pid:
        value = ctx.valid("string", pid, "Patient.identifier.value")
        identifier = [{"type": _v2_type("MR", "Medical record number"), "value": value}]
    patient = _resource(
        "Patient",
        id=ctx.id("Patient"),
        identifier=identifier,
        name=[name] if name else None,
        gender=_GENDERS.get(sex, "unknown") if sex else None,
        birthDate=_date(study.patient_birth_date),  # made from a parsed date: valid
    )
    return _Entry(patient, _condition("", pid) if pid else None)


def _v2_type(code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": V2_0203, "code": code, "display": display}]}


def _device(ctx: _Context) -> _Entry:
    p = ctx.report.provenance
    for value, where in [
        (p.model_name, "Device.name"),
        (p.model_version, "Device.version"),
        (p.software, "Device.version"),
        (p.weights_sha256, "Device.identifier"),
    ]:
        ctx.valid("string", value, where)
    kind = {"text": "AI algorithm: chest radiograph anatomical region findings"}
    versions = [
        {"type": {"text": "model"}, "value": p.model_version},
        {"type": {"text": "software"}, "value": p.software},
    ]
    identifier = [{"system": WEIGHTS_SYSTEM, "value": p.weights_sha256}]
    if ctx.r5:
        device = _resource(
            "Device",
            id=ctx.id("Device"),
            identifier=identifier,
            displayName=p.model_name,
            status="active",
            manufacturer=MANUFACTURER,
            name=[{"value": p.model_name, "type": "user-friendly-name"}],
            type=[kind],  # R5 Device.type repeats
            version=versions,
            note=_note(ctx.report),
        )
    else:
        device = _resource(
            "Device",
            id=ctx.id("Device"),
            identifier=identifier,
            status="active",
            manufacturer=MANUFACTURER,
            deviceName=[{"name": p.model_name, "type": "model-name"}],
            type=kind,
            version=versions,
            note=_note(ctx.report),
        )
    return _Entry(device, _condition(WEIGHTS_SYSTEM, p.weights_sha256))


def _imaging_study(ctx: _Context) -> _Entry:
    study = ctx.report.study
    identifiers = []
    if study.study_instance_uid:
        identifiers.append(
            {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{study.study_instance_uid}"}
        )
    if study.accession_number:
        accession = ctx.valid("string", study.accession_number, "ImagingStudy.identifier")
        identifiers.append({"type": _v2_type("ACSN", "Accession ID"), "value": accession})
    description = ctx.report.image.study_description if ctx.report.image else ""
    if description:
        ctx.valid("string", description, "ImagingStudy.description")
    procedure = _concept(PROCEDURE)
    modality = _modality(ctx)
    imaging_study = _resource(
        "ImagingStudy",
        id=ctx.id("ImagingStudy"),
        identifier=identifiers,
        status="available",
        modality=[modality] if modality else None,
        subject=ctx.ref("Patient"),
        started=ctx.effective,
        **({"procedure": [{"concept": procedure}]} if ctx.r5 else {"procedureCode": [procedure]}),
        description=description,
        series=_series(ctx, modality),
    )
    condition = (
        _condition(DICOM_UID_SYSTEM, f"urn:oid:{study.study_instance_uid}")
        if study.study_instance_uid
        else None
    )
    return _Entry(imaging_study, condition)


def _series(ctx: _Context, modality: dict[str, Any] | None) -> list[dict[str, Any]] | None:
    study = ctx.report.study
    if not study.series_instance_uid or modality is None:  # both are required of a series
        return None
    where = "ImagingStudy.series"
    series: dict[str, Any] = {"uid": ctx.valid("id", study.series_instance_uid, f"{where}.uid")}
    if (number := _number(study.series_number)) is not None:
        series["number"] = ctx.valid("unsignedInt", number, f"{where}.number")
    series["modality"] = modality
    if study.sop_instance_uid and study.sop_class_uid:
        where += ".instance"
        instance: dict[str, Any] = {
            "uid": ctx.valid("id", study.sop_instance_uid, f"{where}.uid"),
            "sopClass": _sop_class(ctx, study.sop_class_uid, f"{where}.sopClass"),
        }
        if (number := _number(study.instance_number)) is not None:
            instance["number"] = ctx.valid("unsignedInt", number, f"{where}.number")
        series["instance"] = [instance]
    return [series]


def _number(value: str) -> int | None:
    """A DICOM IS as a FHIR unsignedInt candidate: ASCII digits only (``"²".isdigit()``)."""
    value = value.strip()
    return int(value) if re.fullmatch(r"[0-9]+", value) else None


def _diagnostic_report(ctx: _Context) -> _Entry:
    report = ctx.report
    dr_id = ctx.id("DiagnosticReport")
    study = {"study" if ctx.r5 else "imagingStudy": [ctx.ref("ImagingStudy")]}
    diagnostic_report = _resource(
        "DiagnosticReport",
        id=dr_id,
        text=_narrative(report),
        identifier=[_uuid_identifier(dr_id)],
        status="preliminary",
        category=[RADIOLOGY],
        code=_concept(PROCEDURE),
        subject=ctx.ref("Patient"),
        effectiveDateTime=ctx.effective,
        issued=ctx.issued,
        result=[ctx.ref("Observation", *_observation_key(o)) for o in _observation_keys(report)],
        note=_note(report) if ctx.r5 else None,
        **study,
        conclusion=" ".join(report.impression),
        conclusionCode=[_concept(f.code, f.name) for f in _present_findings(report)],
        presentedForm=[_text_attachment(ctx)],
    )
    return _Entry(diagnostic_report, _condition(URI_SYSTEM, f"urn:uuid:{dr_id}"))


def _narrative(report: Report) -> dict[str, str]:
    """Human-readable text with what the structured data cannot say in R4B (the disclaimer);
    status "additional" says so (FHIR narrative.html)."""
    paragraphs = [" ".join(report.impression), _provenance_text(report)]
    body = "".join(f"<p>{html.escape(p)}</p>" for p in paragraphs)
    return {"status": "additional", "div": f'<div xmlns="{XHTML}">{body}</div>'}


def _text_attachment(ctx: _Context) -> dict[str, Any]:
    text = ctx.report.to_text()
    return {
        "contentType": "text/plain; charset=utf-8",
        "language": "en",
        "data": base64.b64encode(text.encode("utf-8")).decode("ascii"),
        "title": "Chest radiograph report (anaxreport; not for diagnostic use)",
        "creation": ctx.issued,
    }


# --- observations --------------------------------------------------------------------------


def _present_findings(report: Report) -> list[Finding]:
    present = {c.finding for c in report.present_calls()}
    return [f for f in FINDINGS if f in present]


def _absent_findings(report: Report) -> list[Finding]:
    present = set(_present_findings(report))
    return [f for f in FINDINGS if f not in present]


def _present_regions(report: Report) -> list[Region]:
    regions = {c.region for c in report.present_calls()}
    return [r.region for r in report.regions if r.region in regions]


def _observation_keys(report: Report) -> list[RegionCall | Finding]:
    """What each Observation states, in Bundle order: the present calls, the absent findings."""
    return [*report.present_calls(), *_absent_findings(report)]


def _observation_key(what: RegionCall | Finding) -> tuple[str, ...]:
    if isinstance(what, Finding):
        return (what.name,)
    return (what.finding.name, what.region.name)


def _certainty(probability: float) -> list[dict[str, Any]]:
    quantity = {
        "value": _decimal(probability, 4),
        "unit": "probability",
        "system": UCUM_SYSTEM,
        "code": UCUM_ONE,
    }
    return [{"code": _concept(CERTAINTY_OF_FINDING), "valueQuantity": quantity}]


def _observation(
    ctx: _Context,
    what: RegionCall | Finding,
    value: CodedConcept,
    probability: float,
    *,
    identifiers: Sequence[dict[str, Any]] = (),
    where: dict[str, Any] | None = None,
) -> _Entry:
    """An Observation; ``where`` is its bodySite (R4B) or bodyStructure and derivedFrom (R5)."""
    finding = what if isinstance(what, Finding) else what.finding
    obs_id = ctx.id("Observation", *_observation_key(what))
    where = where or {}
    observation = _resource(
        "Observation",
        id=obs_id,
        identifier=[_uuid_identifier(obs_id), *identifiers],
        status="preliminary",
        category=[{"coding": [{"system": OBSERVATION_CATEGORY, "code": "imaging"}]}],
        code=_concept(finding.code, finding.name),
        subject=ctx.ref("Patient"),
        effectiveDateTime=ctx.effective,
        issued=ctx.issued,
        valueCodeableConcept=_concept(value),
        note=[{"text": ctx.provenance_text}],
        bodySite=where.get("bodySite"),
        bodyStructure=where.get("bodyStructure"),
        device=ctx.ref("Device"),
        derivedFrom=where.get("derivedFrom", [ctx.ref("ImagingStudy")]),
        component=_certainty(probability),
    )
    return _Entry(observation, _condition(URI_SYSTEM, f"urn:uuid:{obs_id}"))


def _region_observation(ctx: _Context, call: RegionCall) -> _Entry:
    """A present region × finding call, located, and linked to its region's SR group by the
    group's tracking UID."""
    region = call.region
    tracking = {
        "type": _concept(TRACKING_UID),
        "system": DICOM_UID_SYSTEM,
        "value": f"urn:oid:{tracking_uid(ctx.report, region)}",
    }
    if ctx.r5:
        where: dict[str, Any] = {
            "bodyStructure": ctx.ref("BodyStructure", region.name),
            "derivedFrom": [ctx.ref("ImagingStudy"), ctx.ref("ImagingSelection", region.name)],
        }
    else:
        where = {"bodySite": _body_site(region)}
    return _observation(ctx, call, PRESENT, call.probability, identifiers=[tracking], where=where)


def _absent_observation(ctx: _Context, finding: Finding) -> _Entry:
    """A finding present in no region: Absent, with its highest region probability."""
    return _observation(ctx, finding, ABSENT, _highest_probability(ctx.report, finding))


def _highest_probability(report: Report, finding: Finding) -> float:
    """Over the regions the detector found (a missing region's probability is not evidence);
    over all regions when none was found."""
    found = [r.probability(finding) for r in report.regions if r.found]
    return max(found or [r.probability(finding) for r in report.regions])


def _body_site(region: Region) -> dict[str, Any]:
    """R4B bodySite: the pre-coordinated site where vocab has one, else the site with the
    laterality in the core extension observation-structureLaterality."""
    site = _concept(region.fhir_site or region.site, region.name)
    if region.fhir_site is None and region.laterality is not Laterality.UNPAIRED:
        laterality = {
            "url": LATERALITY_EXTENSION,
            "valueCodeableConcept": _concept(region.laterality.value),
        }
        site = {"extension": [laterality], **site}  # Element.extension comes first
    return site


# --- R5: where on the image, which structure -----------------------------------------------


def _imaging_selection(ctx: _Context, region: Region) -> _Entry:
    """The region's box on the source image (R5 ImagingSelection.instance.imageRegion2D:
    (column, row) pairs, origin at the top-left corner of the top-left pixel)."""
    study = ctx.report.study
    box = ctx.report.region(region).box
    if box is None:  # present calls need a found region
        raise ExportError(f"region {region.name!r} has a present call but no box")
    where = "ImagingSelection"
    instance: dict[str, Any] = {"uid": ctx.valid("id", study.sop_instance_uid, f"{where}.uid")}
    if study.sop_class_uid:
        instance["sopClass"] = _sop_class(ctx, study.sop_class_uid, f"{where}.sopClass")
    coordinates = [_decimal(v, 3) for point in box.polyline() for v in point]
    instance["imageRegion2D"] = [{"regionType": "polyline", "coordinate": coordinates}]
    study_uid, series_uid = study.study_instance_uid, study.series_instance_uid
    sel_id = ctx.id("ImagingSelection", region.name)
    selection = _resource(
        "ImagingSelection",
        id=sel_id,
        identifier=[_uuid_identifier(sel_id)],
        status="available",
        subject=ctx.ref("Patient"),
        issued=ctx.issued,
        performer=[{"actor": ctx.ref("Device")}],
        code=_concept(BOUNDED_BY, f"box of the {region.name}"),
        studyUid=study_uid and ctx.valid("id", study_uid, f"{where}.studyUid"),
        derivedFrom=[ctx.ref("ImagingStudy")],
        seriesUid=series_uid and ctx.valid("id", series_uid, f"{where}.seriesUid"),
        instance=[instance],
    )
    return _Entry(selection, _condition(URI_SYSTEM, f"urn:uuid:{sel_id}"))


def _body_structure(ctx: _Context, region: Region) -> _Entry:
    structure: dict[str, Any] = {
        "structure": _concept(region.fhir_site or region.site, region.name)
    }
    if region.laterality is not Laterality.UNPAIRED:
        structure["laterality"] = _concept(region.laterality.value)
    structure["spatialReference"] = [ctx.ref("ImagingSelection", region.name)]
    if region.modifier is not None:
        structure["qualifier"] = [_concept(region.modifier)]
    bs_id = ctx.id("BodyStructure", region.name)
    body_structure = _resource(
        "BodyStructure",
        id=bs_id,
        identifier=[_uuid_identifier(bs_id)],
        includedStructure=[structure],
        description=region.name,
        patient=ctx.ref("Patient"),
    )
    return _Entry(body_structure, _condition(URI_SYSTEM, f"urn:uuid:{bs_id}"))
