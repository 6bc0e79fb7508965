"""Run independent work units on local processes or a Ray cluster.

Builders hand over a picklable function and its unit arguments and get results
back as units finish, so the driver alone writes (and commits) every result.
Only ``2 × workers`` units are in flight at once, which keeps memory bounded
however many units there are. `ray_session` is the one place Ray is started or joined
(``seminft-bench run --executor ray`` goes through it too).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from itertools import islice
from types import ModuleType
from typing import Any

EXECUTORS = ("local", "ray")
# Each worker is one core: without this, every worker's numba/BLAS/OpenMP pool would
# start a thread per core and the workers would fight over the machine.
SINGLE_THREAD_ENV = {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run_units(
    fn: Callable[..., Any],
    units: Iterable[Any],
    *,
    workers: int = 1,
    executor: str = "local",
    ray_address: str | None = None,
    shared: tuple = (),
) -> Iterator[Any]:
    """Yield ``fn(unit, *shared)`` for every unit, in completion order.

    ``workers=1`` with the local executor runs in this process (no start-up
    cost, easy debugging). ``executor="ray"`` connects to ``ray_address`` (or
    starts a local Ray with ``workers`` CPUs) and runs one task per unit.
    """
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if executor == "ray":
        yield from _run_ray(fn, units, workers, ray_address, shared)
    elif workers == 1:
        yield from (fn(unit, *shared) for unit in units)
    else:
        yield from _run_processes(fn, units, workers, shared)


def _run_processes(fn: Callable[..., Any], units: Iterable[Any], workers: int, shared: tuple) -> Iterator[Any]:
    # "spawn": video decoders and BLAS keep threads that do not survive a fork.
    context = multiprocessing.get_context("spawn")
    todo = iter(units)
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_single_threaded) as pool:
        pending: set[Future] = {pool.submit(fn, unit, *shared) for unit in islice(todo, 2 * workers)}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
                pending |= {pool.submit(fn, unit, *shared) for unit in islice(todo, 1)}


def _single_threaded() -> None:
    os.environ.update(SINGLE_THREAD_ENV)


def _run_ray(
    fn: Callable[..., Any], units: Iterable[Any], workers: int, address: str | None, shared: tuple
) -> Iterator[Any]:
    with ray_session(address, num_cpus=workers) as ray:
        task = ray.remote(num_cpus=1)(fn)
        shared_refs = [ray.put(value) for value in shared]
        todo = iter(units)
        pending = [task.remote(unit, *shared_refs) for unit in islice(todo, 2 * workers)]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
            pending += [task.remote(unit, *shared_refs) for unit in islice(todo, 1)]


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None) -> Iterator[ModuleType]:
    """The ``ray`` module, connected for the block: to the cluster at ``address``, else to a local instance
    started here with ``num_cpus`` CPUs and ``num_gpus`` GPUs (None: what the machine has), each worker one
    thread. A Ray this process is already connected to is used as it is and left running."""
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                include_dashboard=False,
                log_to_driver=False,
                runtime_env={"env_vars": SINGLE_THREAD_ENV},
            )
    try:
        yield ray
    finally:
        if started_here:
            ray.shutdown()
