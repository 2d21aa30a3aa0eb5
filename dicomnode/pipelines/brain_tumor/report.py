"""The brain tumour results on the T1c series: SEG, volume SR and GSPS outlines.

Each present compartment (enhancing tumour, necrotic core, oedema) is a SEG
segment, an SR finding (its outline on its key slice, its volume and its
centre) and GSPS outlines on every slice, under one name and Tracking UID;
the whole tumour is an SR finding of its own (no segment). No tumour is an
explicit "absent" SR, and neither SEG nor GSPS.
"""

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
from dicomnode.pipelines.brain_tumor.followup import (
    WHOLE_TUMOUR,
    BrainFollowUp,
    compartment_change,
    report_comparison,
)
from dicomnode.pipelines.volume import Volume

if TYPE_CHECKING:
    from pydicom import Dataset

    from dicomnode.pipelines.model import ResultWriter
    from dicomnode.results.sr import SegmentVolumeFinding


def _finding_types() -> dict[int, Any]:
    from pydicom.sr.codedict import codes

    return {ENHANCING: codes.SCT.Neoplasm, NECROSIS: codes.SCT.Necrosis, OEDEMA: codes.SCT.Edema}


def write_results(
    t1c: Volume,
    findings: Findings,
    writer: ResultWriter,
    follow_up: BrainFollowUp | None = None,
) -> list[Dataset]:
    """SEG and GSPS (present labels only), then the volume SR, on the T1c source slices.

    Segment numbers follow the present labels and the SR references the same
    numbers. With a *follow_up* (the ``priors`` stage) a compartment the prior
    had keeps the prior's Tracking UID in the SEG, the GSPS and the SR, and the
    SR states each compartment's change, the prior's volumes, the comparison
    (or why it is a baseline) and the volumetric RANO suggestion.
    """
    from pydicom.sr.codedict import codes

    from dicomnode.results import segment_annotations
    from dicomnode.results.outlines import segment_outlines
    from dicomnode.results.sr import write_volume_report

    # One per slice: the slices, or the frames of an enhanced T1c instance (referenced by number).
    source = t1c.slices()
    if len(source) != findings.labels.shape[0]:
        raise PipelineError(
            f"the T1c labels have {findings.labels.shape[0]} slices, the T1c series {len(source)}"
        )
    present = [label for label in LABEL_NAMES if findings.volumes_ml[label] > 0]
    outputs: list[Dataset] = []
    seg = None
    drawn: dict[int, dict[int, list[np.ndarray]]] = {}
    if present:
        labels = _renumbered(findings.labels, present)
        segments = _segments(present, follow_up)
        seg = writer.segmentation(source, labels, segments)
        outputs.append(seg)
        drawn = segment_outlines(labels)
        texts = {
            n: f"{LABEL_NAMES[label]} {findings.volumes_ml[label]:.1f} mL"
            for n, label in enumerate(present, start=1)
        }
        gsps = writer.presentation_state(
            source, segment_annotations(segments, drawn, writer.uid_key, texts)
        )
        if gsps is not None:
            outputs.append(gsps)
    outputs.append(
        write_volume_report(
            source,
            _volume_findings(findings, present, drawn, t1c, follow_up),
            segmentation=seg,
            algorithm=writer.algorithm,
            series=writer.series("sr"),
            uid_key=writer.uid_key,
            procedure=codes.LN.MRIHeadReport,
            empty_finding=codes.SCT.Neoplasm,
            comparison=report_comparison(follow_up) if follow_up is not None else None,
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


def _carried_uid(follow_up: BrainFollowUp | None, label: str) -> str | None:
    """The prior's Tracking UID of compartment *label* (None: this report's own)."""
    tracked = follow_up.of(label) if follow_up is not None else None
    return tracked.tracking_uid if tracked is not None else None


def _segments(present: Sequence[int], follow_up: BrainFollowUp | None = None) -> list[Any]:
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
            tracking_uid=_carried_uid(follow_up, LABEL_NAMES[label]),
        )
        for label in present
    ]


def _key_slice_and_centre(mask: np.ndarray, t1c: Volume) -> tuple[int, tuple[float, float, float]]:
    """The slice with most of *mask* (shown first) and the mask's centre of mass (LPS, mm)."""
    per_slice = mask.reshape(mask.shape[0], -1).sum(axis=1)
    centre = t1c.index_to_lps(np.argwhere(mask).mean(axis=0))[0]
    return int(np.argmax(per_slice)), (float(centre[0]), float(centre[1]), float(centre[2]))


def _volume_findings(
    findings: Findings,
    present: Sequence[int],
    drawn: dict[int, dict[int, list[np.ndarray]]],
    t1c: Volume,
    follow_up: BrainFollowUp | None = None,
) -> list[SegmentVolumeFinding]:
    """A finding per present compartment, then the whole tumour (when there is one)."""
    from pydicom.sr.codedict import codes

    from dicomnode.results.outlines import key_outline, outlines
    from dicomnode.results.sr import SegmentVolumeFinding

    types = _finding_types()
    volume_findings = []
    for number, label in enumerate(present, start=1):
        key_slice, centre = _key_slice_and_centre(findings.labels == label, t1c)
        key_slice, outline = key_outline(drawn[number], key_slice)
        volume_findings.append(
            SegmentVolumeFinding(
                label=LABEL_NAMES[label],
                finding_type=types[label],
                volume_ml=findings.volumes_ml[label],
                segment_number=number,
                key_slice=key_slice,
                finding_site=codes.SCT.Brain,
                outline=outline,
                center_mm=centre,
                tracking_uid=_carried_uid(follow_up, LABEL_NAMES[label]),
                change=_change(follow_up, LABEL_NAMES[label]),
            )
        )
    if present:
        whole = findings.labels > 0
        key_slice, centre = _key_slice_and_centre(whole, t1c)
        key_slice, outline = key_outline({key_slice: outlines(whole[key_slice])}, key_slice)
        volume_findings.append(
            SegmentVolumeFinding(
                label=WHOLE_TUMOUR,
                finding_type=codes.SCT.Neoplasm,
                volume_ml=findings.whole_tumour_ml,
                segment_number=None,
                key_slice=key_slice,
                finding_site=codes.SCT.Brain,
                outline=outline,
                center_mm=centre,
                tracking_uid=_carried_uid(follow_up, WHOLE_TUMOUR),
                change=_change(follow_up, WHOLE_TUMOUR),
            )
        )
    return volume_findings


def _change(follow_up: BrainFollowUp | None, label: str) -> Any:
    return compartment_change(follow_up.of(label)) if follow_up is not None else None
