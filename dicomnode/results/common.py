"""What every result object carries: algorithm identity, series, stable UIDs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from dicomnode import __version__

if TYPE_CHECKING:
    from dicomnode.revisions import Predecessor

MANUFACTURER = "dicomnode"
DEFAULT_NOTICE = "Not for diagnostic use"


@dataclass(frozen=True)
class AlgorithmInfo:
    """The model that produced a result, and the notice shown with it."""

    name: str
    version: str
    notice: str = DEFAULT_NOTICE

    def identification(self) -> hd.AlgorithmIdentificationSequence:
        """Algorithm Identification Sequence for SEG segments."""
        return hd.AlgorithmIdentificationSequence(
            name=self.name[:64],
            version=self.version[:64],
            family=codes.cid7162.ArtificialIntelligence,
            parameters={"notice": self.notice[:64]} if self.notice else None,
        )

    def sr_identification(self) -> hd.sr.AlgorithmIdentification:
        """TID 4019 Algorithm Identification; the notice goes in as a parameter."""
        return hd.sr.AlgorithmIdentification(
            name=self.name[:64],
            version=self.version[:64],
            parameters=[self.notice] if self.notice else None,
        )


@dataclass(frozen=True)
class SeriesSpec:
    """Number and description of the new series a result goes into.

    *revision* > 1: the series holds a revision of the job's results (a new
    series per revision, same Series Number; ``docs/revisions.md``);
    *predecessors*: the SRs a revised SR cites.
    """

    number: int
    description: str
    revision: int = 1
    predecessors: tuple[Predecessor, ...] = ()

    def described(self, notice: str) -> str:
        """Series Description with the revision and the notice appended (LO: 64 characters)."""
        text = self.description
        if self.revision > 1:
            text += f" rev {self.revision}"
        text = f"{text} ({notice})" if notice else text
        return text[:64]


def result_uid(key: str, role: str) -> str:
    """A UID that is the same for the same (key, role): re-runs resend, never duplicate."""
    return str(generate_uid(entropy_srcs=[key, role]))


def finding_uid(key: str, number: int | str) -> str:
    """The Tracking UID of finding *number* of a job: SEG segment, SR groups and GSPS share it."""
    return result_uid(key, f"finding-{number}")


def software_versions() -> str:
    """Software Versions of produced objects."""
    return f"dicomnode {__version__}"


class Equipment(TypedDict):
    """The General Equipment keywords of highdicom's constructors (typed, so mypy checks them)."""

    manufacturer: str
    manufacturer_model_name: str
    software_versions: str
    device_serial_number: str


def equipment(algorithm: AlgorithmInfo) -> Equipment:
    """The General Equipment of an object *algorithm* makes, as highdicom keywords."""
    return {
        "manufacturer": MANUFACTURER,
        "manufacturer_model_name": algorithm.name[:64],
        "software_versions": software_versions(),
        "device_serial_number": "1",
    }


def copy_body_part(result: Dataset, source: Dataset) -> None:
    """Body Part Examined and General Series Laterality of a new series from its *source* image.

    Laterality (2C) is for a paired body part: an image of one side (Laterality or
    Image Laterality R or L) gives it; otherwise the body part goes in instead
    (a CT chest is unpaired: no Laterality at all, rather than an empty one), and
    only when even that is unknown is Laterality left empty, as Type 2 allows.
    """
    laterality = source.get("Laterality", "") or source.get("ImageLaterality", "")
    # An enhanced multi-frame image says both in its Frame Anatomy macro instead.
    anatomy = _frame_anatomy(source)
    frame = str(anatomy.get("FrameLaterality", "")) if anatomy is not None else ""
    body_part = source.get("BodyPartExamined") or _body_part_of(anatomy)
    if body_part:
        result.BodyPartExamined = body_part
    if laterality in ("R", "L") or frame in ("R", "L"):
        result.Laterality = laterality if laterality in ("R", "L") else frame
    elif not body_part:
        result.Laterality = ""


def _frame_anatomy(source: Dataset) -> Dataset | None:
    """The (first) Frame Anatomy item of an enhanced image's functional groups, else None.

    A :class:`~dicomnode.results.frames.SourceFrame` has it at its top level.
    """
    if "FrameLaterality" in source:
        return source
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        for item in (source.get(groups) or [])[:1]:
            anatomy = item.get("FrameAnatomySequence")
            if anatomy:
                return anatomy[0]
    return None


def _body_part_of(anatomy: Dataset | None) -> str | None:
    """Body Part Examined from a Frame Anatomy's region ("Chest" -> "CHEST", PS3.16 Annex L).

    The defined terms are the region's name in capitals without spaces for the
    regions our pipelines see; None when there is no region or no usable name.
    """
    regions = anatomy.get("AnatomicRegionSequence") if anatomy is not None else None
    if not regions:
        return None
    term = "".join(c for c in str(regions[0].get("CodeMeaning", "")).upper() if c.isalnum())
    return term[:16] or None
