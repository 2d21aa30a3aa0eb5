"""``lung_nodule``: 3D RetinaNet lung nodule detection on chest CT.

- :mod:`.selection` — the axial, original, thinnest CT series (never a
  scout, reformat, MIP or dose report; a lung kernel first when
  ``prefer_lung_kernel`` or the bundle asks), each other series' reason in
  the timeline;
- load — :func:`~dicomnode.pipelines.volume.load_series` (HU, LPS affine);
- :mod:`.preprocessing` (shared with ``train/lung``) — what the Model Zoo
  bundle's raw-data path does (``Orientationd`` RAS, ``Spacingd`` to the
  bundle's ``pixdim``, ``ScaleIntensityRanged`` with its ``a_min``/``a_max``),
  on our own grid so boxes map back to the source slices exactly;
- :mod:`.detector` (shared with ``train/lung``) — MONAI ``RetinaNetDetector``
  with the bundle's anchors, box selector and sliding window;
- :mod:`.findings` — boxes to patient coordinates (as
  ``AffineBoxToWorldCoordinated`` with ``affine_lps_to_ras``), a mask per
  nodule grown from the CT inside its box, measurements;
- :mod:`.report` — one SEG (one segment per nodule), one TID 1500 SR
  (centre, long axis, volume, score, link to the segment) and a key image.
  No nodule is a valid result: an SR saying so.

Every detector parameter comes from the bundle's ``configs/inference.json``,
so the shipped CPU bundle and the Model Zoo ``lung_nodule_ct_detection``
bundle take the same code path. Options: :class:`LungNoduleOptions`.
"""

from dicomnode.pipelines.lung_nodule.pipeline import LungNoduleOptions, LungNodulePipeline

__all__ = ["LungNoduleOptions", "LungNodulePipeline"]
