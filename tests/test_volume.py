"""Series to volume (dicomnode.pipelines.volume): order, geometry, rescale, decoders, refusals."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    RLELossless,
    generate_uid,
)

from dicomnode.pipelines import PipelineError
from dicomnode.pipelines.volume import load_series, resample
from dicomnode.synthetic import Nodule, ct_series, write_series

SPACING = (0.8, 0.9)  # rows, columns
THICKNESS = 2.0


@pytest.fixture(scope="module")
def series() -> list[Dataset]:
    return ct_series(
        12,
        48,
        40,
        pixel_spacing=SPACING,
        slice_thickness=THICKNESS,
        seed=3,
        nodules=[Nodule((5.0, -4.0, 10.0), 8.0, hu=300.0)],
    )


def stored(ds: Dataset) -> np.ndarray:
    return ds.pixel_array.astype(np.float32) + float(ds.RescaleIntercept)


def test_slices_sorted_along_the_normal_rescaled_with_lps_affine(series: list[Dataset]) -> None:
    shuffled = [series[i] for i in np.random.default_rng(0).permutation(len(series))]
    volume = load_series(shuffled)
    assert volume.shape == (12, 48, 40)
    assert [ds.SOPInstanceUID for ds in volume.source] == [ds.SOPInstanceUID for ds in series]
    assert np.array_equal(volume.array[5], stored(series[5]))  # HU: stored value + intercept
    assert volume.spacing == pytest.approx((THICKNESS, SPACING[0], SPACING[1]))
    # Voxel (k, j, i) sits at ImagePositionPatient + j * row step (+y) + i * column step (+x).
    origin = np.array([float(v) for v in series[3].ImagePositionPatient])
    expected = origin + np.array([7 * SPACING[1], 11 * SPACING[0], 0.0])
    assert volume.index_to_lps(np.array([3, 11, 7]))[0] == pytest.approx(expected)
    assert volume.lps_to_index(expected)[0] == pytest.approx([3, 11, 7])
    # The RAS view MONAI uses: (x, y, z) array, affine with R and A negated.
    ras = volume.ras_affine() @ np.array([7, 11, 3, 1.0])
    assert ras[:3] == pytest.approx(expected * np.array([-1, -1, 1]))
    assert volume.to_ras_array()[7, 11, 3] == volume.array[3, 11, 7]


def test_resample_onto_a_world_grid_keeps_positions(series: list[Dataset]) -> None:
    volume = load_series(series)
    affine = volume.affine.copy()
    affine[:3, :3] *= 2.0  # every other voxel, same origin
    half = resample(volume, affine, (6, 24, 20), order=0)
    assert np.array_equal(half.array, volume.array[::2, ::2, ::2])


@pytest.mark.parametrize(
    ("option", "syntax"),
    [("--jpeg", JPEGLosslessSV1), ("--j2k", JPEG2000Lossless), ("--rle", RLELossless)],
    ids=["jpeg-lossless", "jpeg2000-lossless", "rle"],
)
def test_compressed_transfer_syntaxes_decode_to_the_same_hu(
    series: list[Dataset], tmp_path: Path, option: str, syntax: str
) -> None:
    plain = write_series(series, tmp_path / "plain")
    compressed = []
    for path in plain:
        out = tmp_path / path.name
        args = [
            "gdcmconv",
            option,
            *(["--lossless"] if option != "--rle" else []),
            str(path),
            str(out),
        ]
        subprocess.run(args, check=True, capture_output=True, timeout=60)
        compressed.append(out)
    assert pydicom.dcmread(compressed[0]).file_meta.TransferSyntaxUID == syntax
    assert np.array_equal(load_series(compressed).array, load_series(plain).array)


def test_rle_from_pydicom_decodes(series: list[Dataset]) -> None:
    encoded = [copy.deepcopy(ds) for ds in series]
    for ds in encoded:
        ds.compress(RLELossless)
    assert np.array_equal(load_series(encoded).array, load_series(series).array)


def enhanced_ct(series: list[Dataset]) -> Dataset:
    """One multi-frame instance holding *series*' slices in reverse order (per-frame positions)."""
    first = series[0]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT Image Storage
    ds.SOPInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = first.FrameOfReferenceUID
    for keyword in (
        "Rows",
        "Columns",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
        "SamplesPerPixel",
        "PhotometricInterpretation",
    ):
        setattr(ds, keyword, first.get(keyword))
    frames = list(reversed(series))
    ds.NumberOfFrames = len(frames)
    shared = Dataset()
    orientation, measures, transform = Dataset(), Dataset(), Dataset()
    orientation.ImageOrientationPatient = first.ImageOrientationPatient
    measures.PixelSpacing = first.PixelSpacing
    measures.SliceThickness = first.SliceThickness
    transform.RescaleIntercept, transform.RescaleSlope, transform.RescaleType = "-1024", "1", "HU"
    shared.PlaneOrientationSequence = Sequence([orientation])
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PixelValueTransformationSequence = Sequence([transform])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for frame in frames:
        item, position = Dataset(), Dataset()
        position.ImagePositionPatient = frame.ImagePositionPatient
        item.PlanePositionSequence = Sequence([position])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.PixelData = b"".join(frame.PixelData for frame in frames)
    return ds


def test_enhanced_multi_frame_ct(series: list[Dataset]) -> None:
    single = load_series(series)
    multi = load_series([enhanced_ct(series)])
    assert np.array_equal(multi.array, single.array)  # frames re-sorted along the normal
    assert np.allclose(multi.affine, single.affine)
    assert multi.frame_of_reference_uid == series[0].FrameOfReferenceUID


def shifted(ds: Dataset, dx: float) -> Dataset:
    out = copy.deepcopy(ds)
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    out.ImagePositionPatient = [f"{x + dx:g}", f"{y:g}", f"{z:g}"]
    return out


def test_gantry_tilt_is_refused_with_its_angle(series: list[Dataset]) -> None:
    # Each slice shifted along x in proportion to its height: a 20 degree shear.
    tilted = [shifted(ds, k * THICKNESS * np.tan(np.radians(20))) for k, ds in enumerate(series)]
    with pytest.raises(PipelineError, match=r"sheared 20\.0 degrees .*gantry tilt"):
        load_series(tilted, what="series 1")


def test_missing_slice_is_refused(series: list[Dataset]) -> None:
    with pytest.raises(PipelineError, match=r"series 1: slice spacing is not uniform .*1 gap"):
        load_series(series[:5] + series[6:], what="series 1")


def test_mixed_sizes_orientations_and_duplicates_are_refused(series: list[Dataset]) -> None:
    small = ct_series(2, 32, 40, pixel_spacing=SPACING, slice_thickness=THICKNESS, seed=1)
    moved = copy.deepcopy(small[1])
    moved.ImagePositionPatient = [*series[0].ImagePositionPatient[:2], f"{THICKNESS * 20:g}"]
    with pytest.raises(PipelineError, match="different sizes"):
        load_series([*series[:3], moved])
    rotated = copy.deepcopy(series[4])
    rotated.ImageOrientationPatient = ["0", "1", "0", "0", "0", "-1"]
    with pytest.raises(PipelineError, match="different orientations"):
        load_series([*series[:3], rotated])
    with pytest.raises(PipelineError, match="share the same position"):
        load_series([*series[:3], copy.deepcopy(series[2])])


def test_undecodable_pixels_are_a_sentence(series: list[Dataset], tmp_path: Path) -> None:
    broken = pydicom.dcmread(write_series(series[:1], tmp_path)[0])  # no cached pixels
    broken.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder
    with pytest.raises(PipelineError, match="pixel data cannot be decoded"):
        load_series([broken, *series[1:3]])
