"""The Ray backend of batch generation: an actor pool of :class:`~jacobix.batch.BatchGenerator`.

Rows keep their outputs whatever actor or batch they land in (their sampling seed follows the
row id), so the results equal the local backend's, row for row, at any number of actors.
(A *backend* runs batch jobs; the *engine* is :mod:`jacobix.core.engine`, the sweep loop.)
"""

from __future__ import annotations


import inspect
import logging
import math
from types import ModuleType
from typing import Any, Callable, Mapping, Sequence

from jacobix.batch.jobs import BatchSpec, ResultWriter
from jacobix.batch.rows import BatchGenerator

INSTALL_HINT = "pip install 'jacobix[ray]'"


def require_ray() -> ModuleType:
    """The ``ray`` module with Ray Data loaded, or an ImportError that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Data is part of the extra)
    except ImportError as error:
        raise ImportError(f"the Ray backend needs Ray with Ray Data, which is not installed here: {INSTALL_HINT}") from error
    return ray


class RayBatchGenerator:
    """A callable class for ``Dataset.map_batches``: one model per actor, result rows out.

    Input columns: ``id`` and ``prompt`` (text) or ``label`` (images); output: a pyarrow table
    of the result rows of :meth:`jacobix.batch.BatchGenerator.generate_rows`.

    Example::

        ds = ray.data.read_json("prompts.jsonl")
        out = ds.map_batches(RayBatchGenerator, fn_constructor_kwargs={"spec": BatchSpec(decoding=Decoding(method="jacobi"))},
                             batch_size=8, num_cpus=1, compute=ray.data.ActorPoolStrategy(size=4))

    Args:
        spec: the job's settings.
        threads: torch CPU threads per actor (match ``num_cpus`` of ``map_batches``).
    """

    def __init__(self, spec: BatchSpec, threads: int = 1) -> None:
        self.generator = BatchGenerator(spec, threads=threads)

    def __call__(self, batch: Mapping[str, Sequence[Any]]):
        import pyarrow as pa

        names = list(batch)
        rows = [{name: _plain(value) for name, value in zip(names, values)} for values in zip(*batch.values())]
        return pa.Table.from_pylist(self.generator.generate_rows(rows))


def actor_pool(ray: ModuleType, actors: int) -> dict[str, Any]:
    """``map_batches`` keywords for a fixed pool of ``actors``: ``compute=ActorPoolStrategy(size=...)``
    where Ray has it (``concurrency=`` is deprecated in recent Ray), else ``concurrency=``."""
    strategy = getattr(ray.data, "ActorPoolStrategy", None)
    if strategy is not None and "compute" in inspect.signature(ray.data.Dataset.map_batches).parameters:
        try:
            return {"compute": strategy(size=actors)}
        except TypeError:  # Ray releases whose pool took min_size/max_size only
            return {"compute": strategy(min_size=actors, max_size=actors)}
    return {"concurrency": actors}


def check_resources(*, actors: int, address: str | None, num_cpus: int | None, cpus_per_actor: float = 1.0,
                    gpus_per_actor: float = 0.0) -> None:
    """Refuse resource requests Ray could never meet, before any work (see :func:`run_ray` for the arguments).

    Raises:
        ValueError: naming the option (``--actors``, ``--num-cpus``, ``--gpus-per-actor``).
    """
    def whole(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    if not whole(actors) or actors < 1:
        raise ValueError(f"--actors must be an integer >= 1, got {actors!r}")
    if num_cpus is not None and (not whole(num_cpus) or num_cpus < 1):
        raise ValueError(f"--num-cpus must be an integer >= 1, got {num_cpus!r}")
    for name, value in (("cpus-per-actor", cpus_per_actor), ("gpus-per-actor", gpus_per_actor)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
            raise ValueError(f"--{name} must be a finite number >= 0, got {value!r}")
    if address is None and num_cpus is not None and num_cpus < actors * cpus_per_actor:
        raise ValueError(f"a local cluster of {num_cpus} CPU(s) cannot hold {actors} actors of {cpus_per_actor} CPU(s) "
                         f"each; give --num-cpus {-int(-actors * cpus_per_actor // 1)} or fewer --actors")


def run_ray(spec: BatchSpec, rows: Sequence[dict], writer: ResultWriter, *, actors: int = 2, address: str | None = None,
            num_cpus: int | None = None, cpus_per_actor: float = 1.0, gpus_per_actor: float = 0.0, progress: bool = False,
            on_row: Callable[[int], None] | None = None) -> int:
    """Generate ``rows`` on Ray Data with ``actors`` model actors, writing each result as it arrives.

    Connects to ``address`` (e.g. "auto" or "ray://host:10001"); without one, and with no Ray
    session in this process, starts a local cluster of ``num_cpus`` CPUs (default: ``actors *
    cpus_per_actor``, rounded up) and shuts it down at the end. Results come in input order.

    Args:
        spec: the job settings (``spec.batch_size`` rows per ``map_batches`` call).
        rows: input rows (from :func:`~jacobix.batch.jobs.open_job`).
        writer: an open :class:`~jacobix.batch.jobs.ResultWriter`.
        actors: model actors (each holds one model).
        address: a running cluster to use.
        num_cpus: CPUs of a local cluster.
        cpus_per_actor: CPUs Ray reserves for each actor.
        gpus_per_actor: GPUs Ray reserves for each actor (with ``spec.device="cuda"``).
        progress: Ray Data's progress bars.
        on_row: called with the number of rows written so far after each row.
    Returns:
        rows written.
    """
    check_resources(actors=actors, address=address, num_cpus=num_cpus, cpus_per_actor=cpus_per_actor,
                    gpus_per_actor=gpus_per_actor)
    if not rows:
        return 0
    ray = require_ray()
    started = not ray.is_initialized()
    if started:
        cpus = None if address else (num_cpus or max(1, -int(-actors * cpus_per_actor // 1)))
        _init(ray, address, cpus)
    try:
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # its INFO lines (plans, timings) are Ray's own
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = progress
        field = "label" if spec.images else "prompt"
        original = {str(row["id"]): row["id"] for row in rows}
        dataset = ray.data.from_items([{"id": str(row["id"]), field: row[field]} for row in rows])
        results = dataset.map_batches(RayBatchGenerator, fn_constructor_kwargs={"spec": spec}, batch_size=spec.batch_size,
                                      num_cpus=cpus_per_actor, **({"num_gpus": gpus_per_actor} if gpus_per_actor else {}),
                                      **actor_pool(ray, actors))
        written = 0
        for result in results.iter_rows():
            row = {name: _plain(value) for name, value in dict(result).items()}
            row["id"] = original[row["id"]]
            writer.write(row)
            written += 1
            if on_row is not None:
                on_row(written)
        return written
    finally:
        if started:
            ray.shutdown()


def _init(ray: ModuleType, address: str | None, cpus: int | None) -> None:
    """``ray.init``; a cluster that wants a token we do not have is reported with the fix."""
    refused = getattr(ray.exceptions, "AuthenticationError", None)
    try:
        ray.init(address=address, num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)  # Ray's INFO lines (cluster started, plans) are not the user's concern
    except Exception as error:
        if refused is None or not isinstance(error, refused):
            raise
        raise ValueError(f"the Ray cluster at {address} uses token authentication and refused this process: give it "
                         "the cluster's token (RAY_AUTH_TOKEN=... or the file ~/.ray/auth_token)") from error


def _plain(value: Any) -> Any:
    """Numpy scalars and arrays (as Ray hands them over) to plain Python values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


__all__ = ["INSTALL_HINT", "RayBatchGenerator", "actor_pool", "check_resources", "require_ray", "run_ray"]
