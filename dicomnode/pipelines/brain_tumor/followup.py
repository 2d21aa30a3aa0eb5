"""The brain pipeline's ``priors`` stage: each compartment's volume against the patient's prior MR.

In order (``docs/followup.md``):

1. ask the node for the prior (``context.priors``: its database, then the
   ``[[sources]]``; the node retrieves it into the store — the pipeline opens
   no socket);
2. the prior's compartment volumes: from the node's own report of it when a
   done job of this pipeline made one (their Tracking Identifiers and UIDs
   are carried), else by running this pipeline's own stages on the prior
   (select → … → postprocess; all four sequences are needed there too), with
   Tracking UIDs derived from the prior study and the model, so a re-run gives
   the same ones;
3. register the prior T1c onto the current T1c on the brain (SimpleITK,
   :func:`dicomnode.followup.registration.register`: rigid, as a skull does
   not scale — an affine stage shrank heads by 8-11 % on the synthetic pairs,
   ``docs/followup.md``), on both volumes block-averaged to no finer than
   :data:`dicomnode.followup.registration.BRAIN_GRID_MM`, the grid
   ``register`` fits the brain on;
   a poor registration is not used: the report is a baseline that says so.
   Volumes need no registration, but whether the two studies show the same
   head, and where the prior's tumour lies in the current study, do: the
   registered prior tumour centre is compared with the current one, and a
   distance over :data:`SAME_LESION_MM` is stated as a doubt in the report;
4. each compartment's change (enhancing tumour, necrotic core, oedema, whole
   tumour; mL and %, :func:`dicomnode.followup.rano.compartment_changes`) and
   the volumetric RANO 2.0 response suggested from the enhancing volume
   (:func:`dicomnode.followup.rano.volumetric_response`), against the newest
   prior: RANO judges response against the baseline and progression against
   the nadir, so the category is a suggestion, and the report says which
   prior it is against.

Nothing here fails the job: no prior, a source down, a retrieve error, a
prior without the four sequences or a poor registration give a
:class:`BrainFollowUp` that is a baseline, whose ``summary`` the timeline and
the SR both state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dicomnode.followup.rano import CompartmentChange, Response, compartment_changes
from dicomnode.pipelines.base import JobContext, PriorStudy, SeriesInput
from dicomnode.pipelines.brain_tumor.findings import LABEL_NAMES, Findings
from dicomnode.pipelines.volume import Volume

if TYPE_CHECKING:
    from dicomnode.followup.registration import Registration
    from dicomnode.pipelines.brain_tumor.pipeline import BrainTumorPipeline

WHOLE_TUMOUR = "Whole tumour"
# The report's labels (SEG segments, SR tracking identifiers) → rano's compartment names.
COMPARTMENT_OF = {
    LABEL_NAMES[1]: "enhancing",
    LABEL_NAMES[2]: "necrotic",
    LABEL_NAMES[3]: "oedema",
    WHOLE_TUMOUR: "whole",
}
# Registered tumour centres further apart than this may not be the same lesion.
SAME_LESION_MM = 15.0


@dataclass(frozen=True)
class PriorCompartment:
    """One compartment as the prior study measured it (its own LPS)."""

    label: str
    volume_ml: float
    tracking_uid: str
    center_lps: tuple[float, float, float] | None = None


@dataclass(frozen=True)
class TrackedCompartment:
    """One compartment in both studies: its change and the prior's identifiers.

    ``tracking_uid`` is the prior's (None: the prior did not have it; the
    report gives it its own); ``prior`` its prior measurement (None: absent there).
    """

    label: str
    change: CompartmentChange
    tracking_uid: str | None = None
    prior: PriorCompartment | None = None


@dataclass(frozen=True)
class BrainFollowUp:
    """The outcome of the ``priors`` stage: a comparison, or a baseline with its reason.

    Attributes
    ----------
    summary
        The sentence the timeline and the SR state.
    compartments
        Enhancing tumour, necrotic core, oedema and whole tumour in turn (empty: a baseline).
    response
        The volumetric RANO 2.0 suggestion (None: a baseline).
    compared
        False: a baseline (no prior, or none usable).
    prior_images
        The prior T1c's slices (their headers go to the SR's evidence).
    tumour_shift_mm
        Distance between the current whole-tumour centre and the prior's,
        mapped through the registration (None: a tumour missing in either).
    """

    summary: str
    compartments: tuple[TrackedCompartment, ...] = ()
    response: Response | None = None
    compared: bool = False
    prior_study_instance_uid: str | None = None
    prior_date: date | None = None
    current_date: date | None = None
    interval_days: float | None = None
    prior_images: tuple[Any, ...] = field(default=())
    registration: Registration | None = None
    tumour_shift_mm: float | None = None

    def of(self, label: str) -> TrackedCompartment | None:
        """The tracked compartment *label* (``"Oedema"``, …); None in a baseline."""
        return next((c for c in self.compartments if c.label == label), None)


def baseline(reason: str, current_date: date | None = None) -> BrainFollowUp:
    """A baseline report stating *reason*."""
    sentence = reason[:1].upper() + reason[1:]
    return BrainFollowUp(f"Baseline report: {sentence.rstrip('.')}.", current_date=current_date)


def current_volumes(findings: Findings) -> dict[str, float]:
    """The findings' volumes (mL) by report label, the whole tumour included."""
    volumes = {LABEL_NAMES[label]: float(ml) for label, ml in findings.volumes_ml.items()}
    volumes[WHOLE_TUMOUR] = float(findings.whole_tumour_ml)
    return volumes


def _centre(mask: np.ndarray, volume: Volume) -> tuple[float, float, float] | None:
    if not mask.any():
        return None
    c = volume.index_to_lps(np.argwhere(mask).mean(axis=0))[0]
    return (float(c[0]), float(c[1]), float(c[2]))


def centres(findings: Findings, t1c: Volume) -> dict[str, tuple[float, float, float] | None]:
    """Each compartment's centre of mass (LPS, mm) by report label; None where it is absent."""
    out = {LABEL_NAMES[label]: _centre(findings.labels == label, t1c) for label in LABEL_NAMES}
    out[WHOLE_TUMOUR] = _centre(findings.labels > 0, t1c)
    return out


def report_compartments(path: Path) -> dict[str, PriorCompartment]:
    """The compartments of a TID 1500 volume report this pipeline wrote, at its current time point.

    Per tracking identifier this pipeline uses (:data:`COMPARTMENT_OF`): the
    volume (mL), the Tracking UID and the centre (its point group). Groups of an
    earlier time point (a follow-up report's prior measurements) are skipped.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from dicomnode.followup.stage import time_point_of

    content: Any = hd.sr.srread(path).content
    found: dict[str, dict[str, Any]] = {}
    for group in content.get_planar_roi_measurement_groups():
        label = str(group.tracking_identifier)
        if label not in COMPARTMENT_OF or time_point_of(group) == "prior":
            continue
        item = found.setdefault(label, {"uid": str(group.tracking_uid)})
        measured = group.get_measurements(name=codes.SCT.Volume)
        if measured:
            item["volume"] = float(measured[0].value)
        region = group.roi
        if isinstance(region, hd.sr.ImageRegion3D):
            point = np.asarray(region.value, dtype=float).reshape(-1, 3)[0]
            item["center"] = (float(point[0]), float(point[1]), float(point[2]))
    return {
        label: PriorCompartment(label, item["volume"], item["uid"], item.get("center"))
        for label, item in found.items()
        if "volume" in item
    }


def _prior_compartments(
    pipeline: BrainTumorPipeline, prior: PriorStudy, context: JobContext
) -> tuple[dict[str, PriorCompartment], Volume, str]:
    """The prior's compartments, its T1c volume, and where the volumes came from (a phrase)."""
    from dicomnode.followup.stage import own_findings, prior_uid_key
    from dicomnode.results import finding_uid

    prior_context = context.for_prior(prior)
    compartments = own_findings(prior, report_compartments, context)
    if compartments is not None:
        t1c = pipeline.load(pipeline.select(prior_context), prior_context)["T1c"]
        return compartments, t1c, "volumes from this node's report of it"
    _, loaded, findings = pipeline.analyse(prior_context, record_inputs=False)
    key = prior_uid_key(prior, f"{pipeline.algorithm.name} {pipeline.algorithm.version}")
    where = centres(findings, loaded["T1c"])
    compartments = {
        label: PriorCompartment(label, ml, finding_uid(key, label), where[label])
        for label, ml in current_volumes(findings).items()
        if ml > 0
    }
    return compartments, loaded["T1c"], "volumes found by running the model on it"


def track_compartments(
    prior: Mapping[str, PriorCompartment], current_ml: Mapping[str, float]
) -> tuple[TrackedCompartment, ...]:
    """Each compartment's change prior → current, carrying the prior's identifiers."""
    changes = compartment_changes(
        {COMPARTMENT_OF[label]: p.volume_ml for label, p in prior.items()},
        {COMPARTMENT_OF[label]: ml for label, ml in current_ml.items()},
    )
    tracked = []
    for label, name in COMPARTMENT_OF.items():
        before = prior.get(label)
        tracked.append(
            TrackedCompartment(
                label, changes[name], before.tracking_uid if before else None, before
            )
        )
    return tuple(tracked)


def _describe(compartments: tuple[TrackedCompartment, ...]) -> str:
    parts = []
    for c in compartments:
        percent = c.change.change_percent
        change = f"{percent:+.0f} %" if percent is not None else "new"
        parts.append(
            f"{c.label.lower()} from {c.change.prior_ml:.1f} to {c.change.current_ml:.1f} mL "
            f"({change})"
        )
    return ", ".join(parts)


def _shift(
    prior: Mapping[str, PriorCompartment],
    current_centres: Mapping[str, tuple[float, float, float] | None],
    registration: Registration,
) -> float | None:
    before = prior.get(WHOLE_TUMOUR)
    now = current_centres.get(WHOLE_TUMOUR)
    if before is None or before.center_lps is None or now is None:
        return None
    mapped = registration.map_points(before.center_lps)[0]
    return float(np.linalg.norm(mapped - np.asarray(now)))


def compare_with_prior(
    pipeline: BrainTumorPipeline,
    selected: Mapping[str, SeriesInput],
    findings: Findings,
    loaded: Mapping[str, Volume],
    context: JobContext,
) -> BrainFollowUp:
    """The ``priors`` stage (module docstring); a baseline with its reason when there is no comparison."""
    from dicomnode.followup.rano import volumetric_response
    from dicomnode.followup.registration import BRAIN_GRID_MM
    from dicomnode.followup.stage import NoComparison, newest_prior, registered

    chosen = newest_prior(context, selected["T1c"], pipeline.options.priors)
    if isinstance(chosen, NoComparison):
        return baseline(chosen.reason, chosen.current_date)
    prior = chosen.prior
    context.check_cancelled()
    prior_compartments, prior_t1c, where = _prior_compartments(pipeline, prior, context)
    context.check_cancelled()
    t1c = loaded["T1c"]
    registration = registered(
        prior_t1c, t1c, anatomy="brain", grid_mm=BRAIN_GRID_MM, context=context
    )
    if registration.poor:
        poor = chosen.not_compared(registration)
        return baseline(poor.reason, poor.current_date)
    interval = chosen.interval_days
    compartments = track_compartments(prior_compartments, current_volumes(findings))
    enhancing = compartments[0].change
    response = volumetric_response(enhancing.prior_ml, enhancing.current_ml)
    shift = _shift(prior_compartments, centres(findings, t1c), registration)
    doubt = ""
    if shift is not None and shift > SAME_LESION_MM:
        doubt = (
            f" The tumour's centre lies {shift:.0f} mm from where the prior's maps to: "
            "check that both describe the same lesion."
        )
    return BrainFollowUp(
        summary=(
            f"Compared with {chosen.name} ({prior.origin}; {where}), {interval:.0f} days earlier: "
            f"{_describe(compartments)}. Response against this prior (RANO compares "
            f"response with the baseline and progression with the nadir).{doubt} "
            f"{registration.reason}"
        ),
        compartments=compartments,
        response=response,
        compared=True,
        prior_study_instance_uid=prior.study_instance_uid,
        prior_date=prior.study_date,
        current_date=chosen.current_date,
        interval_days=interval,
        prior_images=tuple(prior_t1c.slices()),
        registration=registration,
        tumour_shift_mm=shift,
    )


def report_comparison(follow_up: BrainFollowUp) -> Any:
    """The SR's :class:`~dicomnode.results.Comparison` of *follow_up* (compartments gone: resolved)."""
    from dicomnode.results import Comparison, PriorMeasurement, ResolvedFinding

    resolved = tuple(
        ResolvedFinding(
            c.label,
            c.prior.tracking_uid,
            PriorMeasurement(c.prior.center_lps, c.prior.volume_ml * 1000.0),
            finding_type=finding_type_of(c.label),
        )
        for c in follow_up.compartments
        if c.prior is not None and c.change.current_ml <= 0 and c.prior.center_lps is not None
    )
    response = follow_up.response
    return Comparison(
        text=follow_up.summary,
        prior_images=tuple(follow_up.prior_images),
        current_date=follow_up.current_date,
        prior_date=follow_up.prior_date,
        interval_days=follow_up.interval_days,
        category=response.category if response is not None else None,
        category_rule=response.reason.rstrip(".") if response is not None else "",
        resolved=resolved,
        scale="rano",
    )


def finding_type_of(label: str) -> Any:
    """The SNOMED CT finding type of report label *label*."""
    from pydicom.sr.codedict import codes

    return {
        LABEL_NAMES[1]: codes.SCT.Neoplasm,
        LABEL_NAMES[2]: codes.SCT.Necrosis,
        LABEL_NAMES[3]: codes.SCT.Edema,
    }.get(label, codes.SCT.Neoplasm)


def compartment_change(compartment: TrackedCompartment | None) -> Any:
    """The SR's :class:`~dicomnode.results.VolumeChange` of one current compartment (None: none)."""
    from dicomnode.results import PriorMeasurement, VolumeChange

    if compartment is None:
        return None
    prior = None
    before = compartment.prior
    if before is not None and before.center_lps is not None:
        prior = PriorMeasurement(before.center_lps, before.volume_ml * 1000.0)
    return VolumeChange(compartment.change.change_ml, compartment.change.change_percent, prior)
