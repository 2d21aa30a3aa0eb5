"""Brain tumour compartment changes and a volumetric RANO 2.0 response category.

Thresholds used (volumetric, on the enhancing tumour volume):

* CR (complete response): no enhancing disease left (here: enhancing volume
  under ``cr_floor_ml``, default 0.1 mL, the size of a few voxels at 1 mm,
  below which a segmentation cannot tell residual enhancement from noise);
* PR (partial response): a decrease of at least 65 %;
* PD (progressive disease): an increase of at least 40 %;
* SD (stable disease): anything between.

Source: RANO 2.0 (Wen PY et al., "RANO 2.0: Update to the Response
Assessment in Neuro-Oncology Criteria for High- and Low-Grade Gliomas in
Adults", J Clin Oncol 2023;41:5187-5199) allows volumetric measurement with
the thresholds that correspond to the two-dimensional ones (50 % decrease and
25 % increase of the product of perpendicular diameters): a 65 % volume
decrease and a 40 % volume increase, as proposed in the modified RANO
criteria (Ellingson BM et al., Neurotherapeutics 2017;14:307-320). The
thresholds were checked against the modified-RANO text; the RANO 2.0 paper
itself should be re-read before clinical use.

What this does *not* assess (so the category is a suggestion for the
radiologist, not a response assessment): confirmation on a scan at least 4
weeks later (required for CR and PR, and for PD within 12 weeks of
radiotherapy), new lesions, the non-enhancing (T2/FLAIR) component for
progression (reported here as oedema change only), corticosteroid dose and
clinical status, measurability (RANO 2.0's minimum lesion size), the choice
of reference (RANO compares PR/CR with the baseline and PD with the nadir,
the smallest volume so far: the caller passes the right prior), and
IDH-mutant non-enhancing gliomas (T2/FLAIR-based, minor response).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

PR_DECREASE = 0.65
PD_INCREASE = 0.40
COMPARTMENTS = ("enhancing", "necrotic", "oedema", "whole")


@dataclass(frozen=True)
class CompartmentChange:
    """One compartment's volumes (mL) in the prior and current study and the change."""

    name: str
    prior_ml: float
    current_ml: float

    @property
    def change_ml(self) -> float:
        """Current minus prior (mL)."""
        return self.current_ml - self.prior_ml

    @property
    def change_percent(self) -> float | None:
        """Change relative to the prior (%); None when the prior volume is 0."""
        if self.prior_ml <= 0:
            return None
        return 100.0 * self.change_ml / self.prior_ml


def compartment_changes(
    prior_ml: Mapping[str, float], current_ml: Mapping[str, float]
) -> dict[str, CompartmentChange]:
    """Per compartment (enhancing, necrotic, oedema, whole tumour) the change prior → current.

    A missing ``whole`` is the sum of the three others.
    """
    out = {}
    for name in COMPARTMENTS:
        if name == "whole":
            before = prior_ml.get("whole", sum(prior_ml.get(n, 0.0) for n in COMPARTMENTS[:3]))
            after = current_ml.get("whole", sum(current_ml.get(n, 0.0) for n in COMPARTMENTS[:3]))
        else:
            before, after = prior_ml.get(name, 0.0), current_ml.get(name, 0.0)
        out[name] = CompartmentChange(name, float(before), float(after))
    return out


@dataclass(frozen=True)
class Response:
    """A volumetric response category and the sentence that explains it."""

    category: str  # "CR", "PR", "SD", "PD"
    reason: str


def volumetric_response(
    prior_enhancing_ml: float, current_enhancing_ml: float, *, cr_floor_ml: float = 0.1
) -> Response:
    """RANO 2.0 volumetric category from the enhancing tumour volumes (module docstring)."""
    if current_enhancing_ml < cr_floor_ml:
        if prior_enhancing_ml < cr_floor_ml:
            return Response("SD", "No enhancing disease in either study.")
        return Response("CR", "No enhancing disease left (to be confirmed at least 4 weeks later).")
    if prior_enhancing_ml < cr_floor_ml:
        return Response("PD", "Enhancing disease where the prior had none.")
    # Rounded so that volumes exactly at a threshold (e.g. 100 → 35 mL) are not lost to float error.
    change = round((current_enhancing_ml - prior_enhancing_ml) / prior_enhancing_ml, 9)
    percent = f"{100 * change:+.0f} %"
    if change <= -PR_DECREASE:
        return Response("PR", f"Enhancing volume {percent} (PR: a decrease of 65 % or more).")
    if change >= PD_INCREASE:
        return Response("PD", f"Enhancing volume {percent} (PD: an increase of 40 % or more).")
    return Response("SD", f"Enhancing volume {percent} (between -65 % and +40 %).")
