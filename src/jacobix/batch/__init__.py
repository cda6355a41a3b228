"""Batch generation: JSONL rows in, JSONL results out, on this process or on Ray
(:mod:`jacobix.integrations.ray`); the same output at any batch size or number of workers."""

from jacobix.batch.jobs import BadLine, BatchSpec, Job, ResultWriter, finished_ids, open_job, read_rows, row_seed
from jacobix.batch.rows import BatchGenerator, run_local

__all__ = ["BadLine", "BatchGenerator", "BatchSpec", "Job", "ResultWriter", "finished_ids", "open_job", "read_rows",
           "row_seed", "run_local"]
