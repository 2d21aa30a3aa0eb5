"""The brain tumour results: SEG (present compartments) and a volume SR on the T1c series."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from dicomnode.pipelines.base import PipelineError
from dicomnode.pipelines.brain_tumor.findings import (
    ENHANCING,
    LABEL_NAMES,
    NECROSIS,
    OEDEMA,
    Findings,
)

if TYPE_CHECKING:
    from pydicom import Dataset

    from dicomnode.pipelines.model import ResultWriter
    from dicomnode.results.sr import SegmentVolumeFinding


def _finding_types() -> dict[int, Any]:
    from pydicom.sr.codedict import codes

    return {ENHANCING: codes.SCT.Neoplasm, NECROSIS: codes.SCT.Necrosis, OEDEMA: codes.SCT.Edema}


def write_results(
    source: Sequence[Dataset], findings: Findings, writer: ResultWriter
) -> list[Dataset]:
    """SEG (present labels only) and the volume SR on the T1c source slices.

    Segment numbers follow the present labels and the SR references the same
    numbers; no tumour is an explicit "absent" SR and no SEG.
    """
    from pydicom.sr.codedict import codes

    from dicomnode.results.sr import write_volume_report

    if len(source) != findings.labels.shape[0]:
        raise PipelineError(
            "the T1c series is one multi-frame instance; SEG on multi-frame sources is not supported yet"
        )
    present = [label for label in LABEL_NAMES if findings.volumes_ml[label] > 0]
    outputs: list[Dataset] = []
    seg = None
    if present:
        seg = writer.segmentation(source, _renumbered(findings.labels, present), _segments(present))
        outputs.append(seg)
    outputs.append(
        write_volume_report(
            source,
            _volume_findings(findings, present),
            segmentation=seg,
            algorithm=writer.algorithm,
            series=writer.series("sr"),
            uid_key=writer.uid_key,
            procedure=codes.LN.MRIHeadReport,
            empty_finding=codes.SCT.Neoplasm,
        )
    )
    return outputs


def _renumbered(labels: np.ndarray, present: Sequence[int]) -> np.ndarray:
    """Labels as segment numbers: the n-th present label becomes segment n."""
    remap = np.zeros(max(LABEL_NAMES) + 1, dtype=np.uint8)
    for number, label in enumerate(present, start=1):
        remap[label] = number
    renumbered: np.ndarray = remap[labels]
    return renumbered


def _segments(present: Sequence[int]) -> list[Any]:
    from pydicom.sr.codedict import codes

    from dicomnode.results import SegmentSpec

    types = _finding_types()
    return [
        SegmentSpec(
            LABEL_NAMES[label],
            codes.SCT.MorphologicallyAbnormalStructure,
            types[label],
            tracking_id=LABEL_NAMES[label],
            anatomic_region=codes.SCT.Brain,
        )
        for label in present
    ]


def _volume_findings(findings: Findings, present: Sequence[int]) -> list[SegmentVolumeFinding]:
    """A finding per present compartment, then the whole tumour (when there is one)."""
    from pydicom.sr.codedict import codes

    from dicomnode.results.sr import SegmentVolumeFinding

    types = _finding_types()
    key_slice = findings.key_slice
    volume_findings = [
        SegmentVolumeFinding(
            label=LABEL_NAMES[label],
            finding_type=types[label],
            volume_ml=findings.volumes_ml[label],
            segment_number=number,
            key_slice=key_slice,
            finding_site=codes.SCT.Brain,
        )
        for number, label in enumerate(present, start=1)
    ]
    if present:
        volume_findings.append(
            SegmentVolumeFinding(
                label="Whole tumour",
                finding_type=codes.SCT.Neoplasm,
                volume_ml=findings.whole_tumour_ml,
                segment_number=None,
                key_slice=key_slice,
                finding_site=codes.SCT.Brain,
            )
        )
    return volume_findings
