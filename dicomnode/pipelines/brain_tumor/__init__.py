"""``brain_tumor``: brain tumour segmentation on multi-sequence MR (T1, T1c, T2, FLAIR).

The network is a SegResNet as in the MONAI Model Zoo ``brats_mri_segmentation``
bundle: four input channels in the order T1c, T1, T2, FLAIR on a 1 mm grid,
normalised channel-wise over non-zero (brain) voxels, and three sigmoid
outputs: tumour core (TC), whole tumour (WT) and enhancing tumour (ET).

- :mod:`.selection` — the four series, from description, physics, image
  type and contrast timing together, with documented preferences (3D,
  orientation of the T1c, ...) and each other series' reason in the timeline;
- load — each series as a :class:`~dicomnode.pipelines.volume.Volume`; all
  must share the T1c's Frame of Reference unless ``registration`` is set;
- :mod:`.preprocessing` (shared with ``train/brain``) — the four onto one
  1 mm grid over the T1c's extent (world coordinates), brain mask
  (``brain_mask`` option), non-zero (or robust) normalisation;
- infer — sliding window (bundle ``inferer`` roi/overlap, or the ``roi_size``
  and ``overlap`` options) with the GPU out-of-memory fallback;
- :mod:`.findings` — probabilities back onto the T1c grid, per-region
  thresholds, exclusive labels (enhancing tumour, necrotic core, oedema),
  clean-up, volumes;
- :mod:`.report` — SEG with one segment per present label on the T1c
  series, TID 1500 SR with each volume (mL) and the whole tumour's; an
  explicit "absent" report and no SEG when there is no tumour.

Options: :class:`BrainTumorOptions`.
"""

from dicomnode.pipelines.brain_tumor.pipeline import BrainTumorOptions, BrainTumorPipeline

__all__ = ["BrainTumorOptions", "BrainTumorPipeline"]
