"""Pipelines for tests, loaded by worker processes as ``tests.pipelines:Name``."""

from __future__ import annotations

import time

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from dicomnode.pipelines import JobContext, Pipeline, PipelineError, ResultObject


class SeriesSummary(Pipeline):
    """Writes one Secondary Capture per study into the study (a stand-in for a model)."""

    def run(self, context: JobContext) -> list[ResultObject]:
        first = pydicom.dcmread(context.series[0].paths[0], stop_before_pixels=True)
        with context.stage("infer", "count instances"):
            count = sum(len(s.paths) for s in context.series)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
        # Deterministic UIDs per job: a re-run resends the same instance.
        ds.SOPInstanceUID = generate_uid(
            entropy_srcs=[context.study_instance_uid, "sc", str(context.job_id)]
        )
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SOPClassUID = SecondaryCaptureImageStorage
        for keyword in (
            "PatientName",
            "PatientID",
            "PatientBirthDate",
            "PatientSex",
            "StudyDate",
            "StudyTime",
            "AccessionNumber",
            "ReferringPhysicianName",
            "StudyID",
        ):
            setattr(ds, keyword, first.get(keyword, ""))
        ds.StudyInstanceUID = context.study_instance_uid
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=[context.study_instance_uid, "series"])
        ds.Modality = "OT"
        ds.SeriesNumber = 900
        ds.InstanceNumber = 1
        ds.SeriesDescription = f"summary of {count} instances"
        ds.ConversionType = "WSD"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = ds.Columns = 16
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
        ds.PixelData = np.full((16, 16), count % 256, dtype=np.uint8).tobytes()
        path = context.work_dir / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        return [ResultObject(path, ds.SOPInstanceUID, ds.SOPClassUID)]


class Broken(Pipeline):
    """Always fails with a sentence."""

    def run(self, context: JobContext) -> list[ResultObject]:
        raise PipelineError("the model found no lungs in this series")


class Crashing(Pipeline):
    """Raises an unexpected exception."""

    def run(self, context: JobContext) -> list[ResultObject]:
        return [ResultObject(context.work_dir / "x", "1.2", "1.2")] if {}["missing"] else []


class Sleepy(Pipeline):
    """Sleeps ``seconds`` (config key), checking for cancellation."""

    def run(self, context: JobContext) -> list[ResultObject]:
        deadline = time.monotonic() + float(getattr(self.config, "seconds", 30))
        while time.monotonic() < deadline:
            context.check_cancelled()
            time.sleep(0.1)
        return []


class HyperdenseSpheres(Pipeline):
    """Finds voxels above 200 HU (synthetic nodules made with ``hu=300``) and reports them.

    A small but real detector for testing the result writers end to end:
    connected components become SEG segments, TID 1500 findings and a key image.
    """

    def run(self, context: JobContext) -> list[ResultObject]:
        from pydicom.sr.codedict import codes
        from scipy import ndimage

        from dicomnode.results import (
            AlgorithmInfo,
            KeyImageMark,
            NoduleFinding,
            SegmentSpec,
            SeriesSpec,
            write_key_image,
            write_measurement_report,
            write_segmentation,
        )

        with context.stage("load"):
            images = [pydicom.dcmread(p) for p in context.series[0].paths]
            images.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
            volume = np.stack(
                [
                    ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
                    for ds in images
                ]
            )
        with context.stage("infer"):
            labels, count = ndimage.label(volume > 200)
        dy, dx = (float(v) for v in images[0].PixelSpacing)
        dz = float(images[1].ImagePositionPatient[2]) - float(images[0].ImagePositionPatient[2])
        origin = np.array([float(v) for v in images[0].ImagePositionPatient])
        findings, marks = [], []
        for n in range(1, count + 1):
            zs, ys, xs = np.nonzero(labels == n)
            centre = origin + np.array([xs.mean() * dx, ys.mean() * dy, zs.mean() * dz])
            extent = max(
                (xs.max() - xs.min() + 1) * dx,
                (ys.max() - ys.min() + 1) * dy,
                (zs.max() - zs.min() + 1) * dz,
            )
            key = int(round(zs.mean()))
            findings.append(
                NoduleFinding(
                    tuple(centre),
                    float(extent),
                    float(len(zs) * dx * dy * dz),
                    score=0.99,
                    key_slice=key,
                    segment_number=n,
                )
            )
            marks.append(
                (key, KeyImageMark(float(ys.mean()), float(xs.mean()), extent / dx / 2 + 3))
            )
        config = self.config
        algorithm = AlgorithmInfo("hyperdense-test", "0.1", config.notice)

        def series(kind: str) -> SeriesSpec:
            return SeriesSpec(*config.result_series(kind, self.pipeline_name))

        key = f"{context.study_instance_uid}/{context.job_id}"
        outputs = []
        with context.stage("write"):
            seg = None
            if count:
                segments = [
                    SegmentSpec(
                        f"Nodule {n}",
                        codes.SCT.MorphologicallyAbnormalStructure,
                        codes.SCT.Nodule,
                        tracking_id=f"Finding {n}",
                    )
                    for n in range(1, count + 1)
                ]
                seg = write_segmentation(
                    images,
                    labels,
                    segments,
                    algorithm=algorithm,
                    series=series("seg"),
                    uid_key=key,
                    omit_empty_frames=config.omit_empty_frames,
                )
                outputs.append(seg)
                if config.key_images:
                    slice_index, mark = marks[0]
                    outputs.append(
                        write_key_image(
                            images[slice_index],
                            [mark],
                            algorithm=algorithm,
                            series=series("sc"),
                            uid_key=key,
                        )
                    )
            outputs.append(
                write_measurement_report(
                    images,
                    findings,
                    segmentation=seg,
                    algorithm=algorithm,
                    series=series("sr"),
                    uid_key=key,
                )
            )
        results = []
        for ds in outputs:
            path = context.work_dir / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            results.append(ResultObject(path, ds.SOPInstanceUID, ds.SOPClassUID))
        return results


class Record(Pipeline):
    """Appends ``job_id pid`` to the file named by config ``log`` after ``seconds`` (default 0)."""

    def run(self, context: JobContext) -> list[ResultObject]:
        import os

        deadline = time.monotonic() + float(getattr(self.config, "seconds", 0))
        while time.monotonic() < deadline:
            context.check_cancelled()
            time.sleep(0.05)
        with open(str(self.config.log), "a") as log:
            log.write(f"{context.job_id} {os.getpid()}\n")
        return []
