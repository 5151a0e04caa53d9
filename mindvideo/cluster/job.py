"""A prepared split reconstructed on a Ray cluster: :func:`run_generate` (behind ``mindvideo generate --ray``) and
:func:`generate_on_ray` (the Python API).

1. the settings: one, or the product of ``--sweep`` lists (guidance, steps, seed), each with its own output and
   report (``recon.npy`` → ``recon.guidance7.5-seed1.npy``; ``--eval report`` → ``report/guidance7.5-seed1/``);
2. the workers: one model-holding actor per GPU or per ``cpus_per_worker`` CPUs; the first one settles what the
   model decides for each setting (:func:`mindvideo.cli.generation.finish_request`);
3. the shards (:mod:`mindvideo.cluster.shards`): one per batch of every setting, in one queue; finished ones on disk
   are reused, the others run, a progress bar counting shards across the cluster;
4. each setting's shards assembled in window order and written, and scored, by the very code of the single-process
   run (:func:`mindvideo.cli.generation.write_results`).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import time
from pathlib import Path
from typing import Any

from mindvideo.cli.generation import (
    GenerateOptions,
    GenerateRequest,
    batch_negative,
    batch_ranges,
    output_kind,
    resolve_request,
    write_results,
)
from mindvideo.cluster.shards import (
    ShardTask,
    array_digest,
    finished_shard,
    folder_fingerprint,
    open_work_folder,
    read_shards,
    settings_key,
    shard_path,
    update_manifest,
)
from mindvideo.errors import MindVideoError

log = logging.getLogger(__name__)

SWEEP_KEYS = {"guidance": float, "steps": int, "seed": int}


@dataclasses.dataclass
class SettingRun:
    """One setting of a job: its options (output paths included), its finished request, its shards, its rows."""

    tag: str
    opts: GenerateOptions
    request: GenerateRequest
    key: str = ""
    tasks: list[ShardTask] = dataclasses.field(default_factory=list)
    rows: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    @property
    def kind(self) -> str:
        return output_kind(self.opts.out)


# --------------------------------------------------------------------------------------------------- 1. settings


def parse_sweep(items: tuple[str, ...] | list[str]) -> list[dict[str, Any]]:
    """``("guidance=3,7.5", "seed=1,2")`` → the product as dicts, in order; ``[{}]`` without a sweep."""
    lists: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or key not in SWEEP_KEYS or key in lists:
            found = f"{item!r} (repeated)" if key in lists else repr(item)
            raise MindVideoError(
                f"expected --sweep KEY=V1,V2,... with KEY one of {', '.join(SWEEP_KEYS)}, each once", found,
                "e.g. --sweep guidance=3,7.5 --sweep seed=1,2",
            )  # fmt: skip
        try:
            lists[key] = [SWEEP_KEYS[key](v) for v in values.split(",") if v.strip()]
        except ValueError:
            raise MindVideoError(f"expected numbers in --sweep {key}=…", repr(values), "e.g. 3,7.5") from None
        if not lists[key]:
            raise MindVideoError(f"expected at least one value in --sweep {key}=…", "none", "e.g. 3,7.5")
    return [dict(zip(lists, combo)) for combo in itertools.product(*lists.values())]


def sweep_tag(values: dict[str, Any]) -> str:
    """``{"guidance": 7.5, "seed": 1}`` → ``"guidance7.5-seed1"`` (``""`` for no sweep)."""
    return "-".join(f"{k}{v:g}" if isinstance(v, float) else f"{k}{v}" for k, v in values.items())


def setting_options(opts: GenerateOptions, values: dict[str, Any]) -> tuple[str, GenerateOptions]:
    """The options of one sweep setting: its values, and its own output file and report folder."""
    tag = sweep_tag(values)
    if not tag:
        return tag, opts
    out = Path(opts.out)
    changes: dict[str, Any] = {"out": out.with_name(f"{out.stem}.{tag}{out.suffix}")}
    if opts.eval_out is not None:
        changes["eval_out"] = Path(opts.eval_out) / tag
    return tag, dataclasses.replace(opts, **values, **changes)


def check_report_folders(runs: list[SettingRun]) -> None:
    """A sweep's report folders, refused before any generation (as the single-process run checks its one)."""
    from mindvideo.eval.report import COMMAND as REPORT_COMMAND
    from mindvideo.fsutil import check_output_folder

    for run in runs:
        if run.tag and run.opts.eval_out is not None:
            check_output_folder(run.opts.eval_out, REPORT_COMMAND, overwrite=run.opts.overwrite)


def absolute_options(opts: GenerateOptions) -> GenerateOptions:
    """Paths made absolute: Ray workers do not run in the driver's current folder."""
    names = ("checkpoint", "engine", "data", "negative_fmri", "classifier", "video_classifier", "clip_model")
    return dataclasses.replace(
        opts, **{n: Path(os.path.abspath(getattr(opts, n))) for n in names if getattr(opts, n) is not None}
    )


def setting_key(run: SettingRun, threads: int) -> str:
    """The key of everything a setting's shards depend on (:func:`mindvideo.cluster.shards.settings_key`), the
    workers' torch threads included (CPU sums depend on them)."""
    from mindvideo import __version__

    opts, request = run.opts, run.request
    return settings_key({
        "cfg": dataclasses.asdict(request.cfg), "batch_size": request.batch_size, "output": output_kind(opts.out),
        "backend": opts.backend, "dtype": opts.dtype, "device": opts.device, "loop": opts.loop,
        "checkpoint": folder_fingerprint(opts.checkpoint), "engine": folder_fingerprint(opts.engine),
        "fmri": array_digest(request.fmri), "negative": array_digest(request.negative),
        "negative_source": request.negative_note.get("source"), "mindvideo": __version__, "threads": threads,
    })  # fmt: skip


def plan_shards(run: SettingRun, index: int, work: Path) -> list[ShardTask]:
    """One task per batch of the single-process run (same windows, negative, seed)."""
    fmri, request = run.request.fmri, run.request
    tasks = []
    for start, end in batch_ranges(len(fmri), request.batch_size):
        negative = batch_negative(request.negative, len(fmri), start, end)
        path = shard_path(work, run.key, start, end)
        tasks.append(ShardTask(index, run.key, start, end, fmri[start:end], negative, request.cfg, run.kind, path))
    return tasks


# --------------------------------------------------------------------------------------------------- 2.–4. the job


def run_generate(opts: GenerateOptions, request: GenerateRequest, progress: bool = True) -> list[SettingRun]:
    """Reconstruct ``request`` (resolved from ``opts``, which has ``ray`` set) on a Ray cluster, once per sweep
    setting; returns each setting with its table rows."""
    from mindvideo.cluster import ray_job

    opts = absolute_options(opts)
    runs = [SettingRun(*setting_options(opts, values), request) for values in parse_sweep(opts.sweep)]
    check_report_folders(runs)
    ray_job.check_address(opts.ray)  # before the work folder: an unreachable cluster leaves nothing behind
    work = open_work_folder(opts.ray_work or Path(f"{opts.out}.shards"))
    gpus = opts.ray_gpus_per_worker
    gpus = gpus if gpus is not None else (1.0 if str(opts.device).startswith("cuda") else 0.0)
    cpus = opts.ray_cpus_per_worker
    local_cpus = None if opts.ray_workers is None else max(1, int(-(-opts.ray_workers * cpus // 1)))
    start = time.perf_counter()
    with ray_job.ray_session(opts.ray, local_cpus) as ray:
        batches = len(batch_ranges(len(request.fmri), request.batch_size))
        workers = ray_job.start_workers(
            ray, opts, ray_job.worker_count(ray, opts.ray_workers, cpus, gpus, batches * len(runs)), cpus, gpus
        )
        for index, run in enumerate(runs):
            finish_setting(ray, workers[0], run, ray_job.worker_threads(cpus))
            run.tasks = plan_shards(run, index, work)
        update_manifest(work, {run.key: manifest_entry(run) for run in runs})
        reused = run_shards(ray, workers, [t for run in runs for t in run.tasks], progress)
    seconds = time.perf_counter() - start
    for run in runs:
        extra = {"ray": job_record(opts, run, work, len(workers), reused)}
        run.rows = write_results(read_shards(run.tasks), seconds, run.request, run.opts, extra)
    return runs


def finish_setting(ray, worker, run: SettingRun, threads: int) -> None:
    """The setting's request finished by a worker's model (without the ground truth, which stays here)."""
    from mindvideo.cluster.ray_job import call

    request = run.request
    if run.tag:  # the sweep's seed; its steps and guidance are settled from the options by finish_request
        request = dataclasses.replace(request, cfg=dataclasses.replace(request.cfg, seed=run.opts.seed))
    light = dataclasses.replace(request, truth=None, labels=None)
    finished = call(ray, worker.finish.remote(light, run.opts))
    run.request = dataclasses.replace(finished, truth=request.truth, labels=request.labels)
    run.key = setting_key(run, threads)


def run_shards(ray, workers, tasks: list[ShardTask], progress: bool) -> int:
    """The unfinished tasks on the workers, a progress bar counting shards; returns how many were reused."""
    from tqdm import tqdm

    from mindvideo.cluster.ray_job import run_tasks

    todo = [task for task in tasks if not finished_shard(task)]
    reused = len(tasks) - len(todo)
    if reused:
        log.info("reusing %d finished shards of %d", reused, len(tasks))
    with tqdm(total=len(tasks), initial=reused, desc="shards", unit="shard", disable=not progress) as bar:
        run_tasks(ray, workers, todo, lambda record: bar.update(1))
    return reused


def manifest_entry(run: SettingRun) -> dict[str, Any]:
    return {
        "sweep": run.tag or None,
        "settings": dataclasses.asdict(run.request.cfg),
        "batch_size": run.request.batch_size,
        "windows": len(run.request.fmri),
        "out": str(run.opts.out),
        "shards": [task.path.name for task in run.tasks],
    }


def job_record(opts: GenerateOptions, run: SettingRun, work: Path, workers: int, reused: int) -> dict[str, Any]:
    """What ``<out>.json`` records of the job: the cluster, the shards, the settings key."""
    from mindvideo.cluster.ray_job import worker_threads

    return {
        "address": opts.ray,
        "workers": workers,
        "cpus_per_worker": opts.ray_cpus_per_worker,
        "gpus_per_worker": opts.ray_gpus_per_worker,
        "threads_per_worker": worker_threads(opts.ray_cpus_per_worker),
        "work": str(work),
        "key": run.key,
        "sweep": run.tag or None,
        "shards": len(run.tasks),
        "shards_reused_in_job": reused,
    }


def generate_on_ray(
    out: str | Path, *, data: str | Path, address: str = "local", sweep: tuple[str, ...] | list[str] = (),
    workers: int | None = None, cpus_per_worker: float = 1.0, gpus_per_worker: float | None = None,
    work: str | Path | None = None, progress: bool = True, **options: Any,
) -> list[SettingRun]:  # fmt: skip
    """The Python API of ``mindvideo generate --data DATA --ray [ADDRESS]``: ``options`` are
    :class:`~mindvideo.cli.generation.GenerateOptions` fields (``checkpoint``, ``split``, ``steps``, ``eval_out`` …).
    Returns each sweep setting (its ``opts.out``, its finished ``request``, its shards and table rows)."""
    from mindvideo.cli.generation import check_options

    given = frozenset(["sweep"] if sweep else []) | frozenset(options)
    opts = GenerateOptions(
        out=Path(out), data=Path(data), ray=address, sweep=tuple(sweep), ray_workers=workers,
        ray_cpus_per_worker=cpus_per_worker, ray_gpus_per_worker=gpus_per_worker,
        ray_work=None if work is None else Path(work), given=given, **options,
    )  # fmt: skip
    check_options(opts)
    return run_generate(opts, resolve_request(opts), progress=progress)
