"""Result writers: DICOM objects that go back into the source study.

One module per object, as in highdicom: :mod:`.seg` (Segmentation),
:mod:`.sr` (TID 1500 measurement and classification reports), :mod:`.sc`
(Secondary Capture key images). They take pixels, geometry and findings and
return highdicom datasets; they never touch the network or the database.
UIDs are derived from a caller-chosen key (the job), so a re-run writes the
same SOP Instance UIDs and a PACS never sees duplicates.
"""

from dicomnode.results.common import AlgorithmInfo, SeriesSpec, result_uid
from dicomnode.results.sc import KeyImageMark, write_key_image, write_overlay_image
from dicomnode.results.seg import SegmentSpec, write_segmentation
from dicomnode.results.sr import (
    ClassificationFinding,
    NoduleFinding,
    write_classification_report,
    write_measurement_report,
)

__all__ = [
    "AlgorithmInfo",
    "ClassificationFinding",
    "KeyImageMark",
    "NoduleFinding",
    "SegmentSpec",
    "SeriesSpec",
    "result_uid",
    "write_classification_report",
    "write_key_image",
    "write_measurement_report",
    "write_overlay_image",
    "write_segmentation",
]
