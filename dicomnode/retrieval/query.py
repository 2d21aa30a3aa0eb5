"""What the node asks a source for, and what it finds: studies and series, in DICOM keywords.

One :class:`StudyQuery` serves both kinds of source: :meth:`StudyQuery.matching`
gives the attribute values of a Study Root C-FIND identifier, which are also
the query parameters of QIDO-RS (PS3.18 uses the same keywords and the same
range syntax). Results come back as :class:`StudyMatch` / :class:`SeriesMatch`
whatever the protocol was.

Sources differ in what they honour (some PACS ignore ``ModalitiesInStudy``,
some return more than asked for), so :meth:`StudyQuery.accepts` checks every
match again on the node's side.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from pydicom import Dataset

from dicomnode.store.header import is_valid_uid

# Attributes asked for in every study-level query (universal matching: empty values).
STUDY_RETURN_KEYS = (
    "StudyInstanceUID",
    "PatientID",
    "IssuerOfPatientID",
    "PatientName",
    "AccessionNumber",
    "StudyDate",
    "StudyTime",
    "StudyDescription",
    "ModalitiesInStudy",
    "SOPClassesInStudy",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)
SERIES_RETURN_KEYS = (
    "SeriesInstanceUID",
    "Modality",
    "SeriesNumber",
    "SeriesDescription",
    "NumberOfSeriesRelatedInstances",
)
_MODALITY = re.compile(r"^[A-Z0-9_ ]{1,16}$")
_WILDCARDS = re.compile(r"[*?\\]")


class QueryError(ValueError):
    """A query value that cannot be sent, with a sentence naming it."""


def _dicom_date(value: date) -> str:
    return value.strftime("%Y%m%d")


def parse_date(text: str | None) -> date | None:
    """A DICOM DA value (``YYYYMMDD``) as a date; None when absent or not a date."""
    text = (text or "").strip()
    if len(text) < 8 or not text[:8].isdigit():
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return None


@dataclass(frozen=True)
class StudyQuery:
    """Which studies to find at a source; None matches anything.

    Attributes
    ----------
    patient_id, issuer_of_patient_id
        Patient ID, and the Issuer of Patient ID that makes it unique across
        the hospital's domains (both exact matches).
    accession_number, study_instance_uid
        Exact matches.
    since, until
        Study Date range, both ends included.
    modality
        A modality the study contains (``ModalitiesInStudy``).
    """

    patient_id: str | None = None
    issuer_of_patient_id: str | None = None
    accession_number: str | None = None
    study_instance_uid: str | None = None
    since: date | None = None
    until: date | None = None
    modality: str | None = None

    def __post_init__(self) -> None:
        for name in ("patient_id", "issuer_of_patient_id", "accession_number"):
            value = getattr(self, name)
            if value is not None and (not value or _WILDCARDS.search(value) or len(value) > 64):
                raise QueryError(f"{name}: {value!r} must be 1-64 characters without * ? or \\")
        uid = self.study_instance_uid
        if uid is not None and not is_valid_uid(uid):
            raise QueryError(f"study_instance_uid: {uid!r} is not a valid UID")
        if self.modality is not None and not _MODALITY.match(self.modality):
            raise QueryError(f"modality: {self.modality!r} is not a DICOM modality such as CT")
        if self.since and self.until and self.since > self.until:
            raise QueryError("since: later than until")

    def matching(self) -> dict[str, str]:
        """The matching keys with their values (keyword -> DICOM string)."""
        keys: dict[str, str] = {}
        for keyword, value in (
            ("PatientID", self.patient_id),
            ("IssuerOfPatientID", self.issuer_of_patient_id),
            ("AccessionNumber", self.accession_number),
            ("StudyInstanceUID", self.study_instance_uid),
            ("ModalitiesInStudy", self.modality),
        ):
            if value is not None:
                keys[keyword] = value
        if self.since or self.until:
            low = _dicom_date(self.since) if self.since else ""
            high = _dicom_date(self.until) if self.until else ""
            keys["StudyDate"] = low if low == high else f"{low}-{high}"
        return keys

    def accepts(self, match: StudyMatch) -> bool:
        """Whether *match* really satisfies this query (sources honour keys unevenly)."""
        exact = (
            (self.patient_id, match.patient_id),
            (self.accession_number, match.accession_number),
            (self.study_instance_uid, match.study_instance_uid),
        )
        if any(wanted is not None and found != wanted for wanted, found in exact):
            return False
        # An issuer the source did not return cannot be checked: its own match stands.
        issuer = match.issuer_of_patient_id
        if self.issuer_of_patient_id is not None and issuer and issuer != self.issuer_of_patient_id:
            return False
        if self.modality is not None and match.modalities and self.modality not in match.modalities:
            return False
        day = match.study_day
        if day is not None:
            if self.since is not None and day < self.since:
                return False
            if self.until is not None and day > self.until:
                return False
        return True


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    return str(value).strip() or None


def _count(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _values(ds: Dataset, keyword: str) -> tuple[str, ...]:
    value = ds.get(keyword)
    if value is None or value == "":
        return ()
    # One value comes as a str, several as a MultiValue (a list).
    items = [value] if isinstance(value, str) else list(value)
    return tuple(str(v) for v in items if str(v))


@dataclass(frozen=True)
class StudyMatch:
    """One study a source has."""

    study_instance_uid: str
    patient_id: str | None = None
    issuer_of_patient_id: str | None = None
    patient_name: str | None = None
    accession_number: str | None = None
    study_date: str | None = None
    study_description: str | None = None
    modalities: tuple[str, ...] = ()
    sop_classes: tuple[str, ...] = ()
    series_count: int | None = None
    instance_count: int | None = None

    @classmethod
    def from_dataset(cls, ds: Dataset) -> StudyMatch:
        """From a C-FIND response identifier or a QIDO-RS result."""
        return cls(
            study_instance_uid=str(ds.get("StudyInstanceUID", "")),
            patient_id=_text(ds, "PatientID"),
            issuer_of_patient_id=_text(ds, "IssuerOfPatientID"),
            patient_name=_text(ds, "PatientName"),
            accession_number=_text(ds, "AccessionNumber"),
            study_date=_text(ds, "StudyDate"),
            study_description=_text(ds, "StudyDescription"),
            modalities=_values(ds, "ModalitiesInStudy"),
            sop_classes=_values(ds, "SOPClassesInStudy"),
            series_count=_count(ds, "NumberOfStudyRelatedSeries"),
            instance_count=_count(ds, "NumberOfStudyRelatedInstances"),
        )

    @property
    def study_day(self) -> date | None:
        """Study Date as a date, when the source gave a valid one."""
        return parse_date(self.study_date)

    def study_fields(self) -> dict[str, str | None]:
        """The study row's columns from this match (cut to the columns' sizes)."""
        return {
            "patient_id": (self.patient_id or None) and self.patient_id[:64],
            "patient_name": (self.patient_name or None) and self.patient_name[:324],
            "accession_number": (self.accession_number or None) and self.accession_number[:16],
            "study_date": (self.study_date or None) and self.study_date[:8],
            "study_description": (self.study_description or None) and self.study_description[:64],
        }

    def as_dict(self) -> dict[str, Any]:
        """JSON shape for ``dicomnode query --json`` (no patient name)."""
        return {
            "study_instance_uid": self.study_instance_uid,
            "accession_number": self.accession_number,
            "study_date": self.study_date,
            "study_description": self.study_description,
            "modalities": list(self.modalities),
            "series": self.series_count,
            "instances": self.instance_count,
        }


@dataclass(frozen=True)
class SeriesMatch:
    """One series of a study a source has."""

    series_instance_uid: str
    modality: str | None = None
    series_number: int | None = None
    series_description: str | None = None
    instance_count: int | None = None

    @classmethod
    def from_dataset(cls, ds: Dataset) -> SeriesMatch:
        """From a C-FIND response identifier or a QIDO-RS result."""
        return cls(
            series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
            modality=_text(ds, "Modality"),
            series_number=_count(ds, "SeriesNumber"),
            series_description=_text(ds, "SeriesDescription"),
            instance_count=_count(ds, "NumberOfSeriesRelatedInstances"),
        )


def identifier(level: str, matching: Mapping[str, str], return_keys: tuple[str, ...]) -> Dataset:
    """A Study Root C-FIND identifier: the level, the matching keys, the other keys empty."""
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword in return_keys:
        setattr(ds, keyword, matching.get(keyword, ""))
    for keyword, value in matching.items():
        setattr(ds, keyword, value)
    return ds
