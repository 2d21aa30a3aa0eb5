"""Side-by-side key images of a lung follow-up: the prior left, the current slice right.

One Secondary Capture per current nodule whose status is ``new`` or
``growing`` (issue 20), in the job's key-image ("sc") series:

- right: the nodule's current key slice, the nodule circled (as the job's
  key image circles it);
- left: the prior's axial slice through the nodule's position there — a
  growing nodule's own prior centre; for a new one, its current centre
  mapped back into the prior with the inverse of the registration (where it
  would have been) — resampled onto the current slice's pixel spacing, so
  one pixel is the same millimetres on both sides, and shifted so that this
  position falls on the same pixel as the current centre: the eye compares
  like with like without searching. A growing nodule is circled there with
  its prior size; a new one has nothing to circle.

Only the prior's own slice is shown (no oblique reformat through the
registration's rotation): a radiologist compares it with what the prior
study shows in any viewer. A nodule whose position lies outside the prior's
slices gets no side-by-side image (the SR still states its status).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import TYPE_CHECKING

import numpy as np

from dicomnode.followup.tracking import TrackedNodule
from dicomnode.pipelines.lung_nodule.findings import Detection
from dicomnode.pipelines.lung_nodule.followup import LungFollowUp
from dicomnode.pipelines.volume import Volume

if TYPE_CHECKING:
    from pydicom import Dataset

    from dicomnode.followup.registration import Registration
    from dicomnode.pipelines.model import ResultWriter
    from dicomnode.results import ComparisonPanel, KeyImageMark, NoduleFinding

# The statuses a radiologist must see compared with the prior (stable and shrinking ones
# need no second look; resolved ones have no current slice).
COMPARED_STATUSES = ("new", "growing")
# Circles sit this many pixels outside the nodule, so its edge stays visible.
CIRCLE_MARGIN_PX = 3.0


def circle(center_pixel: tuple[float, float], diameter_mm: float, pixel_mm: float) -> KeyImageMark:
    """A nodule-coloured circle around a nodule of *diameter_mm* at (row, column) *center_pixel*."""
    from pydicom.sr.codedict import codes

    from dicomnode.results import KeyImageMark
    from dicomnode.results.palette import colour_of

    radius = diameter_mm / pixel_mm / 2.0 + CIRCLE_MARGIN_PX
    return KeyImageMark(center_pixel[0], center_pixel[1], radius, colour_of(codes.SCT.Nodule))


def mask_centre(found: Detection) -> tuple[float, float]:
    """(row, column) of the centroid of *found*'s mask on the source grid."""
    offset = np.array([s.start for s in found.box_index])
    _, row, column = np.argwhere(found.mask).mean(axis=0) + offset
    return float(row), float(column)


def prior_position(nodule: TrackedNodule, registration: Registration) -> np.ndarray | None:
    """Where *nodule* is (growing) or would have been (new) on the prior, in the prior's LPS."""
    if nodule.prior is not None:
        return np.asarray(nodule.prior.center_lps, dtype=float)
    if nodule.current is None:
        return None
    # Registration.matrix maps prior → current; its inverse takes the current centre back.
    inverse = np.linalg.inv(registration.matrix)
    centre = np.asarray(nodule.current.center_lps, dtype=float)
    return np.asarray(inverse[:3, :3] @ centre + inverse[:3, 3])


def prior_slice(
    prior: Volume, point_lps: np.ndarray, current: Volume, at_pixel: tuple[float, float]
) -> tuple[int, np.ndarray] | None:
    """The prior's slice through *point_lps*, on the current slice's pixel grid.

    Returns the prior slice's index and its HU values, ``current``'s rows x
    columns at ``current``'s pixel spacing and directions, placed so that
    *point_lps* falls on *at_pixel* (row, column); outside the prior's field
    of view is the slice's lowest value (air). None when the point is not on
    any of the prior's slices.
    """
    from scipy import ndimage

    index = prior.lps_to_index(point_lps)[0]
    k = int(round(float(index[0])))
    if not 0 <= k < prior.shape[0]:
        return None
    _, rows, columns = current.shape
    r, c = np.mgrid[0:rows, 0:columns]
    # Each output pixel is the point plus its offset from at_pixel along the current
    # slice's row and column steps (mm); only its in-plane position on slice k is used.
    offsets = (r.ravel() - at_pixel[0])[:, None] * current.affine[:3, 1] + (
        c.ravel() - at_pixel[1]
    )[:, None] * current.affine[:3, 2]
    where = prior.lps_to_index(point_lps[None, :] + offsets)
    plane = prior.array[k].astype(np.float32)
    values = ndimage.map_coordinates(
        plane, [where[:, 1], where[:, 2]], order=1, mode="constant", cval=float(plane.min())
    )
    return k, values.reshape(rows, columns)


def comparison_images(
    findings: Sequence[Detection],
    nodules: Sequence[NoduleFinding],
    tracked: Sequence[TrackedNodule],
    volume: Volume,
    source: Sequence[Dataset],
    follow_up: LungFollowUp,
    writer: ResultWriter,
) -> dict[str, Dataset]:
    """One side-by-side image per new or growing nodule (module docstring); none for a baseline.

    *findings*, *nodules* and *tracked* are the current nodules in one order
    (detection order); *source* is *volume*'s slices. Returns the images by
    the nodule's Tracking UID (the SR references each from its nodule).
    """
    prior, registration = follow_up.prior_volume, follow_up.registration
    if not follow_up.compared or prior is None or registration is None:
        return {}
    images: dict[str, Dataset] = {}
    for found, nodule, track in zip(findings, nodules, tracked, strict=True):
        if track.status not in COMPARED_STATUSES:
            continue
        point = prior_position(track, registration)
        sliced = None if point is None else prior_slice(prior, point, volume, mask_centre(found))
        if sliced is None:
            continue
        panels = _panels(found, nodule, track, sliced, source[nodule.key_slice], volume, follow_up)
        images[track.tracking_uid] = _write(
            panels, track, follow_up, writer, instance_number=len(images) + 2
        )
    return images


def _panels(
    found: Detection,
    nodule: NoduleFinding,
    track: TrackedNodule,
    sliced: tuple[int, np.ndarray],
    image: Dataset,
    volume: Volume,
    follow_up: LungFollowUp,
) -> tuple[ComparisonPanel, ComparisonPanel]:
    """The prior half (*sliced*: :func:`prior_slice`) and the current half (*image*) of *track*."""
    from dicomnode.results import ComparisonPanel

    k, values = sliced
    centre = mask_centre(found)
    pixel_mm = volume.spacing[2]
    prior_marks: tuple[KeyImageMark, ...] = ()
    if track.prior is not None:
        diameter = track.prior.long_axis_mm or track.prior.mean_diameter_mm
        prior_marks = (circle(centre, diameter, pixel_mm),)
    prior = ComparisonPanel(
        follow_up.prior_images[k], values, prior_marks, _label("prior", follow_up.prior_date)
    )
    current = ComparisonPanel(
        image,
        volume.array[nodule.key_slice],
        (circle(centre, found.long_axis_mm, pixel_mm),),
        _label("current", follow_up.current_date),
    )
    return prior, current


def _label(side: str, when: date | None) -> str:
    """What is burnt into a half: the side and the study date."""
    return f"{side.upper()} {when.isoformat()}" if when is not None else side.upper()


def _write(
    panels: tuple[ComparisonPanel, ComparisonPanel],
    track: TrackedNodule,
    follow_up: LungFollowUp,
    writer: ResultWriter,
    *,
    instance_number: int,
) -> Dataset:
    from dicomnode.results import write_comparison_image

    prior_date, current_date = (
        when.isoformat() if when is not None else "unknown date"
        for when in (follow_up.prior_date, follow_up.current_date)
    )
    description = f"{track.tracking_id}, {track.status}: prior {prior_date} left, "
    description += f"current {current_date} right"
    if track.prior is None:
        description += " (the prior slice through its registered position)"
    return write_comparison_image(
        *panels,
        description=description,
        algorithm=writer.algorithm,
        series=writer.series("sc"),
        uid_key=writer.uid_key,
        # One instance per nodule across re-runs: its Tracking UID, not its place in the list.
        uid_role=f"sc-comparison-{track.tracking_uid}",
        instance_number=instance_number,
    )
