"""Follow-up against priors (issue 20, library parts): synthetic pairs, registration, tracking,
Lung-RADS v2022 and RANO 2.0 volumetric categories."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("SimpleITK")

from dicomnode.followup import lungrads, rano  # noqa: E402
from dicomnode.followup.registration import register  # noqa: E402
from dicomnode.followup.tracking import (  # noqa: E402
    Lesion,
    TrackedNodule,
    change_status,
    track,
    volume_doubling_time,
)
from dicomnode.pipelines.volume import Volume  # noqa: E402
from dicomnode.synthetic.followup import (  # noqa: E402
    chest_pair,
    head_pair,
    rigid_motion,
    write_chest_pair,
)


def _sphere(
    center: tuple[float, float, float] | None, diameter: float | None, ident: str = ""
) -> Lesion:
    assert center is not None and diameter is not None
    return Lesion(center, math.pi / 6 * diameter**3, diameter, tracking_id=ident)


@pytest.fixture(scope="module")
def pair():
    return chest_pair(11)


@pytest.fixture(scope="module")
def registered(pair):
    prior = Volume(pair.baseline.array, pair.baseline.affine)
    current = Volume(pair.followup.array, pair.followup.affine)
    return register(prior, current, anatomy="lung")


def test_pair_is_the_same_patient_later(pair, tmp_path):
    from pydicom import dcmread

    paths = write_chest_pair(pair, tmp_path)
    before, after = dcmread(paths["baseline"][0]), dcmread(paths["followup"][0])
    assert before.PatientID == after.PatientID and before.PatientName == after.PatientName
    assert before.PatientBirthDate == after.PatientBirthDate
    assert before.StudyInstanceUID != after.StudyInstanceUID
    assert before.FrameOfReferenceUID != after.FrameOfReferenceUID
    days = (pair.followup.study.study_datetime - pair.baseline.study.study_datetime).days
    assert days == pair.interval_days and int(after.StudyDate) > int(before.StudyDate)
    # The motion is within the bounds: shift <= 30 mm, rotation <= 5 degrees.
    angle = np.degrees(np.arccos((np.trace(pair.motion[:3, :3]) - 1) / 2))
    assert angle <= 5.0 + 1e-6
    statuses = {n.status for n in pair.nodules}
    assert {"new", "growing", "stable", "resolved"} <= statuses
    # Truth labels carry every nodule present in each study.
    assert set(np.unique(pair.baseline.labels)) - {0} == set(
        range(1, len(pair.baseline.phantom.nodules) + 1)
    )


def test_grown_nodule_follows_its_doubling_time(pair):
    grown = next(n for n in pair.nodules if n.status == "growing")
    assert grown.vdt_days is not None
    ratio = grown.followup_volume_mm3 / grown.baseline_volume_mm3
    assert ratio == pytest.approx(2 ** (pair.interval_days / grown.vdt_days))


def test_registration_recovers_the_known_transform(pair, registered):
    assert not registered.poor, registered.reason
    assert registered.dice > 0.9
    truth = pair.true_prior_to_current
    for nodule in pair.nodules:
        if nodule.baseline_center_lps is None or nodule.followup_center_lps is None:
            continue
        mapped = registered.map_points(nodule.baseline_center_lps)[0]
        assert np.linalg.norm(mapped - np.array(nodule.followup_center_lps)) < 3.0
    # Points across the lungs, not only nodule centres.
    points = np.array([[70.0, 0.0, 126.0], [-70.0, 20.0, 90.0], [60.0, -30.0, 160.0]])
    expected = points @ truth[:3, :3].T + truth[:3, 3]
    assert np.linalg.norm(registered.map_points(points) - expected, axis=1).max() < 3.0


def test_tracking_matches_with_the_true_status_and_vdt(pair, registered):
    prior = [
        _sphere(n.baseline_center_lps, n.baseline_diameter_mm, n.id)
        for n in pair.nodules
        if n.baseline_center_lps is not None
    ]
    current = [
        _sphere(n.followup_center_lps, n.followup_diameter_mm, n.id)
        for n in pair.nodules
        if n.followup_center_lps is not None
    ]
    # Current nodules carry no identifiers yet: tracking gives them the prior's.
    current = [Lesion(c.center_lps, c.volume_mm3, c.long_axis_mm) for c in current]
    truth_by_centre = {n.followup_center_lps: n for n in pair.nodules}
    tracked = track(prior, current, registered.matrix, pair.interval_days)
    assert len(tracked) == len(pair.nodules)
    for item in tracked:
        if item.status == "resolved":
            assert item.prior is not None
            expected = next(n for n in pair.nodules if n.id == item.tracking_id)
            assert expected.status == "resolved"
            continue
        assert item.current is not None
        expected = truth_by_centre[item.current.center_lps]
        assert item.status == expected.status
        if expected.status != "new":
            assert item.tracking_id == expected.id and item.tracking_uid
            assert item.prior is not None and item.prior.tracking_uid == item.tracking_uid
        if expected.status == "growing":
            assert expected.vdt_days is not None and item.vdt_days is not None
            assert abs(item.vdt_days - expected.vdt_days) <= 0.25 * expected.vdt_days
    exam = lungrads.exam_category(tracked)
    assert exam.category in lungrads.ORDER


def test_vdt_and_status_rules():
    assert volume_doubling_time(100.0, 200.0, 365) == pytest.approx(365)
    assert volume_doubling_time(200.0, 100.0, 100) == pytest.approx(-100)
    assert volume_doubling_time(100.0, 100.0, 100) is None
    small, grown = _sphere((0, 0, 0), 6.0), _sphere((0, 0, 0), 7.6)
    assert change_status(small, grown) == "growing"  # +1.6 mm, +95 % volume
    # +1.4 mm (and +81 % volume) is within the measurement error: stable.
    assert change_status(small, _sphere((0, 0, 0), 7.4)) == "stable"
    # A large nodule: +1.6 mm is only +17 % in volume: stable.
    assert change_status(_sphere((0, 0, 0), 30.0), _sphere((0, 0, 0), 31.6)) == "stable"
    assert change_status(_sphere((0, 0, 0), 10.0), _sphere((0, 0, 0), 8.0)) == "shrinking"


def test_tracking_gates_keep_far_nodules_apart():
    prior = [_sphere((0.0, 0.0, 0.0), 6.0)]
    current = [_sphere((0.0, 0.0, 30.0), 6.0)]  # 30 mm away: beyond 10 + 6 mm
    statuses = sorted(t.status for t in track(prior, current, np.eye(4), 365))
    assert statuses == ["new", "resolved"]
    near = [_sphere((0.0, 0.0, 12.0), 6.0)]
    assert [t.status for t in track(prior, near, np.eye(4), 365)] == ["stable"]
    # Through a registration: a 25 mm shift that the mapping explains is matched.
    shift = rigid_motion((0, 0, 0), (0, 0, 25.0), (0, 0, 0))
    moved = [_sphere((0.0, 0.0, 25.0), 6.0)]
    assert [t.status for t in track(prior, moved, shift, 365)] == ["stable"]


def _tracked(status: str, d_now: float | None, d_before: float | None, days: float = 365):
    now = None if d_now is None else _sphere((0, 0, 0), d_now)
    before = None if d_before is None else _sphere((0, 0, 0), d_before)
    return TrackedNodule(status, before, now, days, tracking_id="n")


@pytest.mark.parametrize(
    ("diameter", "category"),
    [(5.9, "2"), (6.0, "3"), (7.9, "3"), (8.0, "4A"), (14.9, "4A"), (15.0, "4B")],
)
def test_lungrads_baseline_solid(diameter, category):
    exam = lungrads.exam_category([_tracked("new", diameter, None)], baseline=True)
    assert exam.category == category


@pytest.mark.parametrize(
    ("diameter", "category"),
    [(3.9, "2"), (4.0, "3"), (5.9, "3"), (6.0, "4A"), (7.9, "4A"), (8.0, "4B")],
)
def test_lungrads_new_solid(diameter, category):
    assert lungrads.exam_category([_tracked("new", diameter, None)]).category == category


def test_lungrads_follow_up_rows():
    assert lungrads.exam_category([_tracked("growing", 7.9, 6.0)]).category == "4A"
    assert lungrads.exam_category([_tracked("growing", 8.0, 6.0)]).category == "4B"
    assert lungrads.exam_category([_tracked("stable", 10.0, 10.0)]).category == "2"
    assert lungrads.exam_category([_tracked("shrinking", 7.0, 9.0)]).category == "2"
    # A 4A-sized nodule stable at a 3-month follow-up: 3.
    assert lungrads.exam_category([_tracked("stable", 10.0, 10.0, days=90)]).category == "3"
    # Resolved only, or nothing: 1; the exam takes the highest nodule.
    assert lungrads.exam_category([_tracked("resolved", None, 6.0)]).category == "1"
    assert lungrads.exam_category([]).category == "1"
    mixed = [_tracked("stable", 5.0, 5.0), _tracked("new", 6.5, None), _tracked("new", 4.5, None)]
    assert lungrads.exam_category(mixed).category == "4A"


def test_lungrads_part_solid_rows():
    assert lungrads.baseline_part_solid(5.9, 3.0).category == "2"
    assert lungrads.baseline_part_solid(12.0, 5.9).category == "3"
    assert lungrads.baseline_part_solid(12.0, 6.0).category == "4A"
    assert lungrads.baseline_part_solid(12.0, 8.0).category == "4B"
    assert lungrads.new_or_growing_part_solid(5.0, 2.0, new=True).category == "3"
    assert lungrads.new_or_growing_part_solid(9.0, 3.9, new=True).category == "4A"
    assert lungrads.new_or_growing_part_solid(9.0, 4.0, new=False).category == "4B"


@pytest.mark.parametrize(
    ("prior", "current", "category"),
    [
        (100.0, 35.0, "PR"),  # -65 %: at the PR threshold
        (100.0, 35.1, "SD"),
        (100.0, 140.0, "PD"),  # +40 %: at the PD threshold
        (100.0, 139.9, "SD"),
        (10.0, 0.0, "CR"),
        (0.0, 2.0, "PD"),
    ],
)
def test_rano_volumetric_thresholds(prior, current, category):
    assert rano.volumetric_response(prior, current).category == category


def test_rano_compartment_changes():
    changes = rano.compartment_changes(
        {"enhancing": 10.0, "necrotic": 2.0, "oedema": 20.0},
        {"enhancing": 5.0, "necrotic": 2.0, "oedema": 30.0},
    )
    assert changes["enhancing"].change_percent == pytest.approx(-50.0)
    assert changes["whole"].prior_ml == pytest.approx(32.0)
    assert changes["oedema"].change_ml == pytest.approx(10.0)


def test_head_pair_registration_and_compartment_change():
    from dicomnode.synthetic.followup import compartment_volumes_ml

    pair = head_pair(3, scenario="progression")
    prior = Volume(pair.baseline.array, pair.baseline.affine)
    current = Volume(pair.followup.array, pair.followup.affine)
    result = register(prior, current, anatomy="brain")
    assert not result.poor, result.reason
    tumour = pair.baseline.phantom.tumour
    assert tumour is not None
    mapped = result.map_points(tumour.center_mm)[0]
    expected = pair.motion[:3, :3] @ np.array(tumour.center_mm) + pair.motion[:3, 3]
    assert np.linalg.norm(mapped - expected) < 3.0
    voxel = float(abs(np.linalg.det(pair.baseline.affine[:3, :3])))
    measured = rano.compartment_changes(
        compartment_volumes_ml(pair.baseline.labels, voxel),
        compartment_volumes_ml(pair.followup.labels, voxel),
    )
    truth = pair.true_change_percent()
    for name in ("enhancing", "whole"):
        got = measured[name].change_percent
        assert got is not None and abs(got - truth[name]) < 10.0
    assert (
        rano.volumetric_response(
            measured["enhancing"].prior_ml, measured["enhancing"].current_ml
        ).category
        == "PD"
    )


def test_poor_registration_is_reported(pair):
    current = Volume(pair.followup.array, pair.followup.affine)
    # Another anatomy: a prior without lungs (a water cylinder) cannot be registered on the lungs.
    shape = pair.baseline.array.shape
    x = pair.baseline.affine[0, 3] + np.arange(shape[2]) * pair.baseline.affine[0, 2]
    y = pair.baseline.affine[1, 3] + np.arange(shape[1]) * pair.baseline.affine[1, 1]
    body = (x[None, None, :] / 170.0) ** 2 + (y[None, :, None] / 120.0) ** 2 <= 1.0
    water = np.broadcast_to(np.where(body, 0.0, -1000.0), shape).astype(np.float32)
    result = register(Volume(water, pair.baseline.affine), current, anatomy="lung")
    assert result.poor and "No lungs" in result.reason
    # The same chest turned by 90 degrees and registered without initialisation: outside the
    # capture range, and the mask overlap says so.
    turned = np.ascontiguousarray(np.rot90(pair.baseline.array, axes=(1, 2)))
    result = register(
        Volume(turned, pair.baseline.affine), current, anatomy="lung", initialise=False
    )
    assert result.poor and result.reason.startswith("Poor registration")


def test_brain_check_in_the_common_field_of_view():
    from dicomnode.followup.registration import _mapped_mask, assess, brain_mask, dice

    # A 27 mm shift along the table on a 90 mm slab: the head is cut at one end in one
    # study and elsewhere in the other; only the common field of view can be compared.
    pair = head_pair(32, max_shift_mm=30.0, extent_mm=(160.0, 160.0, 90.0), pixel_spacing=2.0)
    prior = Volume(pair.baseline.array, pair.baseline.affine)
    current = Volume(pair.followup.array, pair.followup.affine)
    # The cut is real: over the whole grid, the true motion's masks overlap under the 0.90 floor.
    truly = _mapped_mask(brain_mask(prior), prior, current, np.linalg.inv(pair.motion))
    assert dice(truly, brain_mask(current)) < 0.90
    result = register(prior, current, anatomy="brain")
    assert not result.poor and result.dice > 0.95, result.reason
    assert result.scales == pytest.approx((1.0, 1.0, 1.0), abs=1e-6)  # the brain is rigid
    assert not assess(prior, current, pair.motion, "brain").poor
    wrong = pair.motion.copy()
    wrong[2, 3] += 8.0  # 8 mm off along the table
    bad = assess(prior, current, wrong, "brain")
    assert bad.poor and "Dice" in bad.reason, bad.reason
    shrunk = pair.motion @ np.diag([0.92, 0.92, 0.92, 1.0])  # what the affine stage gave
    assert assess(prior, current, shrunk, "brain").poor
