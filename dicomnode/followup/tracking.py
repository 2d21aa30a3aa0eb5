"""Nodules matched across a prior and a current study: status, change, volume doubling time.

Matching (:func:`track`): prior centres are mapped into the current study's
LPS through the registration, then prior and current nodules are paired by
:func:`scipy.optimize.linear_sum_assignment` on a cost that weighs the
registered centre distance and the size difference. Two gates keep
implausible pairs out (they are then a resolved and a new nodule, not a
match):

* distance: at most ``distance_gate_mm + distance_gate_factor * d`` where
  ``d`` is the larger of the two mean diameters (default 10 mm + 1.0 x d:
  registration errors of a few mm plus the centroid shift of a nodule that
  grew eccentrically scale with its size);
* size: the mean diameters differ at most by a factor ``max_diameter_ratio``
  (default 3, i.e. a volume change of 27 times: a VDT of about 75 days over a
  year).

Status of a matched nodule (``volume ratio r = V_current / V_prior``, mean
diameter change ``delta``):

* ``growing``: r >= 1.25 **and** delta > 1.5 mm. The 1.5 mm is Lung-RADS
  v2022's growth criterion (an increase in mean diameter of more than 1.5 mm
  within 12 months), chosen there to be beyond the measurement error of
  manual diameters; the 25 % volume increase is the usual volumetric
  measurement-error margin (a 25 % volume change is about 8 % in diameter).
  Both must hold, so a small nodule's voxel noise and a large nodule's
  slight contour change are not growth.
* ``shrinking``: r <= 0.8 (1 / 1.25) **and** delta < -1.5 mm.
* ``stable``: otherwise.
* ``new``: a current nodule matched to none; ``resolved``: a prior one matched to none.

Volume doubling time: ``VDT = interval_days x ln 2 / ln(V_current / V_prior)``
(Schultz's formula under exponential growth); negative for shrinking nodules
(then the magnitude is a halving time), None when the volumes are equal.

Mean diameter: the average of the long and short axes when a short axis is
known (Lung-RADS v2022 measures so, to one decimal); otherwise the diameter
of the sphere of the nodule's volume (what the detector's masks give; for a
sphere the two agree).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

# Status thresholds (module docstring).
GROWTH_VOLUME_RATIO = 1.25
SHRINK_VOLUME_RATIO = 1.0 / GROWTH_VOLUME_RATIO
DIAMETER_CHANGE_MM = 1.5


@dataclass(frozen=True)
class Lesion:
    """One nodule as a study measured it (a detection, a reference mask, a prior SR).

    ``tracking_id`` and ``tracking_uid`` are the TID 1500 Tracking Identifier
    and Tracking UID: a current nodule matched to a prior one takes the prior's.
    """

    center_lps: tuple[float, float, float]
    volume_mm3: float
    long_axis_mm: float
    short_axis_mm: float | None = None
    solid_diameter_mm: float | None = None  # part-solid nodules: the solid component
    tracking_id: str = ""
    tracking_uid: str = ""

    @property
    def mean_diameter_mm(self) -> float:
        """(long + short) / 2 when a short axis is known, else the equivalent-sphere diameter."""
        if self.short_axis_mm is not None:
            return (self.long_axis_mm + self.short_axis_mm) / 2.0
        return float((6.0 * max(self.volume_mm3, 0.0) / math.pi) ** (1.0 / 3.0))


def lesion_from_detection(
    detection: object, tracking_id: str = "", tracking_uid: str = ""
) -> Lesion:
    """A :class:`Lesion` of a lung nodule pipeline ``Detection`` (centre, volume, long axis)."""
    center = detection.center_lps  # type: ignore[attr-defined]
    return Lesion(
        (float(center[0]), float(center[1]), float(center[2])),
        float(detection.volume_mm3),  # type: ignore[attr-defined]
        float(detection.long_axis_mm),  # type: ignore[attr-defined]
        tracking_id=tracking_id,
        tracking_uid=tracking_uid,
    )


@dataclass(frozen=True)
class Gates:
    """Matching gates and cost weights (module docstring)."""

    distance_gate_mm: float = 10.0
    distance_gate_factor: float = 1.0
    max_diameter_ratio: float = 3.0
    size_weight: float = (
        0.5  # cost of a diameter ratio at the gate, relative to distance at the gate
    )


@dataclass(frozen=True)
class TrackedNodule:
    """One nodule across the two studies; ``prior`` or ``current`` None when new or resolved."""

    status: str
    prior: Lesion | None
    current: Lesion | None
    interval_days: float
    distance_mm: float | None = None  # registered prior centre to current centre
    vdt_days: float | None = None
    tracking_id: str = ""
    tracking_uid: str = ""
    notes: tuple[str, ...] = field(default=())

    @property
    def prior_mean_diameter_mm(self) -> float | None:
        """Mean diameter at the prior study."""
        return None if self.prior is None else self.prior.mean_diameter_mm

    @property
    def current_mean_diameter_mm(self) -> float | None:
        """Mean diameter at the current study."""
        return None if self.current is None else self.current.mean_diameter_mm

    @property
    def diameter_change_mm(self) -> float | None:
        """Current minus prior mean diameter."""
        if self.prior is None or self.current is None:
            return None
        return self.current.mean_diameter_mm - self.prior.mean_diameter_mm

    @property
    def volume_change_percent(self) -> float | None:
        """Volume change relative to the prior (%)."""
        if self.prior is None or self.current is None or self.prior.volume_mm3 <= 0:
            return None
        return 100.0 * (self.current.volume_mm3 / self.prior.volume_mm3 - 1.0)


def volume_doubling_time(v_prior: float, v_current: float, interval_days: float) -> float | None:
    """``interval x ln 2 / ln(V2 / V1)`` in days; None for equal or non-positive volumes."""
    if v_prior <= 0 or v_current <= 0 or v_prior == v_current:
        return None
    return float(interval_days * math.log(2.0) / math.log(v_current / v_prior))


def change_status(prior: Lesion, current: Lesion) -> str:
    """``growing``, ``shrinking`` or ``stable`` by the thresholds of the module docstring."""
    ratio = current.volume_mm3 / prior.volume_mm3 if prior.volume_mm3 > 0 else math.inf
    delta = current.mean_diameter_mm - prior.mean_diameter_mm
    if ratio >= GROWTH_VOLUME_RATIO and delta > DIAMETER_CHANGE_MM:
        return "growing"
    if ratio <= SHRINK_VOLUME_RATIO and delta < -DIAMETER_CHANGE_MM:
        return "shrinking"
    return "stable"


def _costs(
    prior_centres: np.ndarray,
    prior: Sequence[Lesion],
    current: Sequence[Lesion],
    gates: Gates,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cost matrix, distance matrix and the mask of pairs inside both gates."""
    current_centres = np.array([c.center_lps for c in current], dtype=float).reshape(-1, 3)
    distance = np.linalg.norm(prior_centres[:, None, :] - current_centres[None, :, :], axis=2)
    dp = np.array([p.mean_diameter_mm for p in prior])[:, None]
    dc = np.array([c.mean_diameter_mm for c in current])[None, :]
    gate = gates.distance_gate_mm + gates.distance_gate_factor * np.maximum(dp, dc)
    log_ratio = np.abs(np.log(np.maximum(dc, 1e-3) / np.maximum(dp, 1e-3)))
    size_term = log_ratio / math.log(gates.max_diameter_ratio)
    allowed = (distance <= gate) & (size_term <= 1.0)
    cost = (distance / gate) ** 2 + gates.size_weight * size_term**2
    # Pairs outside the gates get a cost no allowed assignment can reach: they are dropped after.
    return np.where(allowed, cost, 1e6), distance, allowed


def track(
    prior: Sequence[Lesion],
    current: Sequence[Lesion],
    prior_to_current: np.ndarray,
    interval_days: float,
    *,
    gates: Gates = Gates(),
    new_uid: object = None,
) -> list[TrackedNodule]:
    """Match *prior* to *current* nodules and describe each one's change.

    Parameters
    ----------
    prior, current
        Nodules of the prior and the current study, each in its own LPS.
    prior_to_current
        4x4 prior LPS → current LPS (:attr:`Registration.matrix`).
    interval_days
        Days from the prior study to the current one.
    gates
        Matching gates (module docstring).
    new_uid
        Callable giving a Tracking UID for a new nodule (default pydicom's
        ``generate_uid``); matched nodules keep the prior's identifiers.

    Returns
    -------
    list of TrackedNodule
        Matched and new nodules in *current* order, then resolved ones in *prior* order.
    """
    from scipy.optimize import linear_sum_assignment

    if new_uid is None:
        from pydicom.uid import generate_uid

        new_uid = generate_uid
    matched: dict[int, tuple[int, float]] = {}
    if prior and current:
        centres = np.array([p.center_lps for p in prior], dtype=float)
        mapped = centres @ prior_to_current[:3, :3].T + prior_to_current[:3, 3]
        cost, distance, allowed = _costs(mapped, prior, current, gates)
        rows, cols = linear_sum_assignment(cost)
        for r, c in zip(rows, cols, strict=True):
            if allowed[r, c]:
                matched[int(c)] = (int(r), float(distance[r, c]))
    used_ids = {p.tracking_id for p in prior if p.tracking_id}
    next_number = 1
    out: list[TrackedNodule] = []
    for c, lesion in enumerate(current):
        if c in matched:
            r, dist = matched[c]
            before = prior[r]
            ident = before.tracking_id or f"Nodule {r + 1}"
            uid = before.tracking_uid or str(new_uid())  # type: ignore[operator]
            out.append(
                TrackedNodule(
                    change_status(before, lesion),
                    replace(before, tracking_id=ident, tracking_uid=uid),
                    replace(lesion, tracking_id=ident, tracking_uid=uid),
                    interval_days,
                    dist,
                    volume_doubling_time(before.volume_mm3, lesion.volume_mm3, interval_days),
                    ident,
                    uid,
                )
            )
            continue
        ident = lesion.tracking_id
        if not ident or ident in used_ids:
            while f"Nodule {len(prior) + next_number}" in used_ids:
                next_number += 1
            ident = f"Nodule {len(prior) + next_number}"
            next_number += 1
        used_ids.add(ident)
        uid = lesion.tracking_uid or str(new_uid())  # type: ignore[operator]
        out.append(
            TrackedNodule(
                "new",
                None,
                replace(lesion, tracking_id=ident, tracking_uid=uid),
                interval_days,
                tracking_id=ident,
                tracking_uid=uid,
            )
        )
    taken = {r for r, _ in matched.values()}
    for r, before in enumerate(prior):
        if r in taken:
            continue
        ident = before.tracking_id or f"Nodule {r + 1}"
        out.append(
            TrackedNodule(
                "resolved",
                before,
                None,
                interval_days,
                tracking_id=ident,
                tracking_uid=before.tracking_uid,
            )
        )
    return out
