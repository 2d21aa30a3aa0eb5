"""A pipeline that does nothing but leave a trace, for queue and scale-out tests and benchmarks.

Named in config as ``type = "dicomnode.testing.pipelines:Record"``, so a worker
process on any host (or a benchmark run from any folder) can load it.
"""

from __future__ import annotations

import os
import time

from dicomnode.pipelines import JobContext, Pipeline, PipelineOptions, ResultObject


class RecordOptions(PipelineOptions):
    """Where :class:`Record` writes, after how long."""

    log: str
    seconds: float = 0.0


class Record(Pipeline):
    """Appends ``job_id pid`` to the file named by option ``log`` after ``seconds``."""

    options_model = RecordOptions
    options: RecordOptions

    def run(self, context: JobContext) -> list[ResultObject]:
        deadline = time.monotonic() + self.options.seconds
        while time.monotonic() < deadline:
            context.check_cancelled()
            time.sleep(0.05)
        with open(self.options.log, "a") as log:
            log.write(f"{context.job_id} {os.getpid()}\n")
        return []
