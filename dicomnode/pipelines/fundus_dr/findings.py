"""Grades: what the network said about each photograph, and about each eye."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dicomnode.pipelines.fundus_dr.preprocessing import PreparedFundus
from dicomnode.pipelines.fundus_dr.selection import Photograph


@dataclass(frozen=True)
class GradedPhotograph:
    """One photograph with its network input and the model's answer."""

    photograph: Photograph
    prepared: PreparedFundus
    probabilities: np.ndarray  # (5,) ICDR grade probabilities: flip mean, calibrated if the bundle is
    entropy: float  # predictive entropy of the (uncalibrated) flip mean, nats
    cam: np.ndarray | None  # Grad-CAM of the predicted grade on the network input

    @property
    def grade(self) -> int:
        """The most probable ICDR grade (0 none ... 4 proliferative)."""
        return int(self.probabilities.argmax())


def worst_of(graded: Sequence[GradedPhotograph], members: Sequence[int]) -> int:
    """The member with the worst grade (the first of equals): how a grader reads an eye's set."""
    return max(members, key=lambda n: (graded[n].grade, -n))


@dataclass(frozen=True)
class GradingRules:
    """When a grade is referable, and when a photograph needs a human grader."""

    review_entropy_threshold: float  # nats; above it the model is too unsure
    referable_min_grade: int = 2  # moderate NPDR or worse

    def needs_review(self, graded: GradedPhotograph) -> bool:
        """Whether the model's answer on *graded* is too uncertain to stand alone."""
        return graded.entropy > self.review_entropy_threshold

    def referable(self, grade: int) -> bool:
        """Whether *grade* calls for referral to an ophthalmologist."""
        return grade >= self.referable_min_grade
