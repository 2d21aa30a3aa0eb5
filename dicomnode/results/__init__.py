"""Result writers: DICOM objects that go back into the source study.

One module per object, as in highdicom: :mod:`.seg` (Segmentation),
:mod:`.sr` (TID 1500 measurement, volume and classification reports),
:mod:`.pr` (Grayscale Softcopy Presentation States), :mod:`.sc` (Secondary
Capture key images); :mod:`.outlines` (mask outlines in image coordinates),
:mod:`.palette` (one colour per finding type) and :mod:`.codes` (concepts and
the private coding scheme) serve them all. They take pixels, geometry and
findings and return highdicom datasets; they never touch the network or the
database.
UIDs are derived from a caller-chosen key (the job), so a re-run writes the
same SOP Instance UIDs and a PACS never sees duplicates.
"""

from dicomnode.results.common import AlgorithmInfo, SeriesSpec, finding_uid, result_uid
from dicomnode.results.pr import Annotation, segment_annotations, write_presentation_state
from dicomnode.results.sc import (
    ComparisonPanel,
    KeyImageMark,
    write_comparison_image,
    write_key_image,
    write_overlay_image,
)
from dicomnode.results.seg import SegmentSpec, write_segmentation
from dicomnode.results.sr import (
    ClassificationFinding,
    Comparison,
    NoduleChange,
    NoduleFinding,
    PriorMeasurement,
    ResolvedFinding,
    SegmentVolumeFinding,
    VolumeChange,
    write_classification_report,
    write_measurement_report,
    write_volume_report,
)

__all__ = [
    "AlgorithmInfo",
    "Annotation",
    "ClassificationFinding",
    "Comparison",
    "ComparisonPanel",
    "KeyImageMark",
    "NoduleChange",
    "NoduleFinding",
    "PriorMeasurement",
    "ResolvedFinding",
    "SegmentSpec",
    "SegmentVolumeFinding",
    "SeriesSpec",
    "VolumeChange",
    "finding_uid",
    "result_uid",
    "segment_annotations",
    "write_classification_report",
    "write_comparison_image",
    "write_key_image",
    "write_measurement_report",
    "write_overlay_image",
    "write_presentation_state",
    "write_segmentation",
    "write_volume_report",
]
