"""Ray underneath a batch reconstruction: the connection, the model-holding workers and the shard queue.

Only this module imports Ray, and only inside its functions: ``mindvideo generate`` without ``--ray`` never loads
it.

A local cluster (``--ray`` without an address) stays on this machine and stays quiet: before Ray is imported the
process sets ``RAY_USAGE_STATS_ENABLED=0`` (Ray's usage statistics, otherwise reported to an outside server, are off;
the variable is inherited by every Ray process started from here) and ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (without
it Ray replaces a node address of 127.0.0.1 by the machine's network address); the node is started with
``_node_ip_address="127.0.0.1"``, for which Ray's GCS server, raylet, workers and runtime-env agent listen on
127.0.0.1 only, without the dashboard, and without forwarding the workers' logs to this terminal.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from mindvideo.errors import MindVideoError

log = logging.getLogger(__name__)

LOCAL = "local"  # --ray without an address
QUIET_ENV = {"RAY_USAGE_STATS_ENABLED": "0"}
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # keep 127.0.0.1 as the node address
RETRIES = 3  # restarts of a dead worker, and retries of the shard it was running


# --------------------------------------------------------------------------------------------------- connection


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """A ``host:port`` or ``ray://host:port`` address must answer a TCP connection within ``timeout`` seconds (Ray
    itself would retry for a long time)."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise MindVideoError(
            "expected --ray ADDRESS as HOST:PORT (a head started with `ray start --head`), ray://HOST:PORT or auto",
            repr(address),
            "pass the address `ray start --head` printed, or --ray alone for a local cluster",
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise MindVideoError(
            f"expected a Ray cluster answering at {address}",
            f"no answer ({exc.strerror or type(exc).__name__})",
            "start the head with `ray start --head` and pass its address, or --ray alone for a local cluster",
        ) from None


def check_address(address: str) -> None:
    """A cluster address other than ``local`` and ``auto`` must answer (:func:`check_reachable`)."""
    if address not in (LOCAL, "auto"):
        check_reachable(address)


@contextlib.contextmanager
def ray_session(address: str, local_cpus: int | None = None) -> Iterator[Any]:
    """Ray, connected to ``address`` (``"local"``: a new single-node cluster on 127.0.0.1 with ``local_cpus`` CPUs,
    shut down on exit). A session already initialised in this process is used as it is. Yields the ``ray`` module."""
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)
    if address == LOCAL:
        os.environ.update(LOOPBACK_ENV)
    check_address(address)
    try:
        import ray
    except ImportError:
        raise MindVideoError(
            "expected Ray installed for --ray", "no module named ray", 'pip install -e ".[ray]" (or pip install ray)'
        ) from None
    if ray.is_initialized():
        yield ray
        return
    settings: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
    if address == LOCAL:
        settings.update(address="local", num_cpus=local_cpus, include_dashboard=False, _node_ip_address="127.0.0.1")
    else:
        settings.update(address=address)
    try:
        ray.init(**settings)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise MindVideoError(
            f"expected a Ray cluster at {address}", f"{type(exc).__name__}: {str(exc).splitlines()[0]}",
            "start one with `ray start --head`, or pass --ray alone for a local cluster",
        ) from None  # fmt: skip
    try:
        yield ray
    finally:
        ray.shutdown()


def worker_count(ray, requested: int | None, cpus: float, gpus: float, tasks: int) -> int:
    """``requested``, or as many workers as the cluster's GPUs (``gpus`` > 0) or CPUs hold, at most one per task."""
    if requested is not None:
        return max(1, min(requested, tasks))
    resources = ray.cluster_resources()
    count = int(resources.get("GPU", 0) // gpus) if gpus > 0 else int(resources.get("CPU", 1) // max(cpus, 1e-3))
    if count < 1:
        kind, have = ("GPU", resources.get("GPU", 0)) if gpus > 0 else ("CPU", resources.get("CPU", 0))
        raise MindVideoError(
            f"expected a Ray cluster with at least {gpus if gpus > 0 else cpus} {kind} for one worker",
            f"{have} {kind}", "add nodes, or lower --ray-gpus-per-worker / --ray-cpus-per-worker",
        )  # fmt: skip
    return max(1, min(count, tasks))


# --------------------------------------------------------------------------------------------------- workers


class ShardWorker:
    """A Ray actor holding one model (loaded on first use, so a restarted worker reloads it) and running shards."""

    def __init__(self, opts, threads: int) -> None:
        self.opts, self.threads, self.model = opts, threads, None

    def _model(self):
        if self.model is None:
            import torch

            from mindvideo.cli.generation import load_model

            torch.set_num_threads(self.threads)  # CPU sums depend on the thread count: fixed, and part of the key
            self.model = load_model(self.opts)
        return self.model

    def pid(self) -> int:
        return os.getpid()

    def finish(self, request, opts):
        """:func:`mindvideo.cli.generation.finish_request` with this worker's model (settings the model decides)."""
        from mindvideo.cli.generation import finish_request

        return finish_request(self._model(), request, opts)

    def run(self, task) -> dict[str, Any]:
        """One shard: the single-process run's call over ``task``'s windows, written to ``task.path``. A shard already
        on disk is not computed again (Ray retries the task of a worker killed after writing, before returning)."""
        from mindvideo.cli.generation import generate_batches
        from mindvideo.cluster.shards import finished_shard, read_record, write_shard

        if finished_shard(task):
            return read_record(task.path)
        start = time.perf_counter()
        video = generate_batches(self._model(), task.fmri, task.negative, task.cfg, 0, task.output)
        info = {"seconds": round(time.perf_counter() - start, 4), "pid": os.getpid(), "host": socket.gethostname()}
        return write_shard(task, video, info)


def worker_threads(cpus: float) -> int:
    """Torch threads of a worker reserving ``cpus`` CPUs (at least one)."""
    return max(1, int(cpus))


def start_workers(ray, opts, count: int, cpus: float, gpus: float) -> list[Any]:
    """``count`` :class:`ShardWorker` actors, each reserving ``cpus`` CPUs and ``gpus`` GPUs; a worker that dies is
    restarted and its shard retried (:data:`RETRIES` times)."""
    actor = ray.remote(ShardWorker).options(
        num_cpus=cpus, num_gpus=gpus, max_restarts=RETRIES, max_task_retries=RETRIES
    )
    return [actor.remote(opts, worker_threads(cpus)) for _ in range(count)]


def call(ray, ref):
    """``ray.get(ref)``, with a user error raised inside a worker re-raised here as itself (one line for the CLI)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, MindVideoError):
            raise MindVideoError(cause.what, cause.found, cause.fix) from None
        raise


def run_tasks(ray, workers: list[Any], tasks: list[Any], done: Callable[[dict[str, Any]], None]) -> None:
    """Every task on the workers, one at a time each, ``done(record)`` as each finishes. A worker lost for good
    (beyond Ray's restarts) hands its shard to the others."""
    queue, running, idle = deque(tasks), {}, list(workers)
    while queue or running:
        while idle and queue:
            worker, task = idle.pop(), queue.popleft()
            running[worker.run.remote(task)] = (worker, task)
        if not running:
            raise MindVideoError(
                "expected at least one live Ray worker", "every worker died", "check the workers' logs (ray logs)"
            )
        (ref,), _ = ray.wait(list(running), num_returns=1)
        worker, task = running.pop(ref)
        try:
            record = call(ray, ref)
        except ray.exceptions.RayActorError as exc:
            log.warning("a Ray worker was lost (%s); its shard %s goes to another", type(exc).__name__, task.path.name)
            queue.appendleft(task)
            continue
        done(record)
        idle.append(worker)
