"""Pipelines for tests, loaded by worker processes as ``tests.pipelines:Name``."""

from __future__ import annotations

import time

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from dicomnode.pipelines import (
    JobContext,
    Pipeline,
    PipelineError,
    PipelineOptions,
    ResultObject,
    ResultOptions,
)


class SleepyOptions(PipelineOptions):
    """How long :class:`Sleepy` sleeps."""

    seconds: float = 30.0


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

    options_model = SleepyOptions
    options: SleepyOptions

    def run(self, context: JobContext) -> list[ResultObject]:
        deadline = time.monotonic() + self.options.seconds
        while time.monotonic() < deadline:
            context.check_cancelled()
            time.sleep(0.1)
        return []


class SpheresOptions(ResultOptions):
    """The result options, and the version the "model" claims (tests change it)."""

    version: str = "0.1"


class HyperdenseSpheres(Pipeline):
    """Finds voxels above 200 HU (synthetic nodules made with ``hu=300``) and reports them.

    A small but real detector for testing the result writers end to end:
    connected components become the lung pipeline's SEG segments, TID 1500
    findings and key image. It reads the CT series with the most instances (and
    says so, ``declares_inputs``), so a late series of another modality does
    not change its inputs.
    """

    options_model = SpheresOptions
    options: SpheresOptions
    declares_inputs = True

    def model_identity(self) -> str | None:
        return f"hyperdense-test {self.options.version}"

    def run(self, context: JobContext) -> list[ResultObject]:
        from scipy import ndimage

        from dicomnode.pipelines.lung_nodule.findings import detections_from_labels
        from dicomnode.pipelines.lung_nodule.report import write_results
        from dicomnode.pipelines.model import ResultWriter, save_results
        from dicomnode.pipelines.volume import load_series
        from dicomnode.results import AlgorithmInfo

        ct = [s for s in context.series if (s.modality or "").upper() == "CT"] or context.series
        selected = max(ct, key=lambda s: len(s.paths))
        context.use_inputs([selected])
        with context.stage("load"):
            volume = load_series(selected.paths)
        with context.stage("infer"):
            labels, _ = ndimage.label(volume.array > 200)
        algorithm = AlgorithmInfo("hyperdense-test", self.options.version, self.options.notice)
        writer = ResultWriter.for_job(algorithm, self.options, self.pipeline_name, context)
        with context.stage("write"):
            found = detections_from_labels(volume, labels, score=0.99)
            datasets = write_results(found, volume, writer, key_images=self.options.key_images)
            return save_results(datasets, context)
