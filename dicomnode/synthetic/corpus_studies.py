"""The selection corpus: realistic study compositions of four CT/MR vendors and four fundus makers.

Each :class:`~dicomnode.synthetic.corpus.StudySpec` below is *modelled on*
the naming and header conventions a vendor's published DICOM conformance
statement and its shipped (or a typical site's) protocols use; none is
copied from a real study, and where a vendor's exact value was not at hand
the value is a plausible one of the same kind (the ``modelled_on`` line says
what each follows). Site languages: English, German, French, Spanish,
Japanese (Japanese descriptions in ISO 2022 IR 87, as Japanese sites write
them).

=========================  ======================================================
study                      what it models
=========================  ======================================================
ct-siemens-de              SOMATOM Force chest, German site: topogram, 5/1 mm
                           Br40d and Bl57d reconstructions, venous phase,
                           coronal/sagittal MPR, MIP, bolus monitoring,
                           Patient Protocol (SC), RDSR; ``prefer_lung_kernel``
                           on
ct-siemens-de-default      the same study without ``prefer_lung_kernel``
ct-ge-es                   Revolution CT chest, Spanish site: scout, STANDARD/
                           LUNG/BONE, contrast phase, reformats, MIP, screen
                           save, Dose Report SC and RDSR
ct-philips-fr              IQon chest, French site: surview, B/L/YA kernels, a
                           direct coronal reconstruction, MPR, MinIP, Dose Info
                           and Exam Card SCs; ``max_slice_thickness`` 2 mm
ct-canon-ja                Aquilion ONE chest, Japanese site: scanogram, FC07/
                           FC51/FC86, a 0.5 mm enhanced multi-frame CT, MPRs,
                           dose screen, RDSR
ct-ge-petct                Discovery MI PET/CT: the only CT is a 3.75 mm CTAC
ct-siemens-unusable        a scout, a Patient Protocol and an RDSR only: fails
mr-siemens-de              MAGNETOM Prisma tumour protocol, German site:
                           localizers, TSE, 2D TIRM and 3D SPACE FLAIR, DWI +
                           ADC/TRACEW, SWI (mag, phase, mIP, SWI), DSC + rCBV,
                           2D SE and 3D MPRAGE before and after contrast (and
                           the MPRAGE's unfiltered copy), MPRs, subtraction;
                           agent recorded on every series, timing decides
mr-ge-es                   SIGNA Premier, Spanish site: 3-plane loc, ASSET
                           calibration, FSE, FLAIR, DWI + ADC (GE private
                           b-values), SWAN, PD, BRAVO and T1 FLAIR before and
                           after contrast, DSC, CUBE FLAIR after contrast,
                           reformat, screen capture, a MAGiC T1 map
mr-philips-fr              Ingenia, French site: survey, SENSE reference, TSE
                           axial and coronal, FLAIR, DWI + ADC (Philips private
                           b-values), SWIp, SE and 3D TFE before and after
                           gadolinium, DSC, MPR, subtraction
mr-canon-ja                Vantage Orian, Japanese site: locator, T2WI, FLAIR,
                           DWI + ADC, T2*WI, two "T1WI ax" told apart by
                           contrast timing, 3D MPRAGE after contrast, TOF MRA
mr-siemens-ambiguous       two identical post-contrast T1 series: fails
mr-ge-missing-flair        no FLAIR: fails
fundus-topcon              TRC-NW400: colour fields of both eyes with an
                           anterior-segment shot in the same series, red-free,
                           a mosaic
fundus-zeiss-de            VISUCAM, German site: colour per eye, a stereo pair
                           with its Stereometric Relationship, an external
                           photograph (VL Photographic), a scanned report (SC)
fundus-canon-ja            CR-2 AF, Japanese site: VL Photographic fundus per
                           eye, anterior segment, a Secondary Capture export
fundus-optos-fr            California (SLO), French site: colour per eye,
                           autofluorescence, fluorescein angiography, an
                           anterior-segment photograph
fundus-heidelberg-unusable Spectralis: IR SLO, OCT, external eye only: fails
=========================  ======================================================
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pydicom import Dataset

from dicomnode.synthetic.corpus import (
    CT_IMAGE,
    ENHANCED_CT_IMAGE,
    MR_IMAGE,
    OP_8BIT,
    OPHTHALMIC_TOMOGRAPHY,
    SECONDARY_CAPTURE,
    VL_PHOTOGRAPHIC,
    ImageSpec,
    SeriesSpec,
    StudySpec,
)

JAPANESE = ["", "ISO 2022 IR 87"]
PET_IMAGE = "1.2.840.10008.5.1.4.1.1.128"


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


RETINA = [_code("5665001", "SCT", "Retina")]
EYE = [_code("81745001", "SCT", "Eye")]
CORNEA = [_code("28726007", "SCT", "Cornea")]
FUNDUS_CAMERA = [_code("409898007", "SCT", "Fundus Camera")]
SLO = [_code("392001008", "SCT", "Scanning Laser Ophthalmoscope")]
EXTERNAL_CAMERA = [_code("409903006", "SCT", "External Camera")]


# -- CT --------------------------------------------------------------------------------------


def ct(
    number: int,
    description: str,
    expect: str,
    *,
    thickness: float = 1.0,
    kernel: str | list[str] | None = None,
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    plane: str = "axial",
    slices: int = 3,
    agent: str | None = None,
    protocol: str | None = None,
    sop: str = CT_IMAGE,
    modality: str = "CT",
    frames: bool = False,
    **header: Any,
) -> SeriesSpec:
    """A CT (or PET) image series."""
    values: dict[str, Any] = {"ProtocolName": protocol or description}
    if kernel:
        values["ConvolutionKernel"] = kernel
    if agent:
        values["ContrastBolusAgent"] = agent
        values["ContrastBolusRoute"] = "IV"
    values.update(header)
    return SeriesSpec(
        number,
        description,
        expect,
        modality=modality,
        sop_class_uid=sop,
        image_type=image_type,
        plane=plane,
        slices=1 if plane == "projection" else slices,
        thickness=thickness,
        frames=frames,
        header=values,
    )


def screen(
    number: int,
    description: str,
    expect: str,
    *,
    modality: str = "CT",
    image_type: tuple[str, ...] = ("DERIVED", "SECONDARY", "OTHER"),
    **header: Any,
) -> SeriesSpec:
    """A Secondary Capture screen (dose page, screen save, exam card)."""
    return SeriesSpec(
        number,
        description,
        expect,
        modality=modality,
        sop_class_uid=SECONDARY_CAPTURE,
        image_type=image_type,
        kind="screen",
        header=header,
    )


def dose_sr(number: int, description: str = "Dose Report") -> SeriesSpec:
    """An X-Ray Radiation Dose SR series."""
    return SeriesSpec(number, description, "dose-report", modality="SR", kind="dose-sr")


SIEMENS_AXIAL = ("ORIGINAL", "PRIMARY", "AXIAL", "CT_SOM5 SPI")
SIEMENS_MPR = ("DERIVED", "SECONDARY", "MPR", "CT_SOM5 MPR")


def _siemens_chest(name: str, prefer_lung_kernel: bool, expect: dict[int, str]) -> StudySpec:
    def e(number: int, default: str) -> str:
        return expect.get(number, default)

    return StudySpec(
        name,
        "lung_nodule",
        "Siemens",
        "de",
        "Siemens syngo CT series naming ('<body part> <thickness> <kernel> <ADMIRE strength>', "
        "Topogram, Patient Protocol, Dose Report) and Image Type CT_SOM5 values as in the "
        "SOMATOM conformance statements; German site words (nativ, KM venös, Lunge)",
        series=(
            ct(
                1,
                "Topogramm  0.6  Tr20f",
                "localizer",
                image_type=("ORIGINAL", "PRIMARY", "LOCALIZER", "CT_SOM5 TOP"),
                plane="projection",
                kernel="Tr20f",
                thickness=0.6,
                protocol="Thorax_nativ",
            ),
            ct(
                2,
                "Thorax nativ  5.0  Br40d  3",
                "thicker",
                thickness=5.0,
                kernel=["Br40d", "3"],
                image_type=SIEMENS_AXIAL,
                protocol="Thorax_nativ",
            ),
            ct(
                3,
                "Thorax nativ  1.0  Br40d  3",
                e(3, "kernel"),
                kernel=["Br40d", "3"],
                image_type=SIEMENS_AXIAL,
                protocol="Thorax_nativ",
            ),
            ct(
                4,
                "Lunge nativ  1.0  Bl57d  3",
                e(4, "chosen"),
                kernel=["Bl57d", "3"],
                image_type=SIEMENS_AXIAL,
                protocol="Thorax_nativ",
            ),
            ct(
                5,
                "Lunge nativ  5.0  Bl57d  3",
                "thicker",
                thickness=5.0,
                kernel=["Bl57d", "3"],
                image_type=SIEMENS_AXIAL,
                protocol="Thorax_nativ",
            ),
            ct(
                6,
                "Lunge cor  3.0  Bl57d  3",
                "mpr",
                thickness=3.0,
                kernel=["Bl57d", "3"],
                image_type=SIEMENS_MPR,
                plane="coronal",
            ),
            ct(
                7,
                "Lunge sag  3.0  Bl57d  3",
                "mpr",
                thickness=3.0,
                kernel=["Bl57d", "3"],
                image_type=SIEMENS_MPR,
                plane="sagittal",
            ),
            ct(
                8,
                "MIP Thorax ax  10.0  Br40d",
                "mip",
                thickness=10.0,
                kernel=["Br40d", "3"],
                image_type=("DERIVED", "SECONDARY", "MIP", "CT_SOM5 MIP"),
            ),
            ct(
                9,
                "Thorax KM venös  1.0  Br40d  3",
                e(9, "kernel"),
                kernel=["Br40d", "3"],
                image_type=SIEMENS_AXIAL,
                agent="Imeron 350",
                protocol="Thorax_KM",
            ),
            ct(
                10,
                "Lunge KM venös  1.0  Bl57d  3",
                "contrast",
                kernel=["Bl57d", "3"],
                image_type=SIEMENS_AXIAL,
                agent="Imeron 350",
                protocol="Thorax_KM",
            ),
            dataclasses.replace(
                ct(
                    11,
                    "Monitoring  10.0  Br36d",
                    "monitoring",
                    thickness=10.0,
                    kernel=["Br36d", "1"],
                    image_type=SIEMENS_AXIAL,
                    agent="Imeron 350",
                    protocol="Thorax_KM",
                ),
                increment=0.0,
            ),
            screen(
                501,
                "Patient Protocol",
                "dose-report",
                image_type=("DERIVED", "SECONDARY", "OTHER", "CT_SOM5 PROT"),
            ),
            dose_sr(502, "Dose Report"),
        ),
        options={"prefer_lung_kernel": prefer_lung_kernel},
        manufacturer="SIEMENS",
        model="SOMATOM Force",
        software="syngo CT VB20A",
    )


CT_STUDIES: tuple[StudySpec, ...] = (
    _siemens_chest("ct-siemens-de", True, {}),
    _siemens_chest("ct-siemens-de-default", False, {3: "chosen", 4: "equivalent", 9: "contrast"}),
    StudySpec(
        "ct-ge-es",
        "lung_nodule",
        "GE",
        "es",
        "GE Revolution CT conventions (Scout, reconstruction kernels STANDARD/LUNG/BONE, "
        "REFORMATTED Image Type of reformats, 'Dose Report' Secondary Capture as series 997 "
        "next to the RDSR) as in GE's CT conformance statements; Spanish site naming "
        "(Tórax sin/con contraste, Pulmón, Hueso)",
        manufacturer="GE MEDICAL SYSTEMS",
        model="Revolution CT",
        software="revo_ct_22bc.50",
        series=(
            ct(
                1,
                "Scout",
                "localizer",
                image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
                plane="projection",
                protocol="7.1 TORAX",
            ),
            ct(
                2,
                "Tórax sin contraste 5mm STANDARD",
                "thicker",
                thickness=5.0,
                kernel="STANDARD",
                protocol="7.1 TORAX",
            ),
            ct(
                3,
                "Tórax sin contraste 1.25mm PULMÓN",
                "chosen",
                thickness=1.25,
                kernel="LUNG",
                protocol="7.1 TORAX",
            ),
            ct(
                4,
                "Tórax sin contraste 1.25mm HUESO",
                "equivalent",
                thickness=1.25,
                kernel="BONE",
                protocol="7.1 TORAX",
            ),
            ct(
                5,
                "Tórax con contraste 1.25mm STANDARD",
                "contrast",
                thickness=1.25,
                kernel="STANDARD",
                agent="OMNIPAQUE 350",
                protocol="7.2 TORAX C+",
            ),
            ct(
                6,
                "Cor 3.0 Pulmón",
                "mpr",
                thickness=3.0,
                kernel="LUNG",
                plane="coronal",
                image_type=("DERIVED", "SECONDARY", "REFORMATTED", "AVERAGE"),
            ),
            ct(
                7,
                "Sag 3.0 Pulmón",
                "mpr",
                thickness=3.0,
                kernel="LUNG",
                plane="sagittal",
                image_type=("DERIVED", "SECONDARY", "REFORMATTED", "AVERAGE"),
            ),
            ct(
                8,
                "MIP 8mm axial",
                "mip",
                thickness=8.0,
                kernel="STANDARD",
                image_type=("DERIVED", "SECONDARY", "REFORMATTED", "MIP"),
            ),
            screen(
                9,
                "Captura de pantalla VR",
                "secondary-capture",
                image_type=("DERIVED", "SECONDARY", "SCREEN SAVE"),
            ),
            screen(
                997, "Dose Report", "dose-report", image_type=("ORIGINAL", "PRIMARY", "SCREEN SAVE")
            ),
            dose_sr(998),
        ),
    ),
    StudySpec(
        "ct-philips-fr",
        "lung_nodule",
        "Philips",
        "fr",
        "Philips CT conventions (Surview, filters B/L/YA, 'Dose Info' and 'Exam Card' "
        "Secondary Captures) as in Philips' IQon/Ingenuity conformance statements; French "
        "site naming (Thorax sans injection, Poumon, Reformation coronale)",
        manufacturer="Philips",
        model="IQon - Spectral CT",
        software="4.7.6",
        series=(
            ct(
                1,
                "Surview",
                "localizer",
                image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
                plane="projection",
                protocol="Thorax sans injection",
            ),
            ct(2, "Thorax sans injection 5 mm B", "thicker", thickness=5.0, kernel="B"),
            ct(3, "Thorax sans injection 1 mm B", "kernel", kernel="B"),
            ct(4, "Poumon 1 mm L", "chosen", kernel="L"),
            ct(5, "Poumon 1 mm YA", "kernel", kernel="YA"),
            ct(
                6,
                "Poumon coronal 2 mm reconstruction directe",
                "not-axial",
                thickness=2.0,
                kernel="L",
                plane="coronal",
            ),
            ct(
                7,
                "Reformation coronale Poumon 2 mm",
                "mpr",
                thickness=2.0,
                kernel="L",
                plane="coronal",
                image_type=("DERIVED", "SECONDARY", "MPR"),
            ),
            ct(
                8,
                "MinIP 5 mm",
                "mip",
                thickness=5.0,
                kernel="L",
                image_type=("DERIVED", "SECONDARY", "MINIP"),
            ),
            screen(9, "Dose Info", "dose-report"),
            screen(10, "Exam Card", "secondary-capture"),
            ct(
                11,
                "Carte iode 1 mm",
                "derived",
                kernel="B",
                image_type=("DERIVED", "PRIMARY", "AXIAL", "IODINE"),
            ),
        ),
        options={"prefer_lung_kernel": True, "max_slice_thickness": 2.0},
    ),
    StudySpec(
        "ct-canon-ja",
        "lung_nodule",
        "Canon",
        "ja",
        "Canon/Toshiba Aquilion conventions (Scanogram, FC kernels: FC07 body, FC51 lung, FC86, "
        "Enhanced CT storage, a dose information screen) as in Canon's Aquilion conformance "
        "statements; Japanese site naming (胸部 単純/造影, 肺野, 冠状断, 矢状断, 線量情報)",
        manufacturer="CANON_MEC",
        model="Aquilion ONE",
        software="V10.8",
        character_set=JAPANESE,
        series=(
            ct(
                1,
                "スキャノグラム",
                "localizer",
                image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
                plane="projection",
                protocol="胸部",
            ),
            ct(2, "胸部 単純 5.0 FC07", "thicker", thickness=5.0, kernel="FC07"),
            ct(3, "胸部 単純 1.0 FC07", "thicker", kernel="FC07"),
            ct(
                4,
                "肺野 0.5 FC51",
                "chosen",
                thickness=0.5,
                kernel="FC51",
                slices=4,
                frames=True,
                sop=ENHANCED_CT_IMAGE,
                image_type=("ORIGINAL", "PRIMARY", "AXIAL", "NONE"),
            ),
            ct(5, "肺野 1.0 FC86", "thicker", kernel="FC86"),
            ct(6, "胸部 造影 1.0 FC07", "thicker", kernel="FC07", agent="Iopamiron 370"),
            ct(
                7,
                "冠状断 MPR 3.0 FC51",
                "mpr",
                thickness=3.0,
                kernel="FC51",
                plane="coronal",
                image_type=("DERIVED", "SECONDARY", "MPR"),
            ),
            ct(
                8,
                "矢状断 MPR 3.0 FC51",
                "mpr",
                thickness=3.0,
                kernel="FC51",
                plane="sagittal",
                image_type=("DERIVED", "SECONDARY", "MPR"),
            ),
            screen(9, "線量情報", "dose-report"),
            dose_sr(10),
        ),
    ),
    StudySpec(
        "ct-ge-petct",
        "lung_nodule",
        "GE",
        "en",
        "GE Discovery PET/CT conventions (CTAC attenuation-correction CT, PET AC/NAC series, "
        "a fused screen) as in GE's PET/CT conformance statements",
        manufacturer="GE MEDICAL SYSTEMS",
        model="Discovery MI",
        series=(
            ct(
                1,
                "Scout",
                "localizer",
                image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
                plane="projection",
            ),
            ct(2, "CTAC 3.75 Thick", "chosen", thickness=3.75, kernel="STANDARD"),
            ct(3, "PET AC 3D", "other-modality", modality="PT", sop=PET_IMAGE, thickness=2.8),
            ct(4, "PET NAC 3D", "other-modality", modality="PT", sop=PET_IMAGE, thickness=2.8),
            screen(5, "Fused PET/CT", "other-modality", modality="OT"),
        ),
        options={"max_slice_thickness": 2.5},
    ),
    StudySpec(
        "ct-siemens-unusable",
        "lung_nodule",
        "Siemens",
        "en",
        "a Siemens chest study cut short: only the topogram and the dose objects arrived",
        series=(
            ct(
                1,
                "Topogram  0.6  Tr20f",
                "localizer",
                image_type=("ORIGINAL", "PRIMARY", "LOCALIZER", "CT_SOM5 TOP"),
                plane="projection",
                kernel="Tr20f",
                thickness=0.6,
            ),
            screen(
                501,
                "Patient Protocol",
                "dose-report",
                image_type=("DERIVED", "SECONDARY", "OTHER", "CT_SOM5 PROT"),
            ),
            dose_sr(502),
        ),
        error=(
            "no CT series with plane geometry",
            "'Topogram  0.6  Tr20f' (series 1): a localizer",
            "'Patient Protocol' (series 501): a dose report",
            "'Dose Report' (series 502)",
        ),
        manufacturer="SIEMENS",
        model="SOMATOM Force",
        software="syngo CT VB20A",
    ),
)


# -- MR --------------------------------------------------------------------------------------


def mr(
    number: int,
    description: str,
    expect: str,
    *,
    sequence: str,
    tr: float,
    te: float,
    ti: float | None = None,
    variant: str = "SK\\SP",
    acquisition: str = "2D",
    plane: str = "axial",
    slices: int = 3,
    thickness: float | None = None,
    agent: str | None = None,
    start: str | None = None,
    time: str = "090000",
    contrast: str = "T1",
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "OTHER"),
    sequence_name: str | None = None,
    protocol: str | None = None,
    per_instance: dict[str, tuple[Any, ...]] | None = None,
    private: tuple[tuple[int, str, int, str, Any], ...] = (),
    **header: Any,
) -> SeriesSpec:
    """An MR image series with its acquisition physics and timing."""
    values: dict[str, Any] = {
        "ProtocolName": protocol or description,
        "ScanningSequence": sequence,
        "SequenceVariant": variant,
        "MRAcquisitionType": acquisition,
        "RepetitionTime": f"{tr:g}",
        "EchoTime": f"{te:g}",
        "AcquisitionTime": time,
    }
    if ti is not None:
        values["InversionTime"] = f"{ti:g}"
    if sequence_name:
        values["SequenceName"] = sequence_name
    if agent:
        values["ContrastBolusAgent"] = agent
        values["ContrastBolusRoute"] = "IV"
    if start:
        values["ContrastBolusStartTime"] = start
    values.update(header)
    return SeriesSpec(
        number,
        description,
        expect,
        modality="MR",
        sop_class_uid=MR_IMAGE,
        image_type=image_type,
        plane=plane,
        slices=slices,
        thickness=thickness if thickness is not None else (1.0 if acquisition == "3D" else 5.0),
        contrast=contrast,
        header=values,
        per_instance=per_instance or {},
        private=private,
    )


SIEMENS_MR = ("ORIGINAL", "PRIMARY", "M", "ND", "NORM")
B_VALUES = (0.0, 0.0, 1000.0, 1000.0)


def _siemens_mr(number: int, description: str, expect: str, **kwargs: Any) -> SeriesSpec:
    # This site enters the agent once at registration: every series carries it, so only
    # the timing against the bolus start tells pre from post.
    kwargs.setdefault("image_type", SIEMENS_MR)
    return mr(number, description, expect, agent="Gadovist", **kwargs)


_MR_SIEMENS_DE = StudySpec(
    "mr-siemens-de",
    "brain_tumor",
    "Siemens",
    "de",
    "Siemens syngo MR brain tumour protocol naming (AAHead_Scout, t2_tse_tra, "
    "t2_tirm_tra_dark-fluid, t2_spc_da-fl, ep2d_diff with ADC/TRACEW, swi with Pha/mIP/SWI, "
    "ep2d_perf, t1_mprage_sag_p2_iso, _MPR_ and _SUB derived series), sequence names "
    "(*tfl3d1, *tir2d1, *spcir, *ep_b1000t, *swi3d1r), Image Type M/P/ND/NORM/DIFFUSION/MNIP "
    "and the B_value private element as in the MAGNETOM conformance statements; German site "
    "words (nativ, KM)",
    manufacturer="SIEMENS",
    model="Prisma",
    software="syngo MR XA30",
    series=(
        _siemens_mr(
            1,
            "localizer",
            "localizer",
            sequence="GR",
            tr=8.6,
            te=4.0,
            plane="sagittal",
            time="090000",
        ),
        _siemens_mr(
            2,
            "AAHead_Scout_32ch-head-coil",
            "localizer",
            sequence="GR",
            tr=3.15,
            te=1.37,
            plane="sagittal",
            acquisition="3D",
            time="090030",
        ),
        _siemens_mr(
            3,
            "AAHead_Scout_32ch-head-coil_MPR_tra",
            "localizer",
            sequence="GR",
            tr=3.15,
            te=1.37,
            image_type=("DERIVED", "PRIMARY", "MPR", "NORM"),
            time="090030",
        ),
        _siemens_mr(
            4,
            "t2_tse_tra_p2",
            "T2",
            sequence="SE",
            variant="SK\\SP\\OSP",
            tr=5000,
            te=98,
            sequence_name="*tse2d1_15",
            contrast="T2",
            time="090200",
        ),
        _siemens_mr(
            5,
            "t2_tirm_tra_dark-fluid",
            "prefer-3d",
            sequence="SE\\IR",
            variant="SK\\SP\\MP\\OSP",
            tr=9000,
            te=81,
            ti=2500,
            sequence_name="*tir2d1_16",
            contrast="FLAIR",
            time="090500",
        ),
        _siemens_mr(
            6,
            "t2_spc_da-fl_sag_p2_iso",
            "FLAIR",
            sequence="SE\\IR",
            variant="SK\\SP\\MP",
            tr=5000,
            te=387,
            ti=1800,
            acquisition="3D",
            plane="sagittal",
            sequence_name="*spcir_278ns",
            contrast="FLAIR",
            time="091000",
        ),
        _siemens_mr(
            7,
            "ep2d_diff_tra_b0_1000",
            "diffusion",
            sequence="EP",
            tr=6500,
            te=80,
            slices=4,
            contrast="T2",
            time="091500",
            per_instance={
                "SequenceName": ("*ep_b0", "*ep_b0", "*ep_b1000t", "*ep_b1000t"),
                "DiffusionBValue": B_VALUES,
            },
            private=((0x0019, "SIEMENS MR HEADER", 0x0C, "IS", (0, 0, 1000, 1000)),),
        ),
        _siemens_mr(
            8,
            "ep2d_diff_tra_b0_1000_ADC",
            "diffusion",
            sequence="EP",
            tr=6500,
            te=80,
            contrast="T2",
            time="091500",
            image_type=("DERIVED", "PRIMARY", "DIFFUSION", "ADC", "ND", "NORM"),
        ),
        _siemens_mr(
            9,
            "ep2d_diff_tra_b0_1000_TRACEW",
            "diffusion",
            sequence="EP",
            tr=6500,
            te=80,
            contrast="T2",
            time="091500",
            image_type=("DERIVED", "PRIMARY", "DIFFUSION", "TRACEW", "ND", "NORM"),
        ),
        _siemens_mr(
            10,
            "t1_se_tra_nativ",
            "prefer-3d",
            sequence="SE",
            tr=500,
            te=8.9,
            sequence_name="*se2d1",
            time="091800",
        ),
        _siemens_mr(
            11,
            "t1_mprage_sag_p2_iso",
            "T1",
            sequence="GR\\IR",
            variant="SK\\SP\\MP",
            tr=2300,
            te=2.32,
            ti=900,
            acquisition="3D",
            plane="sagittal",
            sequence_name="*tfl3d1_16ns",
            time="092200",
        ),
        # Prescan Normalize with "unfiltered images": the same acquisition without NORM.
        _siemens_mr(
            23,
            "t1_mprage_sag_p2_iso",
            "prefer-normalised",
            sequence="GR\\IR",
            variant="SK\\SP\\MP",
            tr=2300,
            te=2.32,
            ti=900,
            acquisition="3D",
            plane="sagittal",
            sequence_name="*tfl3d1_16ns",
            time="092200",
            image_type=("ORIGINAL", "PRIMARY", "M", "ND"),
        ),
        _siemens_mr(
            12,
            "swi_tra_p2",
            "susceptibility",
            sequence="GR",
            tr=28,
            te=20,
            acquisition="3D",
            sequence_name="*swi3d1r",
            time="093000",
        ),
        _siemens_mr(
            13,
            "swi_tra_p2_Pha",
            "susceptibility",
            sequence="GR",
            tr=28,
            te=20,
            acquisition="3D",
            image_type=("ORIGINAL", "PRIMARY", "P", "ND"),
            time="093000",
        ),
        _siemens_mr(
            14,
            "swi_tra_p2_mIP_Images(SW)",
            "susceptibility",
            sequence="GR",
            tr=28,
            te=20,
            acquisition="3D",
            image_type=("DERIVED", "PRIMARY", "MNIP", "ND", "NORM"),
            time="093000",
        ),
        _siemens_mr(
            15,
            "swi_tra_p2_SWI_Images",
            "susceptibility",
            sequence="GR",
            tr=28,
            te=20,
            acquisition="3D",
            image_type=("DERIVED", "PRIMARY", "SWI", "ND", "NORM"),
            time="093000",
        ),
        _siemens_mr(
            16,
            "ep2d_perf_p2",
            "perfusion",
            sequence="EP",
            variant="SK\\SP",
            tr=1500,
            te=30,
            start="094000",
            time="094000",
            contrast="T2",
            NumberOfTemporalPositions=50,
        ),
        _siemens_mr(
            17,
            "ep2d_perf_p2_relCBV",
            "perfusion",
            sequence="EP",
            tr=1500,
            te=30,
            start="094000",
            time="094000",
            contrast="T2",
            image_type=("DERIVED", "PRIMARY", "PERFUSION", "RELCBV"),
        ),
        _siemens_mr(
            18,
            "t1_mprage_sag_p2_iso_KM",
            "T1c",
            sequence="GR\\IR",
            variant="SK\\SP\\MP",
            tr=2300,
            te=2.32,
            ti=900,
            acquisition="3D",
            plane="sagittal",
            sequence_name="*tfl3d1_16ns",
            start="094000",
            time="094500",
            contrast="T1c",
        ),
        _siemens_mr(
            19,
            "t1_mprage_sag_p2_iso_KM_MPR_tra",
            "reformat",
            sequence="GR\\IR",
            tr=2300,
            te=2.32,
            ti=900,
            acquisition="3D",
            start="094000",
            time="094500",
            contrast="T1c",
            image_type=("DERIVED", "SECONDARY", "MPR", "ND", "NORM"),
        ),
        _siemens_mr(
            20,
            "t1_mprage_sag_p2_iso_KM_MPR_cor",
            "reformat",
            sequence="GR\\IR",
            tr=2300,
            te=2.32,
            ti=900,
            acquisition="3D",
            plane="coronal",
            start="094000",
            time="094500",
            contrast="T1c",
            image_type=("DERIVED", "SECONDARY", "MPR", "ND", "NORM"),
        ),
        _siemens_mr(
            21,
            "t1_mprage_sag_p2_iso_KM_SUB",
            "subtraction",
            sequence="GR\\IR",
            tr=2300,
            te=2.32,
            ti=900,
            acquisition="3D",
            plane="sagittal",
            start="094000",
            time="094500",
            contrast="T1c",
            image_type=("DERIVED", "PRIMARY", "M", "ND", "NORM", "SUB"),
        ),
        _siemens_mr(
            22,
            "t1_se_tra_KM",
            "prefer-3d",
            sequence="SE",
            tr=500,
            te=8.9,
            sequence_name="*se2d1",
            start="094000",
            time="095000",
            contrast="T1c",
        ),
    ),
)

GE_MR = ("ORIGINAL", "PRIMARY", "OTHER")
GE_B = (0x0043, "GEMS_PARM_01", 0x39, "IS", ([0, 8, 0, 0], [0, 8, 0, 0], [1000, 8, 0, 0]))

_MR_GE_ES = StudySpec(
    "mr-ge-es",
    "brain_tumor",
    "GE",
    "es",
    "GE SIGNA brain tumour protocol naming (3 Plane Loc, ASSET calibration, Ax T2 FSE, "
    "T2 FLAIR, DWI with the b-value in the GEMS_PARM_01 private element, SWAN, Sag 3D T1 "
    "BRAVO, Ax T1 FLAIR, DSC perfusion, CUBE FLAIR, Screen Save) as in GE's MR conformance "
    "statements; Spanish site naming (sin/con contraste, Difusión, Mapa ADC, DP, Perfusión, "
    "reformateado, Captura de pantalla)",
    manufacturer="GE MEDICAL SYSTEMS",
    model="SIGNA Premier",
    software="29\\LX\\MR Software release:MR29.1_EA_2039.a",
    series=(
        mr(1, "3 Plane Loc", "localizer", sequence="GR", tr=5.0, te=1.5, time="090000"),
        mr(
            2,
            "ASSET calibration",
            "calibration",
            sequence="GR",
            tr=150,
            te=1.6,
            acquisition="3D",
            time="090100",
        ),
        mr(
            3,
            "Ax T2 FSE",
            "T2",
            sequence="SE",
            tr=5200,
            te=102,
            contrast="T2",
            time="090300",
            image_type=GE_MR,
        ),
        mr(
            4,
            "Ax FLAIR T2",
            "FLAIR",
            sequence="SE\\IR",
            tr=9000,
            te=140,
            ti=2250,
            contrast="FLAIR",
            time="090800",
        ),
        mr(
            5,
            "Ax Difusión b1000",
            "diffusion",
            sequence="EP",
            tr=6000,
            te=75,
            contrast="T2",
            time="091200",
            private=(GE_B,),
        ),
        mr(
            6,
            "Mapa ADC",
            "diffusion",
            sequence="EP",
            tr=6000,
            te=75,
            contrast="T2",
            time="091200",
            image_type=("DERIVED", "PRIMARY", "ADC"),
        ),
        mr(
            7,
            "Ax SWAN",
            "susceptibility",
            sequence="GR",
            tr=40,
            te=25,
            acquisition="3D",
            time="091500",
        ),
        mr(
            8,
            "Ax DP FSE",
            "other-weighting",
            sequence="SE",
            tr=3000,
            te=20,
            contrast="T2",
            time="091800",
        ),
        mr(
            9,
            "Sag 3D T1 BRAVO sin contraste",
            "T1",
            sequence="GR\\IR",
            variant="SS\\SP\\SK",
            tr=8.2,
            te=3.2,
            ti=450,
            acquisition="3D",
            plane="sagittal",
            sequence_name="efgre3d",
            time="092000",
        ),
        mr(10, "Ax T1 FLAIR", "prefer-3d", sequence="SE\\IR", tr=2200, te=9, ti=860, time="092500"),
        mr(
            11,
            "Perfusión DSC",
            "perfusion",
            sequence="EP\\GR",
            tr=1500,
            te=30,
            agent="Gadavist",
            start="093000",
            time="093000",
            contrast="T2",
            NumberOfTemporalPositions=60,
        ),
        mr(
            12,
            "Ax 3D BRAVO con contraste",
            "T1c",
            sequence="GR\\IR",
            variant="SS\\SP\\SK",
            tr=8.2,
            te=3.2,
            ti=450,
            acquisition="3D",
            agent="Gadavist",
            start="093000",
            sequence_name="efgre3d",
            time="093500",
            contrast="T1c",
        ),
        mr(
            13,
            "Ax T1 FLAIR con contraste",
            "prefer-3d",
            sequence="SE\\IR",
            tr=2200,
            te=9,
            ti=860,
            agent="Gadavist",
            start="093000",
            time="094000",
            contrast="T1c",
        ),
        mr(
            14,
            "Sag CUBE FLAIR con contraste",
            "prefer-pre-contrast",
            sequence="SE\\IR",
            tr=6000,
            te=130,
            ti=1900,
            acquisition="3D",
            plane="sagittal",
            agent="Gadavist",
            start="093000",
            time="094500",
            contrast="FLAIR",
        ),
        mr(
            15,
            "Cor BRAVO reformateado",
            "reformat",
            sequence="GR\\IR",
            tr=8.2,
            te=3.2,
            ti=450,
            acquisition="3D",
            plane="coronal",
            agent="Gadavist",
            time="093500",
            image_type=("DERIVED", "SECONDARY", "REFORMATTED"),
            contrast="T1c",
        ),
        screen(
            16,
            "Captura de pantalla perfusión",
            "secondary-capture",
            modality="MR",
            image_type=("DERIVED", "SECONDARY", "SCREEN SAVE"),
        ),
        mr(
            17,
            "Ax MAGiC Mapa T1",
            "derived",
            sequence="SE",
            tr=4000,
            te=20,
            ti=1000,
            image_type=("DERIVED", "PRIMARY", "T1 MAP"),
            time="095000",
        ),
    ),
)

PHILIPS_SE = ("ORIGINAL", "PRIMARY", "M_SE", "M", "SE")
PHILIPS_FFE = ("ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE")
PHILIPS_IR = ("ORIGINAL", "PRIMARY", "M_IR", "M", "IR")

_MR_PHILIPS_FR = StudySpec(
    "mr-philips-fr",
    "brain_tumor",
    "Philips",
    "fr",
    "Philips ExamCard naming (Survey, SENSE_RefScan, T2W_TSE, T2W_FLAIR, DWI with the "
    "'Philips Imaging DD 001' b-factor, SWIp, T1W_SE, T1W_3D_TFE) and Image Type M_SE/"
    "M_FFE/M_IR/P_FFE as in the Ingenia conformance statements; French site words "
    "(sans injection, gado, après injection, Soustraction)",
    manufacturer="Philips Medical Systems",
    model="Ingenia",
    software="5.7.1\\5.7.1.1",
    series=(
        mr(
            1,
            "Survey",
            "localizer",
            sequence="GR",
            tr=11,
            te=4.6,
            image_type=PHILIPS_FFE,
            time="090000",
        ),
        mr(
            2,
            "SENSE_RefScan",
            "calibration",
            sequence="GR",
            tr=4,
            te=0.8,
            acquisition="3D",
            image_type=PHILIPS_FFE,
            time="090100",
        ),
        mr(
            3,
            "T2W_TSE_tra",
            "T2",
            sequence="SE",
            tr=4500,
            te=100,
            thickness=4.0,
            image_type=PHILIPS_SE,
            contrast="T2",
            time="090300",
        ),
        mr(
            4,
            "T2W_TSE_cor",
            "prefer-orientation",
            sequence="SE",
            tr=4500,
            te=100,
            thickness=4.0,
            plane="coronal",
            image_type=PHILIPS_SE,
            contrast="T2",
            time="090600",
        ),
        mr(
            5,
            "T2W_FLAIR_tra",
            "FLAIR",
            sequence="SE\\IR",
            tr=11000,
            te=125,
            ti=2800,
            image_type=PHILIPS_IR,
            contrast="FLAIR",
            time="091000",
        ),
        mr(
            6,
            "DWI_tra",
            "diffusion",
            sequence="SE",
            variant="SK",
            tr=4200,
            te=85,
            slices=4,
            image_type=PHILIPS_SE,
            contrast="T2",
            time="091400",
            per_instance={"DiffusionBValue": B_VALUES},
            private=((0x2001, "Philips Imaging DD 001", 0x03, "FL", B_VALUES),),
        ),
        mr(
            7,
            "DWI_tra ADC",
            "diffusion",
            sequence="SE",
            tr=4200,
            te=85,
            contrast="T2",
            image_type=("DERIVED", "PRIMARY", "ADC", "ADC"),
            time="091400",
        ),
        mr(
            8,
            "SWIp_tra",
            "susceptibility",
            sequence="GR",
            tr=31,
            te=23,
            acquisition="3D",
            image_type=PHILIPS_FFE,
            time="091700",
        ),
        mr(
            9,
            "SWIp_tra Pha",
            "susceptibility",
            sequence="GR",
            tr=31,
            te=23,
            acquisition="3D",
            image_type=("ORIGINAL", "PRIMARY", "P_FFE", "P", "FFE"),
            time="091700",
        ),
        mr(
            10,
            "T1W_SE_tra sans injection",
            "prefer-3d",
            sequence="SE",
            tr=550,
            te=10,
            image_type=PHILIPS_SE,
            time="092000",
        ),
        mr(
            11,
            "T1W_3D_TFE sag sans injection",
            "T1",
            sequence="GR",
            tr=8.1,
            te=3.7,
            acquisition="3D",
            plane="sagittal",
            image_type=PHILIPS_FFE,
            time="092500",
        ),
        mr(
            12,
            "Perfusion DSC",
            "perfusion",
            sequence="GR",
            variant="SK",
            tr=1600,
            te=40,
            agent="Dotarem",
            start="093000",
            time="093000",
            image_type=PHILIPS_FFE,
            contrast="T2",
            NumberOfTemporalPositions=50,
        ),
        mr(
            13,
            "T1W_3D_TFE tra gado",
            "T1c",
            sequence="GR",
            tr=8.1,
            te=3.7,
            acquisition="3D",
            agent="Dotarem",
            start="093000",
            image_type=PHILIPS_FFE,
            contrast="T1c",
            time="093500",
        ),
        mr(
            14,
            "T1W_3D_TFE tra gado MPR cor",
            "reformat",
            sequence="GR",
            tr=8.1,
            te=3.7,
            acquisition="3D",
            plane="coronal",
            agent="Dotarem",
            contrast="T1c",
            image_type=("DERIVED", "SECONDARY", "MPR"),
            time="093500",
        ),
        mr(
            15,
            "Soustraction T1 gado - natif",
            "subtraction",
            sequence="GR",
            tr=8.1,
            te=3.7,
            acquisition="3D",
            agent="Dotarem",
            contrast="T1c",
            image_type=("DERIVED", "PRIMARY", "SUBTRACTION"),
            time="093500",
        ),
        mr(
            16,
            "T1W_SE_tra après injection",
            "prefer-3d",
            sequence="SE",
            tr=550,
            te=10,
            agent="Dotarem",
            start="093000",
            image_type=PHILIPS_SE,
            contrast="T1c",
            time="094000",
        ),
    ),
)

CANON_MR = ("ORIGINAL", "PRIMARY", "OTHER")

_MR_CANON_JA = StudySpec(
    "mr-canon-ja",
    "brain_tumor",
    "Canon",
    "ja",
    "Canon Vantage conventions (Locator, T2WI/T1WI/FLAIR/DWI/T2*WI naming as Japanese sites "
    "use it, DiffusionBValue, TOF MRA) as in Canon's Vantage conformance statements; Japanese "
    "site words (位置決め, 拡散強調, 造影); two series share the description 'T1WI ax' and only "
    "the contrast agent and its timing tell them apart",
    manufacturer="CANON_MEC",
    model="Vantage Orian",
    software="V10.0",
    character_set=JAPANESE,
    series=(
        mr(1, "位置決め Locator", "localizer", sequence="GR", tr=6, te=2.5, time="090000"),
        mr(
            2,
            "T2WI ax",
            "T2",
            sequence="SE",
            tr=4000,
            te=96,
            contrast="T2",
            time="090300",
            image_type=CANON_MR,
        ),
        mr(
            3,
            "FLAIR ax",
            "FLAIR",
            sequence="SE\\IR",
            tr=10000,
            te=100,
            ti=2800,
            contrast="FLAIR",
            time="090700",
        ),
        mr(
            4,
            "DWI b1000 拡散強調",
            "diffusion",
            sequence="EP",
            tr=5000,
            te=70,
            slices=4,
            contrast="T2",
            time="091000",
            per_instance={"DiffusionBValue": B_VALUES},
        ),
        mr(
            5,
            "ADC map",
            "diffusion",
            sequence="EP",
            tr=5000,
            te=70,
            contrast="T2",
            image_type=("DERIVED", "PRIMARY", "OTHER"),
            time="091000",
        ),
        mr(6, "T2*WI ax", "susceptibility", sequence="GR", tr=600, te=20, time="091500"),
        mr(7, "T1WI ax", "T1", sequence="SE", tr=500, te=12, time="092000"),
        mr(
            8,
            "T1WI ax",
            "prefer-3d",
            sequence="SE",
            tr=500,
            te=12,
            agent="GADOVIST",
            start="093000",
            time="093200",
            contrast="T1c",
        ),
        mr(
            9,
            "造影 3D T1 MPRAGE",
            "T1c",
            sequence="GR\\IR",
            tr=2000,
            te=2.7,
            ti=1000,
            acquisition="3D",
            agent="GADOVIST",
            start="093000",
            time="093600",
            contrast="T1c",
        ),
        mr(
            10,
            "MRA TOF",
            "angiography",
            sequence="GR",
            tr=23,
            te=3.5,
            acquisition="3D",
            time="094000",
        ),
        mr(
            11,
            "MRA TOF MIP",
            "angiography",
            sequence="GR",
            tr=23,
            te=3.5,
            acquisition="3D",
            image_type=("DERIVED", "SECONDARY", "OTHER"),
            time="094000",
        ),
    ),
)

_MR_SIEMENS_AMBIGUOUS = StudySpec(
    "mr-siemens-ambiguous",
    "brain_tumor",
    "Siemens",
    "en",
    "a Siemens 2D tumour protocol whose post-contrast T1 was repeated with the same "
    "parameters: nothing in the headers says which one to read",
    manufacturer="SIEMENS",
    model="Skyra",
    series=(
        mr(1, "localizer", "localizer", sequence="GR", tr=8.6, te=4.0, time="090000"),
        mr(2, "t2_tse_tra", "T2", sequence="SE", tr=5000, te=98, contrast="T2", time="090200"),
        mr(
            3,
            "t2_tirm_tra_dark-fluid",
            "FLAIR",
            sequence="SE\\IR",
            tr=9000,
            te=81,
            ti=2500,
            contrast="FLAIR",
            time="090500",
        ),
        mr(4, "t1_se_tra", "T1", sequence="SE", tr=500, te=8.9, time="091000"),
        mr(
            5,
            "t1_se_tra_post",
            "ambiguous",
            sequence="SE",
            tr=500,
            te=8.9,
            agent="Dotarem",
            start="091500",
            time="091800",
            contrast="T1c",
        ),
        mr(
            6,
            "t1_se_tra_post_repeat",
            "ambiguous",
            sequence="SE",
            tr=500,
            te=8.9,
            agent="Dotarem",
            start="091500",
            time="092200",
            contrast="T1c",
        ),
    ),
    error=(
        "2 candidate T1c series ('t1_se_tra_post' (series 5) and 't1_se_tra_post_repeat' "
        "(series 6))",
        "set series_patterns",
    ),
)

_MR_GE_MISSING_FLAIR = StudySpec(
    "mr-ge-missing-flair",
    "brain_tumor",
    "GE",
    "en",
    "a GE protocol without FLAIR (a short follow-up protocol)",
    manufacturer="GE MEDICAL SYSTEMS",
    model="DISCOVERY MR750w",
    series=(
        mr(1, "3 Plane Loc", "localizer", sequence="GR", tr=5, te=1.5, time="090000"),
        mr(2, "Ax T2 FSE", "T2", sequence="SE", tr=5000, te=100, contrast="T2", time="090300"),
        mr(
            3,
            "Ax DWI 1000b",
            "diffusion",
            sequence="EP",
            tr=6000,
            te=75,
            contrast="T2",
            time="090600",
            private=(GE_B,),
        ),
        mr(4, "Ax T1 SE", "T1", sequence="SE", tr=550, te=10, time="091000"),
        mr(
            5,
            "Ax T1 SE +C",
            "T1c",
            sequence="SE",
            tr=550,
            te=10,
            agent="Gadavist",
            start="091500",
            time="091800",
            contrast="T1c",
        ),
        mr(6, "Ax T2* GRE", "susceptibility", sequence="GR", tr=650, te=20, time="092000"),
    ),
    error=("the study has no FLAIR series", "'Ax T2 FSE' (series 2) as T2", "'Ax DWI 1000b'"),
)

MR_STUDIES: tuple[StudySpec, ...] = (
    _MR_SIEMENS_DE,
    _MR_GE_ES,
    _MR_PHILIPS_FR,
    _MR_CANON_JA,
    _MR_SIEMENS_AMBIGUOUS,
    _MR_GE_MISSING_FLAIR,
)


# -- fundus ----------------------------------------------------------------------------------


def fundus(laterality: str, expect: str = "chosen", **header: Any) -> ImageSpec:
    """A colour fundus photograph: Retina, taken with a fundus camera (override by keyword)."""
    values: dict[str, Any] = {
        "AnatomicRegionSequence": RETINA,
        "AcquisitionDeviceTypeCodeSequence": FUNDUS_CAMERA,
    }
    values.update(header)
    return ImageSpec(expect, laterality, "fundus", values)


def photographs(
    number: int,
    description: str,
    images: tuple[ImageSpec, ...],
    *,
    modality: str = "OP",
    sop: str = OP_8BIT,
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "", "COLOR"),
    uncompressed: bool = False,
    **header: Any,
) -> SeriesSpec:
    """A series of photographs."""
    return SeriesSpec(
        number,
        description,
        images[0].expect,
        modality=modality,
        sop_class_uid=sop,
        image_type=image_type,
        kind="photographs",
        images=images,
        uncompressed=uncompressed,
        header=header,
    )


FUNDUS_STUDIES: tuple[StudySpec, ...] = (
    StudySpec(
        "fundus-topcon",
        "fundus_dr",
        "Topcon",
        "en",
        "Topcon TRC-NW400 / IMAGEnet 6 exports: Ophthalmic Photography 8 Bit, JPEG baseline "
        "YBR_FULL_422, Anatomic Region Retina and Acquisition Device Fundus Camera (CID 4209, "
        "4202), red-free monochrome and a derived mosaic, as in Topcon's conformance statements",
        manufacturer="TOPCON",
        model="TRC-NW400",
        software="IMAGEnet 6 1.51",
        series=(
            photographs(
                1,
                "Color",
                (
                    fundus("R", ImageComments="Macula"),
                    fundus("R", ImageComments="Disc"),
                    fundus("L", ImageComments="Macula"),
                    fundus("L", ImageComments="Disc"),
                    ImageSpec(
                        "not-fundus",
                        "R",
                        "external",
                        {
                            "AnatomicRegionSequence": EYE,
                            "AcquisitionDeviceTypeCodeSequence": FUNDUS_CAMERA,
                            "ImageComments": "Anterior segment",
                        },
                    ),
                ),
            ),
            photographs(
                2,
                "Red-free",
                (
                    ImageSpec("not-colour", "R", "monochrome", {"AnatomicRegionSequence": RETINA}),
                    ImageSpec("not-colour", "L", "monochrome", {"AnatomicRegionSequence": RETINA}),
                ),
            ),
            photographs(
                3,
                "Mosaic",
                (fundus("R", "derived"),),
                image_type=("DERIVED", "PRIMARY", "", "COLOR"),
            ),
        ),
    ),
    StudySpec(
        "fundus-zeiss-de",
        "fundus_dr",
        "Zeiss",
        "de",
        "Carl Zeiss Meditec VISUCAM 500 with FORUM: colour photographs per eye, a stereo pair "
        "(Stereo Pairs Present, Stereometric Relationship), an external photograph as VL "
        "Photographic Image, a scanned report as Secondary Capture (Conversion Type SD); "
        "German site naming (Fundus farbig OD/OS, Stereo Papille, Außenaufnahme, Befund)",
        manufacturer="Carl Zeiss Meditec",
        model="VISUCAM 500",
        software="5.2",
        series=(
            photographs(1, "Fundus farbig OD", (fundus("R"),)),
            photographs(2, "Fundus farbig OS", (fundus("L"),)),
            photographs(
                3,
                "Stereo Papille OD",
                (
                    fundus("R", StereoPairsPresent="YES"),
                    fundus("R", "stereo-pair", StereoPairsPresent="YES"),
                ),
            ),
            SeriesSpec(
                4,
                "Stereometrische Beziehung",
                "not-image",
                modality="OP",
                kind="stereo",
                pairs=(((3, 0), (3, 1)),),
            ),
            photographs(
                5,
                "Außenaufnahme",
                (
                    ImageSpec(
                        "not-fundus",
                        "R",
                        "external",
                        {
                            "AcquisitionDeviceTypeCodeSequence": EXTERNAL_CAMERA,
                        },
                    ),
                ),
                modality="XC",
                sop=VL_PHOTOGRAPHIC,
                uncompressed=True,
            ),
            photographs(
                6,
                "Befund",
                (ImageSpec("document", "", "document"),),
                modality="OT",
                sop=SECONDARY_CAPTURE,
                image_type=("DERIVED", "SECONDARY"),
            ),
        ),
    ),
    StudySpec(
        "fundus-canon-ja",
        "fundus_dr",
        "Canon",
        "ja",
        "Canon CR-2 AF non-mydriatic camera exports as VL Photographic Image (uncompressed "
        "RGB) and a Secondary Capture export without anatomy; Japanese site naming (眼底 右眼/"
        "左眼, 前眼部, エクスポート)",
        manufacturer="Canon Inc.",
        model="CR-2 AF",
        software="2.0",
        character_set=JAPANESE,
        series=(
            photographs(
                1,
                "眼底 右眼",
                (fundus("R", AcquisitionDeviceTypeCodeSequence=[]),),
                modality="XC",
                sop=VL_PHOTOGRAPHIC,
                uncompressed=True,
            ),
            photographs(
                2,
                "眼底 左眼",
                (fundus("L", AcquisitionDeviceTypeCodeSequence=[]),),
                modality="XC",
                sop=VL_PHOTOGRAPHIC,
                uncompressed=True,
            ),
            photographs(
                3,
                "前眼部",
                (ImageSpec("not-fundus", "L", "external", {"AnatomicRegionSequence": EYE}),),
                modality="XC",
                sop=VL_PHOTOGRAPHIC,
                uncompressed=True,
            ),
            photographs(
                4,
                "眼底写真 エクスポート",
                (ImageSpec("chosen", "R", "fundus", {"ConversionType": "WSD"}),),
                modality="OT",
                sop=SECONDARY_CAPTURE,
                image_type=("DERIVED", "SECONDARY"),
            ),
        ),
    ),
    StudySpec(
        "fundus-optos-fr",
        "fundus_dr",
        "Optos",
        "fr",
        "Optos California ultra-widefield SLO exports (Acquisition Device Scanning Laser "
        "Ophthalmoscope), autofluorescence and fluorescein angiography in monochrome, and a "
        "site's anterior-segment photograph; French site naming (Rétinographie couleur OD/OG, "
        "Autofluorescence, Angiographie à la fluorescéine, segment antérieur)",
        manufacturer="Optos",
        model="California",
        software="OptosAdvance 4.3",
        series=(
            photographs(
                1, "Rétinographie couleur OD", (fundus("R", AcquisitionDeviceTypeCodeSequence=SLO),)
            ),
            photographs(
                2, "Rétinographie couleur OG", (fundus("L", AcquisitionDeviceTypeCodeSequence=SLO),)
            ),
            photographs(
                3,
                "Autofluorescence OD",
                (ImageSpec("not-colour", "R", "monochrome", {"AnatomicRegionSequence": RETINA}),),
            ),
            photographs(
                4,
                "Angiographie à la fluorescéine OG",
                (ImageSpec("not-colour", "L", "monochrome", {"AnatomicRegionSequence": RETINA}),),
            ),
            photographs(
                5,
                "Photo segment antérieur OD",
                (ImageSpec("not-fundus", "R", "external", {"AnatomicRegionSequence": CORNEA}),),
                modality="XC",
                sop=VL_PHOTOGRAPHIC,
                uncompressed=True,
            ),
        ),
    ),
    StudySpec(
        "fundus-heidelberg-unusable",
        "fundus_dr",
        "Heidelberg",
        "en",
        "a Heidelberg Spectralis visit without colour photographs: an infrared SLO image, an "
        "OCT volume (Ophthalmic Tomography, Modality OPT) and an external photograph",
        manufacturer="Heidelberg Engineering",
        model="Spectralis",
        software="6.16",
        series=(
            photographs(
                1,
                "IR 30° ART",
                (
                    ImageSpec(
                        "not-colour",
                        "R",
                        "monochrome",
                        {
                            "AnatomicRegionSequence": RETINA,
                            "AcquisitionDeviceTypeCodeSequence": SLO,
                        },
                    ),
                ),
            ),
            photographs(
                2,
                "OCT Volume",
                (ImageSpec("other-modality", "R", "tomography"),),
                modality="OPT",
                sop=OPHTHALMIC_TOMOGRAPHY,
            ),
            photographs(
                3,
                "External eye",
                (
                    ImageSpec(
                        "not-fundus",
                        "R",
                        "external",
                        {
                            "AcquisitionDeviceTypeCodeSequence": EXTERNAL_CAMERA,
                        },
                    ),
                ),
                modality="XC",
                sop=VL_PHOTOGRAPHIC,
                uncompressed=True,
            ),
        ),
        error=(
            "no colour fundus photograph",
            "'IR 30° ART' (series 1)",
            "'External eye' (series 3)",
        ),
    ),
)

STUDIES: tuple[StudySpec, ...] = CT_STUDIES + MR_STUDIES + FUNDUS_STUDIES


def study(name: str) -> StudySpec:
    """The corpus study called *name*."""
    for spec in STUDIES:
        if spec.name == name:
            return spec
    raise KeyError(name)
