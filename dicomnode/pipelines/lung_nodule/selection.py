"""Which CT series of the study the detector reads."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from dicomnode.pipelines.base import PipelineError, SeriesInput


def select_ct_series(
    series: Sequence[SeriesInput],
    max_slice_thickness: float | None,
    log: Callable[[str], None],
) -> SeriesInput:
    """The CT series with the most slices of plane geometry, thin slices first.

    With *max_slice_thickness* set, series of thinner slices win over thicker
    ones whatever their size; without any thin series the largest is used and
    the timeline says so.

    Raises
    ------
    PipelineError
        No CT series with plane geometry and at least two slices (or one
        enhanced multi-frame instance).
    """
    from pydicom import dcmread

    candidates = []
    for item in series:
        if (item.modality or "").upper() != "CT":
            continue
        header = dcmread(item.paths[0], stop_before_pixels=True)
        # One enhanced multi-frame instance is a whole volume; one plain slice is not.
        if len(item.paths) < 2 and int(header.get("NumberOfFrames", 1) or 1) < 2:
            continue
        if (
            "ImagePositionPatient" not in header
            and "PerFrameFunctionalGroupsSequence" not in header
        ):
            continue
        thickness = float(header.get("SliceThickness", 0) or 0)
        thin = max_slice_thickness is None or thickness <= max_slice_thickness
        candidates.append((thin, len(item.paths), item))
    if not candidates:
        raise PipelineError(
            "no CT series with plane geometry and at least two slices in this study"
        )
    thin, _, chosen = max(candidates, key=lambda c: (c[0], c[1]))
    if not thin:
        log(
            f"no series with slices of {max_slice_thickness:g} mm or thinner; using the largest series"
        )
    log(
        f"series {chosen.series_description or chosen.series_instance_uid}: "
        f"{len(chosen.paths)} instances"
    )
    return chosen
