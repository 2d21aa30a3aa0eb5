"""Synthetic studies (phantoms) with known truth, for the demo, the tests and ``train/``.

One module per kind of study: :mod:`.ct` (chest CT with nodules, vessels and
lungs), :mod:`.mr` (four-sequence head MR with a brain tumour) and
:mod:`.fundus` (colour fundus photographs with ICDR-grade lesions). Every
generator is seeded, so the same seed gives the same pixels and the same truth.
:mod:`.corpus` and :mod:`.corpus_studies` write the selection corpus: realistic
study compositions (scouts, reformats, dose reports, every sequence of a tumour
protocol, external-eye photographs ...) with vendor-style headers, on small
matrices from the same phantoms (``docs/selection.md``).
"""

from dicomnode.synthetic.ct import (
    Nodule,
    ct_series,
    nodule_labels,
    write_chest_ct_study,
    write_series,
)
from dicomnode.synthetic.fundus import write_fundus_study
from dicomnode.synthetic.mr import write_mr_study

__all__ = [
    "Nodule",
    "ct_series",
    "nodule_labels",
    "write_chest_ct_study",
    "write_fundus_study",
    "write_mr_study",
    "write_series",
]
