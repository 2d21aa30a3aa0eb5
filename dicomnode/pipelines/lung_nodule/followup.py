"""The lung pipeline's ``priors`` stage: compare the nodules with the patient's prior CT.

In order (``docs/followup.md``):

1. ask the node for the prior (``context.priors``: its database, then the
   ``[[sources]]``; the node retrieves it into the store — the pipeline opens
   no socket);
2. the prior's nodules: from the node's own report of it when a done job of
   this pipeline made one (their Tracking Identifiers and UIDs are carried),
   else by running this pipeline's own stages on the prior (select → …
   → postprocess), with Tracking UIDs derived from the prior study and the
   model, so a re-run gives the same ones;
3. register prior → current on the lungs (SimpleITK, rigid then affine,
   :func:`dicomnode.followup.registration.register`, on both volumes
   block-averaged to no finer than :data:`REGISTRATION_GRID_MM`); a poor
   registration is not used: the report is a baseline that says so;
4. match and describe the nodules (:func:`dicomnode.followup.tracking.track`;
   the interval from the two Study Dates) and suggest the exam's Lung-RADS
   v2022 category (:func:`dicomnode.followup.lungrads.exam_category`).

Nothing here fails the job: no prior, a source down, a retrieve error or a
poor registration give a :class:`LungFollowUp` that is a baseline, whose
``summary`` the timeline and the SR both state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dicomnode.followup.lungrads import ExamCategory, exam_category
from dicomnode.followup.tracking import Lesion, TrackedNodule, track
from dicomnode.pipelines.base import JobContext, PriorStudy, SeriesInput
from dicomnode.pipelines.lung_nodule.findings import Detection
from dicomnode.pipelines.volume import Volume

if TYPE_CHECKING:
    from dicomnode.followup.registration import Registration
    from dicomnode.pipelines.lung_nodule.pipeline import LungNodulePipeline

# The finest grid (slices, rows, columns; mm) the registration is given: the grid its figures
# were measured on (docs/followup.md). Thinner slices and finer pixels are block-averaged to
# it first; at full resolution a 300-slice CT took half a minute on two cores for no gain.
REGISTRATION_GRID_MM = (4.0, 3.0, 3.0)


@dataclass(frozen=True)
class LungFollowUp:
    """The outcome of the ``priors`` stage: a comparison, or a baseline with its reason.

    Attributes
    ----------
    summary
        The sentence the timeline and the SR state.
    nodules
        One per current detection, in detection order, then the resolved prior
        nodules (a baseline: the current ones, status ``baseline``).
    category
        The exam's Lung-RADS v2022 suggestion.
    compared
        False: a baseline (no prior, or none usable).
    prior_images
        The prior's slices (their headers go to the SR's evidence).
    registration
        The mapping prior LPS → current LPS the nodules were matched with.
    prior_volume
        The prior's voxels (read-only), for the side-by-side key images
        (:mod:`~dicomnode.pipelines.lung_nodule.keyimages`).
    """

    summary: str
    nodules: tuple[TrackedNodule, ...]
    category: ExamCategory | None
    compared: bool = False
    prior_study_instance_uid: str | None = None
    prior_date: date | None = None
    current_date: date | None = None
    interval_days: float | None = None
    prior_images: tuple[Any, ...] = field(default=())
    registration: Registration | None = None
    prior_volume: Volume | None = field(default=None, repr=False, compare=False)


def current_lesions(detections: Sequence[Detection], uid_key: str) -> list[Lesion]:
    """The detections as lesions, named and UID'd as a report without a prior names them."""
    from dicomnode.followup.tracking import lesion_from_detection
    from dicomnode.results import finding_uid

    return [
        lesion_from_detection(d, f"Nodule {n}", finding_uid(uid_key, n))
        for n, d in enumerate(detections, start=1)
    ]


def baseline(
    detections: Sequence[Detection], uid_key: str, reason: str, current_date: date | None = None
) -> LungFollowUp:
    """A baseline: every nodule read by its size (Lung-RADS baseline rows), *reason* stated."""
    nodules = tuple(
        TrackedNodule(
            "baseline", None, lesion, 0.0, None, None, lesion.tracking_id, lesion.tracking_uid
        )
        for lesion in current_lesions(detections, uid_key)
    )
    sentence = reason[:1].upper() + reason[1:]
    return LungFollowUp(
        summary=f"Baseline report: {sentence.rstrip('.')}.",
        nodules=nodules,
        category=exam_category(nodules, baseline=True),
        current_date=current_date,
    )


def report_lesions(path: Path) -> list[Lesion]:
    """The nodules of a TID 1500 report this pipeline wrote, at its current time point.

    Per Tracking UID: the centre of its 3D ellipsoid, the long axis, the volume,
    the Tracking Identifier. Groups of an earlier time point (a follow-up
    report's prior measurements) are skipped.
    """
    import highdicom as hd
    import numpy as np
    from pydicom.sr.codedict import codes

    from dicomnode.followup.stage import time_point_of

    content: Any = hd.sr.srread(path).content  # a MeasurementReport: its groups by type
    found: dict[str, dict[str, Any]] = {}
    for group in content.get_planar_roi_measurement_groups():
        if time_point_of(group) == "prior":
            continue
        item = found.setdefault(str(group.tracking_uid), {"id": str(group.tracking_identifier)})
        for name, key in ((codes.SCT.LongAxis, "long"), (codes.SCT.Volume, "volume")):
            measured = group.get_measurements(name=name)
            if measured:
                item[key] = float(measured[0].value)
    for group in content.get_volumetric_roi_measurement_groups():
        if time_point_of(group) == "prior" or not isinstance(group.roi, hd.sr.VolumeSurface):
            continue
        ends = np.asarray(group.roi[0].value, dtype=float)
        found.setdefault(str(group.tracking_uid), {"id": str(group.tracking_identifier)})[
            "center"
        ] = ends.mean(axis=0)
    lesions = []
    for uid, item in found.items():
        if "center" not in item or "volume" not in item:
            continue  # "Nodule: Absent", or not a nodule group
        c = item["center"]
        lesions.append(
            Lesion(
                (float(c[0]), float(c[1]), float(c[2])),
                item["volume"],
                item.get("long", 0.0),
                tracking_id=item["id"],
                tracking_uid=uid,
            )
        )
    return lesions


def _prior_lesions(
    pipeline: LungNodulePipeline, prior: PriorStudy, context: JobContext
) -> tuple[list[Lesion], Volume, str]:
    """The prior's nodules, its volume, and where the nodules came from (a phrase)."""
    from dicomnode.followup.stage import own_findings, prior_uid_key
    from dicomnode.followup.tracking import lesion_from_detection
    from dicomnode.results import finding_uid

    prior_context = context.for_prior(prior)
    lesions = own_findings(prior, report_lesions, context)
    if lesions is not None:
        selected: SeriesInput = pipeline.select(prior_context)
        volume = pipeline.load(selected, prior_context)
        return lesions, volume, "nodules from this node's report of it"
    _, volume, detections = pipeline.analyse(prior_context, record_inputs=False)
    key = prior_uid_key(prior, f"{pipeline.algorithm.name} {pipeline.algorithm.version}")
    lesions = [
        lesion_from_detection(d, f"Nodule {n}", finding_uid(key, n))
        for n, d in enumerate(detections, start=1)
    ]
    return lesions, volume, "nodules found by running the model on it"


def read_only(volume: Volume) -> Volume:
    """*volume* on a read-only view of its voxels: a follow-up is a record, not a workspace."""
    view = volume.array.view()
    view.flags.writeable = False
    return volume.with_array(view)


def _counts(nodules: Sequence[TrackedNodule]) -> str:
    order = ("new", "growing", "stable", "shrinking", "resolved")
    counts = {s: sum(1 for n in nodules if n.status == s) for s in order}
    return ", ".join(f"{counts[s]} {s}" for s in order if counts[s]) or "no nodule in either study"


def compare_with_prior(
    pipeline: LungNodulePipeline,
    selected: SeriesInput,
    detections: Sequence[Detection],
    volume: Volume,
    context: JobContext,
) -> LungFollowUp:
    """The ``priors`` stage (module docstring); a baseline with its reason when there is no comparison."""
    from dicomnode.followup.stage import NoComparison, newest_prior, registered

    uid_key = pipeline.results(context).uid_key
    chosen = newest_prior(context, selected, pipeline.options.priors)
    if isinstance(chosen, NoComparison):
        return baseline(detections, uid_key, chosen.reason, chosen.current_date)
    prior = chosen.prior
    context.check_cancelled()
    lesions, prior_volume, where = _prior_lesions(pipeline, prior, context)
    context.check_cancelled()
    registration = registered(
        prior_volume, volume, anatomy="lung", grid_mm=REGISTRATION_GRID_MM, context=context
    )
    if registration.poor:
        poor = chosen.not_compared(registration)
        return baseline(detections, uid_key, poor.reason, poor.current_date)
    interval = chosen.interval_days
    nodules = track(lesions, current_lesions(detections, uid_key), registration.matrix, interval)
    category = exam_category(nodules)
    return LungFollowUp(
        summary=(
            f"Compared with {chosen.name} ({prior.origin}; {where}), {interval:.0f} days "
            f"earlier: {_counts(nodules)}. {registration.reason}"
        ),
        nodules=tuple(nodules),
        category=category,
        compared=True,
        prior_study_instance_uid=prior.study_instance_uid,
        prior_date=prior.study_date,
        current_date=chosen.current_date,
        interval_days=interval,
        prior_images=tuple(prior_volume.slices()),
        registration=registration,
        prior_volume=read_only(prior_volume),
    )


def report_comparison(follow_up: LungFollowUp) -> Any:
    """The SR's :class:`~dicomnode.results.Comparison` of *follow_up*."""
    from pydicom.sr.codedict import codes

    from dicomnode.results import Comparison, PriorMeasurement, ResolvedFinding

    resolved = tuple(
        ResolvedFinding(
            n.tracking_id,
            n.tracking_uid,
            PriorMeasurement(n.prior.center_lps, n.prior.volume_mm3, n.prior.long_axis_mm or None),
            finding_site=codes.SCT.Lung,
        )
        for n in follow_up.nodules
        if n.status == "resolved" and n.prior is not None
    )
    category = follow_up.category
    return Comparison(
        text=follow_up.summary,
        prior_images=tuple(follow_up.prior_images),
        current_date=follow_up.current_date,
        prior_date=follow_up.prior_date,
        interval_days=follow_up.interval_days,
        category=category.category if category is not None else None,
        category_rule=category.rule if category is not None else "",
        resolved=resolved,
    )


def nodule_change(nodule: TrackedNodule) -> Any:
    """The SR's :class:`~dicomnode.results.NoduleChange` of one current nodule (None: a baseline)."""
    from dicomnode.results import NoduleChange, PriorMeasurement

    if nodule.status == "baseline":
        return None
    prior = None
    if nodule.prior is not None:
        prior = PriorMeasurement(
            nodule.prior.center_lps, nodule.prior.volume_mm3, nodule.prior.long_axis_mm or None
        )
    return NoduleChange(nodule.status, prior, nodule.volume_change_percent, nodule.vdt_days)
