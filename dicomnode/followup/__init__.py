"""Follow-up against prior studies: registration, nodule tracking, Lung-RADS, RANO volumetrics.

:mod:`.priors` finds a study's priors (the node's database, then the
``[[sources]]``) and is the worker's priors service, which retrieves them;
the rest are library parts without network or database code.
:mod:`.registration` maps a prior onto the current study (SimpleITK, rigid
then affine, with a quality check); :mod:`.tracking` matches nodules across
the two and gives each a status, its changes and its volume doubling time;
:mod:`.lungrads` suggests a Lung-RADS v2022 category for the exam;
:mod:`.rano` a volumetric response category for a brain tumour
(``docs/followup.md``).
"""
