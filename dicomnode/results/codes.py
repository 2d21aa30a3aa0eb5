"""Coded concepts of the results that pydicom's dictionary lacks, and the private scheme.

Every concept the writers use comes from a standard scheme (SNOMED CT "SCT",
DICOM "DCM", LOINC "LN", UCUM) where one exists. Where none does, the concept
is private, in the scheme :data:`PRIVATE_SCHEME`, and every object that uses
it declares that scheme in its Coding Scheme Identification Sequence
(:func:`declare_private_schemes`), as PS3.3 C.12.1 asks for designators that
are not in PS3.16 Table 8-1.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeVar

from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

PRIVATE_SCHEME = "99DICOMNODE"
PRIVATE_SCHEME_NAME = "dicomnode private codes"
PRIVATE_SCHEME_ORGANIZATION = "dicomnode project"

# Designators of PS3.16 Table 8-1 the results use; anything else must be declared.
STANDARD_SCHEMES = frozenset({"DCM", "SCT", "LN", "UCUM", "SRT", "DCMUID", "UMLS"})

# The detector's output when its calibration is not good enough to call it a probability
# (SNOMED CT "Score (attribute)"): a rank, not a chance. See models/lung_nodule_ct/docs.
SCORE = Code("246262008", "SCT", "Score")
# A probability the model gives for its answer once calibrated (DCM "Certainty of Finding").
CERTAINTY = codes.DCM.CertaintyOfFinding


# -- follow-up reports (docs/followup.md) -------------------------------------------------

# A finding's change since the prior: DCM "Description of Change" with SNOMED CT values.
DESCRIPTION_OF_CHANGE = codes.DCM.DescriptionOfChange
CHANGE_CODES: dict[str, Code] = {
    "new": Code("7147002", "SCT", "New"),
    "growing": codes.SCT.IncreaseInSize,  # 15454001
    "stable": codes.SCT.NoChange,  # 260388006
    "shrinking": codes.SCT.DecreaseInSize,  # 19776001
    "resolved": codes.SCT.ProblemResolved,  # 413322009
}
# The days between the prior and the current study (SNOMED CT "Interval"), in UCUM "d".
INTERVAL = codes.SCT.Interval
# TID 1500's "Qualitative Evaluations" container (UMLS, as PS3.16 names it).
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")


def private(value: str, meaning: str) -> Code:
    """A concept of :data:`PRIVATE_SCHEME` (only where no standard scheme has one)."""
    return Code(value, PRIVATE_SCHEME, meaning)


def _designators(ds: Dataset) -> Iterator[str]:
    for element in ds:
        if element.VR == "SQ":
            for item in element.value:
                yield from _designators(item)
        elif element.keyword.endswith("CodingSchemeDesignator") and element.value:
            yield str(element.value)


DatasetT = TypeVar("DatasetT", bound=Dataset)


def declare_private_schemes(ds: DatasetT) -> DatasetT:
    """Add a Coding Scheme Identification item for every non-standard designator in *ds*.

    Returns *ds*. Standard schemes need no item; an item already there is kept.
    """
    used = set(_designators(ds)) - STANDARD_SCHEMES
    declared = {
        str(item.CodingSchemeDesignator)
        for item in ds.get("CodingSchemeIdentificationSequence", [])
    }
    items = list(ds.get("CodingSchemeIdentificationSequence", []))
    for designator in sorted(used - declared):
        item = Dataset()
        item.CodingSchemeDesignator = designator
        if designator == PRIVATE_SCHEME:
            item.CodingSchemeName = PRIVATE_SCHEME_NAME
            item.CodingSchemeResponsibleOrganization = PRIVATE_SCHEME_ORGANIZATION
        items.append(item)
    if items:
        ds.CodingSchemeIdentificationSequence = items
    return ds


# No standard scheme has these (checked against PS3.16 and pydicom's dictionary): private.
VOLUME_DOUBLING_TIME = private("VDT", "Volume doubling time")
VOLUME_CHANGE = private("VOLCHG", "Volume change since prior")
# Lung-RADS categories are ACR's, not in SNOMED CT, LOINC or DICOM: private, and a suggestion.
LUNG_RADS = private("LUNGRADS", "Lung-RADS v2022 category suggestion")


def lung_rads_category(category: str) -> Code:
    """The coded value of Lung-RADS v2022 category *category* (``"1"`` … ``"4B"``)."""
    return private(f"LR{category}", f"Lung-RADS {category}")


# The absolute change of a segmented volume since the prior (mL); VOLUME_CHANGE is the relative one.
VOLUME_CHANGE_ML = private("VOLCHGML", "Absolute volume change since prior")
# RANO 2.0's volumetric response: not coded in SNOMED CT, LOINC or DICOM; a suggestion.
RANO_RESPONSE = private("RANOVOL", "RANO 2.0 volumetric response suggestion")
RANO_MEANINGS = {
    "CR": "Complete response",
    "PR": "Partial response",
    "SD": "Stable disease",
    "PD": "Progressive disease",
}


def rano_category(category: str) -> Code:
    """The coded value of volumetric RANO category *category* (``"CR"``, ``"PR"``, ``"SD"``, ``"PD"``)."""
    return private(f"RANO{category}", f"RANO {RANO_MEANINGS[category]}")
