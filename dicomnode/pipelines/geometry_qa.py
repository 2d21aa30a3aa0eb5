"""``geometry_qa``: checks that each image series forms a regular volume.

The first check every volumetric pipeline needs, useful on its own as a
routing target while models are being validated: for each series with
ImagePositionPatient/ImageOrientationPatient it sorts the slices along the
slice normal and reports slice count, in-plane and slice spacing. Mixed
orientations, duplicate positions or gaps (missing slices) fail the job with
a sentence naming the series. It produces no DICOM objects.
"""

from __future__ import annotations

import numpy as np
from pydicom import dcmread

from dicomnode.pipelines.base import JobContext, Pipeline, PipelineError, ResultObject
from dicomnode.pipelines.volume import regular_spacing

_TAGS = ["ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns"]


def check_series_geometry(positions: np.ndarray, orientation: np.ndarray, what: str) -> float:
    """Slice spacing of a series (0 for one slice), or PipelineError saying why it is not regular.

    Parameters
    ----------
    positions
        (n, 3) ImagePositionPatient values.
    orientation
        (6,) ImageOrientationPatient (row then column direction cosines).
    what
        How the sentence names the series.
    """
    normal = np.cross(orientation[:3], orientation[3:])
    along = np.sort(positions @ normal)
    return regular_spacing(along, what) if len(along) > 1 else 0.0


class GeometryQA(Pipeline):
    """Verify slice geometry of every image series of a study."""

    def run(self, context: JobContext) -> list[ResultObject]:
        checked = 0
        for series in context.series:
            with context.stage("select", f"series {series.series_instance_uid}"):
                headers = [
                    dcmread(p, stop_before_pixels=True, specific_tags=_TAGS) for p in series.paths
                ]
            usable = [
                h for h in headers if "ImagePositionPatient" in h and "ImageOrientationPatient" in h
            ]
            if not usable:
                context.log(
                    f"series {series.series_description or series.series_instance_uid}: no plane geometry"
                )
                continue
            orientations = np.array([[float(v) for v in h.ImageOrientationPatient] for h in usable])
            if np.abs(orientations - orientations[0]).max() > 1e-3:
                raise PipelineError(f"series {series.series_instance_uid} mixes slice orientations")
            positions = np.array([[float(v) for v in h.ImagePositionPatient] for h in usable])
            spacing = check_series_geometry(
                positions, orientations[0], f"series {series.series_instance_uid}"
            )
            px = usable[0].get("PixelSpacing", [0, 0])
            context.log(
                f"series {series.series_description or series.series_instance_uid}: "
                f"{len(usable)} slices {usable[0].Rows}x{usable[0].Columns}, "
                f"pixel {float(px[0]):.3f}x{float(px[1]):.3f} mm, slice spacing {spacing:.3f} mm",
                stage="geometry",
            )
            checked += 1
        if checked == 0:
            raise PipelineError("no series of this study has plane geometry to check")
        return []
