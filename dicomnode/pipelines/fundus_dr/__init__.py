"""``fundus_dr``: diabetic retinopathy grading on colour fundus photographs (ICDR grades 0-4).

Input: the study's ophthalmic photographs (Ophthalmic Photography 8 Bit, VL
Photographic or Secondary Capture; Modality OP, XC or OT), RGB, usually JPEG
baseline. Each photograph is graded on its own; an eye's grade is the worst
grade among its photographs, as a human grader reads a multi-field set.

- :mod:`.selection` — colour fundus photographs only (not external-eye,
  red-free, stereo partners, documents), their instances and each one's eye;
- :mod:`.preprocessing` (shared with ``train/fundus``) — field of view, crop,
  Graham normalisation; a photograph that is not a fundus is reported and
  skipped, the study goes on;
- :mod:`.inference` (shared with ``train/fundus``) — test-time flips,
  predictive entropy ("needs human review" above ``review_entropy_threshold``),
  Grad-CAM of the predicted grade;
- :mod:`.findings` — grades per photograph and the grading rules;
- :mod:`.report` — one RGB Secondary Capture heat map per photograph and one
  TID 1500 SR with a group per photograph and per eye.

Options: :class:`FundusOptions`.
"""

from dicomnode.pipelines.fundus_dr.pipeline import FundusDR, FundusOptions

__all__ = ["FundusDR", "FundusOptions"]
