"""Synthetic studies (phantoms) with known truth, for the demo, the tests and ``train/``.

One module per kind of study: :mod:`.ct` (chest CT with nodules); the MR
(brain tumour) and fundus phantoms sit beside it. Every generator is seeded,
so the same seed gives the same pixels and the same truth.
"""

from dicomnode.synthetic.ct import Nodule, ct_series, nodule_labels, write_series

__all__ = ["Nodule", "ct_series", "nodule_labels", "write_series"]
