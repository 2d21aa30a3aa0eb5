"""Lung-RADS v2022 category suggestions for solid and part-solid nodules.

Source: American College of Radiology, *Lung-RADS v2022* (Lung CT Screening
Reporting & Data System, released November 2022), the assessment-categories
table. The rows implemented here (sizes are mean diameters in mm, rounded to
one decimal as the table asks; a nodule is "new" when absent from the prior,
"growing" per the table's growth definition below):

Solid nodules

========  =====================================================================
Category  Rule
========  =====================================================================
2         baseline < 6 mm; new < 4 mm
3         baseline 6 to < 8 mm; new 4 to < 6 mm
4A        baseline 8 to < 15 mm; growing < 8 mm; new 6 to < 8 mm
4B        baseline >= 15 mm; new or growing >= 8 mm
========  =====================================================================

Part-solid nodules (only when the finding carries a solid-component size,
``solid_diameter_mm``; total = the whole nodule's mean diameter)

========  =====================================================================
Category  Rule
========  =====================================================================
2         baseline total < 6 mm
3         baseline total >= 6 mm with solid component < 6 mm; new total < 6 mm
4A        baseline solid component 6 to < 8 mm; new or growing solid component < 4 mm
4B        baseline solid component >= 8 mm; new or growing solid component >= 4 mm
========  =====================================================================

Growth (v2022): an increase in mean diameter of more than 1.5 mm within a
12-month interval (for part-solid nodules, of the solid component here).

Stable or decreased nodules at follow-up: v2022 calls a category 3 lesion
stable or decreased at its 6-month follow-up category 2, and a category 4A
lesion stable or decreased at its 3-month follow-up category 3. Here a
stable or shrinking nodule is category 2, except one whose size alone
would be 4A or 4B seen again less than 6 months (183 days) after the prior,
which is category 3 (the 3-month follow-up row). A resolved nodule adds
nothing. The exam's category is the highest of its nodules; 1 when there are
none.

Limits, stated: the category is a *suggestion for the radiologist*, computed
from automatic measurements; it is not a diagnosis. Not assessed: ground-glass
(non-solid) nodules, airway (endobronchial) nodules, atypical pulmonary cysts,
juxtapleural/perifissural nodules with benign features (category 2 at any
size under 10 mm), benign calcification or fat (category 1), category 4X
(additional suspicious features), the S modifier (significant other
findings), slow growth over several exams (v2022 4B row), intervals longer
than 12 months for the growth rule (growth over a longer interval is
reported as growth here, flagged in the notes), and the 0 category
(incomplete exam, or infection/inflammation awaiting follow-up). Without a
solid-component size every nodule is treated as solid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dicomnode.followup.tracking import DIAMETER_CHANGE_MM, TrackedNodule

ORDER = ("1", "2", "3", "4A", "4B")
STABLE_FOLLOW_UP_DAYS = 183  # under this, a stable 4A/4B-sized nodule is the "3-month" row: 3


@dataclass(frozen=True)
class Category:
    """One nodule's (or the exam's) suggested category and the rule that gave it."""

    category: str
    rule: str


def _round(mm: float) -> float:
    # Lung-RADS: mean diameter rounded to the nearest tenth of a millimetre.
    return round(mm + 1e-9, 1)


def baseline_solid(mean_diameter_mm: float) -> Category:
    """A solid nodule at baseline (no prior, or first screen)."""
    d = _round(mean_diameter_mm)
    if d < 6.0:
        return Category("2", "solid, baseline < 6 mm")
    if d < 8.0:
        return Category("3", "solid, baseline 6 to < 8 mm")
    if d < 15.0:
        return Category("4A", "solid, baseline 8 to < 15 mm")
    return Category("4B", "solid, baseline >= 15 mm")


def new_solid(mean_diameter_mm: float) -> Category:
    """A solid nodule new at follow-up."""
    d = _round(mean_diameter_mm)
    if d < 4.0:
        return Category("2", "solid, new < 4 mm")
    if d < 6.0:
        return Category("3", "solid, new 4 to < 6 mm")
    if d < 8.0:
        return Category("4A", "solid, new 6 to < 8 mm")
    return Category("4B", "solid, new >= 8 mm")


def growing_solid(mean_diameter_mm: float) -> Category:
    """A solid nodule that grew (more than 1.5 mm in mean diameter)."""
    if _round(mean_diameter_mm) < 8.0:
        return Category("4A", "solid, growing < 8 mm")
    return Category("4B", "solid, growing >= 8 mm")


def baseline_part_solid(total_mm: float, solid_mm: float) -> Category:
    """A part-solid nodule at baseline."""
    total, solid = _round(total_mm), _round(solid_mm)
    if total < 6.0:
        return Category("2", "part-solid, baseline total < 6 mm")
    if solid < 6.0:
        return Category("3", "part-solid, baseline total >= 6 mm, solid < 6 mm")
    if solid < 8.0:
        return Category("4A", "part-solid, baseline solid 6 to < 8 mm")
    return Category("4B", "part-solid, baseline solid >= 8 mm")


def new_or_growing_part_solid(total_mm: float, solid_mm: float, *, new: bool) -> Category:
    """A part-solid nodule new at follow-up, or whose solid component grew."""
    total, solid = _round(total_mm), _round(solid_mm)
    if new and total < 6.0:
        return Category("3", "part-solid, new total < 6 mm")
    if solid < 4.0:
        return Category("4A", "part-solid, new or growing solid < 4 mm")
    return Category("4B", "part-solid, new or growing solid >= 4 mm")


def _stable(size_category: Category, interval_days: float) -> Category:
    if size_category.category in ("4A", "4B") and interval_days < STABLE_FOLLOW_UP_DAYS:
        return Category("3", "stable or decreased at a < 6-month follow-up of a 4A-sized nodule")
    return Category("2", "stable or decreased at follow-up")


def nodule_category(nodule: TrackedNodule, *, baseline: bool = False) -> Category | None:
    """The category one tracked nodule suggests; None for a resolved nodule.

    *baseline* True: the exam has no prior, every nodule is read by its size.
    """
    lesion = nodule.current
    if lesion is None:
        return None
    total = lesion.mean_diameter_mm
    solid = lesion.solid_diameter_mm
    if baseline or (nodule.prior is None and nodule.status != "new"):
        return baseline_solid(total) if solid is None else baseline_part_solid(total, solid)
    if nodule.status == "new":
        if solid is None:
            return new_solid(total)
        return new_or_growing_part_solid(total, solid, new=True)
    prior = nodule.prior
    assert prior is not None
    if solid is None:
        if nodule.status == "growing":
            return growing_solid(total)
        return _stable(baseline_solid(total), nodule.interval_days)
    before = prior.solid_diameter_mm or 0.0
    if solid - before > DIAMETER_CHANGE_MM:
        return new_or_growing_part_solid(total, solid, new=False)
    return _stable(baseline_part_solid(total, solid), nodule.interval_days)


@dataclass(frozen=True)
class ExamCategory:
    """The exam's suggestion: the highest nodule category, each nodule's, and the caveats."""

    category: str
    rule: str
    per_nodule: tuple[tuple[str, Category], ...]  # (tracking id, category)
    notes: tuple[str, ...]


def exam_category(nodules: Sequence[TrackedNodule], *, baseline: bool = False) -> ExamCategory:
    """Lung-RADS v2022 category suggestion for an exam from its tracked nodules.

    A suggestion for the radiologist (module docstring for what is not assessed).
    """
    per: list[tuple[str, Category]] = []
    for nodule in nodules:
        found = nodule_category(nodule, baseline=baseline)
        if found is not None:
            per.append((nodule.tracking_id, found))
    notes = [
        "Suggestion for the radiologist from automatic measurements (Lung-RADS v2022); "
        "ground-glass, airway, cystic and perifissural nodules, 4X and the S modifier are not assessed."
    ]
    if not baseline and any(n.interval_days > 366 for n in nodules if n.prior is not None):
        notes.append(
            "The prior is more than 12 months old: growth is judged over the whole interval."
        )
    if not per:
        return ExamCategory("1", "no nodules", (), tuple(notes))
    top = max(per, key=lambda item: ORDER.index(item[1].category))
    return ExamCategory(top[1].category, f"{top[0]}: {top[1].rule}", tuple(per), tuple(notes))
