"""One enhanced multi-frame instance from a single-frame series (the phantoms' output).

Scanners increasingly send a whole CT or MR series as one instance: Enhanced
CT/MR Image Storage (frames described by functional groups the scanner wrote)
or Legacy Converted Enhanced CT/MR Image Storage (a PACS or converter packed
single-frame slices into one object). Tests and the benchmarks make both from
the same phantom slices, so results on the multi-frame instance can be
compared with those on the single frames voxel for voxel.

:func:`legacy_converted` is highdicom's converter (:mod:`highdicom.legacy`);
:func:`enhanced` starts from that conversion and turns it into a true
Enhanced CT or MR instance: the conversion-only sequences go and the
modality's functional group macros (CT acquisition, reconstruction, exposure;
MR timing, echo, coils ...) and Enhanced CT/MR Image module attributes come in,
with plausible constant values for a phantom. Both pass dciodvfy without
errors; the warnings left are in ``docs/pipelines.md`` ("Enhanced multi-frame
inputs").

The frame order is the converter's (highdicom writes the slices in its own
order, not necessarily the series' order), so readers must sort by position:
:func:`dicomnode.pipelines.volume.load_series` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydicom import Dataset
from pydicom.datadict import dictionary_VR
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
LEGACY_CT = "1.2.840.10008.5.1.4.1.1.2.2"
LEGACY_MR = "1.2.840.10008.5.1.4.1.1.4.4"

Kind = Literal["enhanced", "legacy"]


def _value(keyword: str, value: object) -> object:
    """*value* as its attribute's VR wants it: binary floats (FD, FL) from decimal strings."""
    if dictionary_VR(keyword) in ("FD", "FL"):
        if isinstance(value, list | tuple):
            return [float(v) for v in value]
        return float(value)  # type: ignore[arg-type]
    return value


def _set(ds: Dataset, **attributes: object) -> None:
    for keyword, value in attributes.items():
        setattr(ds, keyword, _value(keyword, value))


def _item(**attributes: object) -> DicomSequence:
    """A one-item sequence of *attributes* (keyword = value, decimal strings for numbers)."""
    item = Dataset()
    _set(item, **attributes)
    return DicomSequence([item])


def _windowed(ds: Dataset) -> Dataset:
    """*ds* (a shallow copy) with a window: the Frame VOI LUT macro the conversion writes needs one.

    MR slices often come without Window Center/Width; the window is then the
    slice's stored value range.
    """
    if "WindowCenter" in ds and "WindowWidth" in ds:
        return ds
    out = Dataset(ds)
    out.file_meta = ds.file_meta
    pixels = ds.pixel_array
    low, high = float(pixels.min()), float(pixels.max())
    out.WindowCenter = f"{(low + high) / 2:g}"
    out.WindowWidth = f"{max(high - low, 1.0):g}"
    return out


def _items(ds: Dataset, keyword: str) -> list[Dataset]:
    """The items of functional group *keyword*, shared or per frame, wherever *ds* has them."""
    found: list[Dataset] = []
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        for group in ds.get(groups, []):
            found += list(group.get(keyword, []))
    return found


def legacy_converted(
    datasets: Sequence[Dataset],
    *,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    series_number: int | None = None,
) -> Dataset:
    """The single-frame CT or MR *datasets* (one series) as one Legacy Converted Enhanced instance.

    Parameters
    ----------
    datasets
        One series of CT Image or MR Image Storage slices, with pixel data.
    series_instance_uid, sop_instance_uid, series_number
        Of the new instance; default: new UIDs, the source's series number.

    Returns
    -------
    pydicom.Dataset
        Legacy Converted Enhanced CT or MR Image Storage, explicit VR little
        endian, in the same study and Frame of Reference as *datasets*.
    """
    import highdicom as hd

    modality = str(datasets[0].Modality)
    converters = {
        "CT": hd.legacy.LegacyConvertedEnhancedCTImage,
        "MR": hd.legacy.LegacyConvertedEnhancedMRImage,
    }
    if modality not in converters:
        raise ValueError(f"no enhanced multi-frame conversion for modality {modality}")
    converted = converters[modality](
        [_windowed(ds) for ds in datasets],
        series_instance_uid or generate_uid(),
        int(series_number if series_number is not None else datasets[0].get("SeriesNumber", 1)),
        sop_instance_uid or generate_uid(),
        1,
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    ds = Dataset(converted)
    ds.file_meta = converted.file_meta
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    # highdicom lists the source slices in Referenced Series Sequence, but dciodvfy
    # (rightly) finds no reference to them in the object's attributes that it knows
    # (Conversion Source Attributes are not one) and calls that an error.
    if "ReferencedSeriesSequence" in ds:
        del ds.ReferencedSeriesSequence
    return ds


def _ct_groups(first: Dataset) -> Dataset:
    """The CT functional group macros every frame of a phantom series shares."""
    kvp = first.get("KVP", "120")
    shared = Dataset()
    shared.CTAcquisitionTypeSequence = _item(
        AcquisitionType="SPIRAL", ConstantVolumeFlag="NO", FluoroscopyFlag="NO"
    )
    shared.CTAcquisitionDetailsSequence = _item(
        DataCollectionDiameter="500",
        GantryDetectorTilt="0",
        TableHeight="150",
        RotationDirection="CW",
        RevolutionTime="0.5",
        SingleCollimationWidth="0.625",
        TotalCollimationWidth="40",
    )
    shared.CTTableDynamicsSequence = _item(
        TableSpeed="80", TableFeedPerRotation="40", SpiralPitchFactor="1"
    )
    shared.CTGeometrySequence = _item(
        DistanceSourceToDetector="1085.6", DistanceSourceToDataCollectionCenter="595"
    )
    spacing = first.PixelSpacing
    shared.CTReconstructionSequence = _item(
        ReconstructionAlgorithm="FILTER_BACK_PROJ",
        ConvolutionKernel="STANDARD",
        ConvolutionKernelGroup="LUNG",
        ReconstructionDiameter=f"{float(spacing[1]) * int(first.Columns):g}",
        ReconstructionPixelSpacing=list(spacing),
        ReconstructionAngle="360",
        ImageFilter="NONE",
    )
    shared.CTExposureSequence = _item(
        ExposureTimeInms="500",
        XRayTubeCurrentInmA="200",
        ExposureInmAs="100",
        ExposureModulationType="NONE",
    )
    shared.CTXRayDetailsSequence = _item(
        KVP=kvp,
        FocalSpots=["1.2"],
        FilterType="BODY",
        FilterMaterial=["ALUMINUM"],
    )
    return shared


def _mr_groups(first: Dataset) -> Dataset:
    """The MR functional group macros every frame of a phantom series shares."""
    shared = Dataset()
    shared.MRTimingAndRelatedParametersSequence = _item(
        RepetitionTime=first.get("RepetitionTime", "500"),
        FlipAngle="90",
        EchoTrainLength=int(first.get("EchoTrainLength", 1)),
        RFEchoTrainLength=1,
        GradientEchoTrainLength=0,
        SpecificAbsorptionRateSequence=_item(
            SpecificAbsorptionRateDefinition="IEC_WHOLE_BODY", SpecificAbsorptionRateValue="0.5"
        ),
        OperatingModeSequence=_item(OperatingModeType="STATIC FIELD", OperatingMode="IEC_NORMAL"),
    )
    shared.MRFOVGeometrySequence = _item(
        InPlanePhaseEncodingDirection="ROW",
        MRAcquisitionFrequencyEncodingSteps=int(first.Columns),
        MRAcquisitionPhaseEncodingStepsInPlane=int(first.Rows),
        PercentSampling="100",
        PercentPhaseFieldOfView="100",
    )
    if first.get("MRAcquisitionType") == "3D":
        shared.MRFOVGeometrySequence[0].MRAcquisitionPhaseEncodingStepsOutOfPlane = 1
    shared.MREchoSequence = _item(EffectiveEchoTime=first.get("EchoTime", "10"))
    modifier = _item(
        InversionRecovery="YES" if "InversionTime" in first else "NO",
        FlowCompensation="NONE",
        T2Preparation="NO",
        SpectrallySelectedExcitation="NONE",
        SpatialPresaturation="NONE",
        PartialFourier="NO",
        ParallelAcquisition="NO",
    )
    if "InversionTime" in first:
        _set(modifier[0], InversionTimes=[first.InversionTime])
    shared.MRModifierSequence = modifier
    shared.MRImagingModifierSequence = _item(
        MagnetizationTransfer="NONE",
        BloodSignalNulling="NO",
        Tagging="NONE",
        TransmitterFrequency="127.7",
        PixelBandwidth="200",
    )
    shared.MRReceiveCoilSequence = _item(
        ReceiveCoilName="HEAD",
        ReceiveCoilManufacturerName="",
        ReceiveCoilType="VOLUME",
        QuadratureReceiveCoil="YES",
    )
    shared.MRTransmitCoilSequence = _item(
        TransmitCoilName="BODY", TransmitCoilManufacturerName="", TransmitCoilType="BODY"
    )
    shared.MRAveragesSequence = _item(NumberOfAverages="1")
    return shared


def _contrast(first: Dataset) -> str:
    """Acquisition Contrast (an enumerated value) from the series' description."""
    text = f"{first.get('SeriesDescription', '')} {first.get('ProtocolName', '')}".upper()
    if "FLAIR" in text:
        return "FLUID_ATTENUATED"
    if "T2" in text:
        return "T2"
    return "T1" if "T1" in text else "UNKNOWN"


def _mr_image_module(ds: Dataset, first: Dataset) -> None:
    """Enhanced MR Image and MR Pulse Sequence module attributes of a phantom acquisition."""
    ds.ResonantNucleus = "1H"
    ds.KSpaceFiltering = "NONE"
    ds.MagneticFieldStrength = first.get("MagneticFieldStrength", "3")
    ds.ApplicableSafetyStandardAgency = "IEC"
    ds.ImageComments = "synthetic phantom"
    ds.PulseSequenceName = str(first.get("ProtocolName", "phantom"))[:16]
    ds.MRAcquisitionType = first.get("MRAcquisitionType", "2D")
    spin_echo = "SE" in list(first.get("ScanningSequence", []))
    ds.EchoPulseSequence = "SPIN" if spin_echo else "GRADIENT"
    # Some attributes are only for some sequences (dciodvfy checks the conditions).
    if spin_echo:
        ds.MultipleSpinEcho = "NO"
    ds.MultiPlanarExcitation = "NO"
    ds.PhaseContrast = "NO"
    ds.TimeOfFlightContrast = "NO"
    ds.SteadyStatePulseSequence = "NONE"
    ds.EchoPlanarPulseSequence = "NO"
    ds.SaturationRecovery = "NO"
    ds.SpectrallySelectedSuppression = "NONE"
    ds.OversamplingPhase = "NONE"
    ds.GeometryOfKSpaceTraversal = "RECTILINEAR"
    ds.RectilinearPhaseEncodeReordering = "LINEAR"
    ds.SegmentedKSpaceTraversal = "SINGLE"
    if ds.MRAcquisitionType == "3D":
        ds.CoverageOfKSpace = "FULL"
    ds.NumberOfKSpaceTrajectories = 1


def enhanced(
    datasets: Sequence[Dataset],
    *,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    series_number: int | None = None,
) -> Dataset:
    """The single-frame CT or MR *datasets* (one series) as one Enhanced CT or MR instance.

    Parameters and return as :func:`legacy_converted`; the SOP class is
    Enhanced CT or Enhanced MR Image Storage.
    """
    ds = legacy_converted(
        datasets,
        series_instance_uid=series_instance_uid,
        sop_instance_uid=sop_instance_uid,
        series_number=series_number,
    )
    first = datasets[0]
    ct = str(first.Modality) == "CT"
    ds.SOPClassUID = ENHANCED_CT if ct else ENHANCED_MR
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    shared = ds.SharedFunctionalGroupsSequence[0]
    # What only a conversion says: the attributes it could not place, and its sources.
    for keyword in ("UnassignedSharedConvertedAttributesSequence",):
        if keyword in shared:
            delattr(shared, keyword)
    modality_groups = _ct_groups(first) if ct else _mr_groups(first)
    for element in modality_groups:
        shared.add(element)
    when = f"{first.get('ContentDate', '20260101')}{first.get('ContentTime', '120000')}"
    if ct:
        shared.IrradiationEventIdentificationSequence = _item(
            IrradiationEventUID=generate_uid(entropy_srcs=[str(ds.SOPInstanceUID), "irradiation"])
        )
    for frame in ds.PerFrameFunctionalGroupsSequence:
        for keyword in (
            "UnassignedPerFrameConvertedAttributesSequence",
            "ConversionSourceAttributesSequence",
        ):
            if keyword in frame:
                delattr(frame, keyword)
        content = frame.FrameContentSequence[0]
        _set(
            content,
            FrameAcquisitionDateTime=when,
            FrameReferenceDateTime=when,
            FrameAcquisitionDuration="500",
        )
        if ct:
            position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
            frame.CTPositionSequence = _item(
                TablePosition=f"{-position[2]:g}",
                ReconstructionTargetCenterPatient=[
                    "0",
                    "0",
                    f"{position[2]:g}",
                ],
                DataCollectionCenterPatient=["0", "0", f"{position[2]:g}"],
            )
    _set(ds, AcquisitionDateTime=when, AcquisitionDuration="10")
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.DeviceSerialNumber = str(first.get("DeviceSerialNumber", "PHANTOM1"))
    if "ContrastBolusAgent" in ds:
        # Enhanced images name the agent in the Enhanced Contrast/Bolus module's coded
        # sequences; the single-frame attribute is not in their IODs.
        del ds.ContrastBolusAgent
    if not ct:
        _mr_image_module(ds, first)
        # Image level and frame level (MR Image Description macros) say the same.
        for described in [ds, *_items(ds, "MRImageFrameTypeSequence")]:
            described.ComplexImageComponent = "MAGNITUDE"
            described.AcquisitionContrast = _contrast(first)
    return ds


def to_multiframe(datasets: Sequence[Dataset], kind: Kind = "enhanced", **uids: str) -> Dataset:
    """:func:`enhanced` or :func:`legacy_converted` of *datasets*, by *kind*."""
    convert = enhanced if kind == "enhanced" else legacy_converted
    return convert(datasets, **uids)  # type: ignore[arg-type]
