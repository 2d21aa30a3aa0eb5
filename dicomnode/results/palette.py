"""Display colours of findings: one fixed colour per finding type, the same in SEG, GSPS and SC.

A SEG carries each segment's colour as its Recommended Display CIELab Value
(viewers such as OHIF use it instead of picking their own); GSPS layers and
the key images draw in the same colour, so a radiologist sees one colour for
one kind of finding whatever the object. The table is documented in
``docs/viewers.md``; a finding type without an entry takes the next colour
of :data:`FALLBACK`.
"""

from __future__ import annotations

import highdicom as hd
from pydicom.sr.coding import Code

RGB = tuple[int, int, int]

# SNOMED CT code value of the finding type -> sRGB colour.
BY_FINDING_TYPE: dict[str, RGB] = {
    "27925004": (255, 165, 0),  # Nodule: orange
    "108369006": (230, 40, 40),  # Neoplasm (enhancing tumour, whole tumour): red
    "6574001": (255, 220, 0),  # Necrosis (necrotic core): yellow
    "79654002": (40, 200, 80),  # Edema (oedema): green
}
# Distinct colours for finding types without an entry, in order of first use.
FALLBACK: tuple[RGB, ...] = ((64, 160, 255), (255, 64, 255), (0, 220, 220), (160, 96, 255))


def colour_of(finding_type: Code, index: int = 0) -> RGB:
    """The colour of *finding_type*; *index* picks the fallback colour when it has none."""
    return BY_FINDING_TYPE.get(finding_type.value, FALLBACK[index % len(FALLBACK)])


def cielab(rgb: RGB) -> hd.color.CIELabColor:
    """*rgb* as the DICOM CIELab value (PCS, D50) highdicom writes."""
    return hd.color.CIELabColor.from_rgb(*rgb)
