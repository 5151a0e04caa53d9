"""The training loop every stage shares (after diffusers' training examples and nanoGPT).

One optimiser step = ``grad_accum`` micro-steps on each of the ``world_size`` ranks; each micro-step computes the
objective under autocast (bf16 on CPU or GPU, fp16 with gradient scaling on CUDA), divides the loss by
``grad_accum`` and back-propagates (DDP synchronises gradients on the last micro-step only). Then: gradient clipping,
AdamW, the warm-up + cosine schedule, EMA. Logs go to CSV/TensorBoard/tqdm every ``log_every`` steps; validation and
resumable checkpoints every ``val_every`` / ``save_every`` steps and at the end; the final networks (EMA weights when
on) are exported to ``OUT/model``.

``stop_at`` ends a run early after saving a checkpoint (time-sliced jobs; the resume test): ``--resume`` continues
it and reaches the same weights as an uninterrupted run, because the batch order and the per-sample randomness are
functions of the step (:mod:`mindvideo.train.data`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import torch
import torch.utils.data as tud

from mindvideo.config import read_json
from mindvideo.errors import MindVideoError
from mindvideo.fsutil import atomic_folder
from mindvideo.train import checkpointing as ckpt
from mindvideo.train.config import RUN_KEYS
from mindvideo.train.data import StepBatches, StepRandom, chunk_of
from mindvideo.train.distributed import barrier, mean_across_ranks, unwrap, wrap
from mindvideo.train.optim import EMA, build_optimizer, build_scheduler
from mindvideo.train.stages.base import Stage
from mindvideo.train.tracking import Tracker, progress

log = logging.getLogger(__name__)

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Trainer:
    """Runs one stage into an output folder. ``Trainer(stage, out, resume=…).fit()``."""

    def __init__(self, stage: Stage, out: str | Path, *, resume: bool = False):
        self.stage, self.out, self.info = stage, Path(out), stage.info
        self.cfg = stage.config.train
        # 1. everything that can be wrong is checked before the first byte is written
        self.resume_from = ckpt.check_out(self.out, resume, stage.name)
        if resume:
            _check_same_config(self.out, stage)
        if self.cfg.precision == "fp16" and self.info.device.type != "cuda":
            raise MindVideoError("expected a CUDA device for train.precision=fp16", "the CPU", "use bf16 or fp32")
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        torch.manual_seed(self.cfg.seed)
        objective = stage.build().to(self.info.device)
        objective.set_gradient_checkpointing(self.cfg.gradient_checkpointing)
        self.dataset = stage.dataset()
        _check_batch(self.cfg, len(self.dataset), self.info.world_size)
        # 2. distributed wrapping, optimiser, schedule, EMA
        self.model = wrap(objective, self.info, self.cfg.strategy, stage.shard_units(objective))
        self.objective = unwrap(self.model)
        self.optimizer = build_optimizer(self.model, self.cfg)
        self.scheduler = build_scheduler(self.optimizer, self.cfg)
        named = {n: p for n, p in self.objective.named_parameters() if p.requires_grad}
        self.ema = EMA(named, self.cfg.ema_decay) if self.cfg.ema_decay > 0 else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.cfg.precision == "fp16")
        self.step = 0

    @property
    def parts(self) -> dict[str, Any]:
        return {"model": self.model, "optimizer": self.optimizer, "scheduler": self.scheduler, "ema": self.ema}

    # ----------------------------------------------------------------------------------------------- the run

    def fit(self, stop_at: int | None = None) -> dict[str, Any]:
        """Train to ``train.steps`` (or ``stop_at``); returns the last logged and validation metrics."""
        if stop_at is not None and stop_at < 1:
            raise MindVideoError("expected --stop-at ≥ 1", str(stop_at), "pass the step to stop after")
        self.tic = time.perf_counter()
        self._start()
        tracker = Tracker(self.out, self.info.is_main)
        end = min(self.cfg.steps, stop_at) if stop_at is not None else self.cfg.steps
        bar = progress(self.cfg.steps, self.step, self.stage.name, self.info.is_main)
        last: dict[str, float] = {}
        try:
            batches = iter(self._loader(end))
            while self.step < end:
                tic = time.perf_counter()
                logs = self._train_step(batches)
                self.step += 1
                logs["samples_per_s"] = self.cfg.batch_size / (time.perf_counter() - tic)
                last = self._after_step(logs, tracker, bar)
            finished = self.step >= self.cfg.steps
            if self.cfg.save_every == 0 or self.step % self.cfg.save_every:
                self._save()
            if finished:
                last.update(self._validate(tracker))
                self._export()
        finally:
            bar.close()
            tracker.close()
        self._write_stage("finished" if self.step >= self.cfg.steps else "stopped", last)
        return last

    def _start(self) -> None:
        if self.resume_from is not None:
            state = ckpt.load_state(self.resume_from, self.parts, self.info)
            self.step = int(state["step"])
            log.info("resumed %s from %s at step %d", self.stage.name, self.resume_from, self.step)
        elif self.info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            self.stage.config.save(self.out / "config.json")
        if self.info.is_main:
            self._write_stage("running", {})
        barrier()

    def _loader(self, end: int) -> tud.DataLoader:
        sampler = StepBatches(
            len(self.dataset),
            self.cfg.batch_size,
            self.cfg.grad_accum,
            self.cfg.seed,
            self.step,
            end,
            self.info.rank,
            self.info.world_size,
        )
        return tud.DataLoader(
            self.dataset,
            batch_sampler=sampler,
            num_workers=self.cfg.num_workers,
            pin_memory=self.info.device.type == "cuda",
        )

    # ----------------------------------------------------------------------------------------------- one step

    def _train_step(self, batches) -> dict[str, float]:
        """``grad_accum`` micro-steps, then clip, step, schedule, EMA. Returns rank-averaged logs."""
        self.model.train()
        totals: dict[str, float] = {}
        for micro in range(self.cfg.grad_accum):
            batch = {k: v.to(self.info.device, non_blocking=True) for k, v in next(batches).items()}
            chunk = chunk_of(
                self.step, micro, self.cfg.batch_size, self.cfg.grad_accum, self.info.rank, self.info.world_size
            )
            rng = StepRandom(self.cfg.seed, chunk, self.info.device)
            last = micro == self.cfg.grad_accum - 1
            sync = contextlib.nullcontext() if last or not hasattr(self.model, "no_sync") else self.model.no_sync()
            with sync:
                with self._autocast():
                    loss, logs = self.model(batch, rng)
                self.scaler.scale(loss / self.cfg.grad_accum).backward()
            for key, value in {"loss": loss, **logs}.items():
                totals[key] = totals.get(key, 0.0) + float(value.detach()) / self.cfg.grad_accum
        totals["lr"] = self.scheduler.get_last_lr()[0]  # the rate this step uses
        totals["grad_norm"] = self._optimizer_step()
        return mean_across_ranks(totals, self.info.device)

    def _optimizer_step(self) -> float:
        self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.requires_grad]
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update()
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)

    def _autocast(self):
        dtype = AMP_DTYPES.get(self.cfg.precision)
        return torch.autocast(self.info.device.type, dtype=dtype, enabled=dtype is not None)

    def _after_step(self, logs: dict[str, float], tracker: Tracker, bar) -> dict[str, float]:
        bar.update(1)
        bar.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs['lr']:.2e}", sps=f"{logs['samples_per_s']:.1f}")
        if self.step % self.cfg.log_every == 0 or self.step == 1:
            tracker.log(self.step, "train", logs)
        if self.cfg.save_every and self.step % self.cfg.save_every == 0:
            self._save()
        if self.cfg.val_every and self.step % self.cfg.val_every == 0 and self.step < self.cfg.steps:
            logs = {**logs, **self._validate(tracker)}
        return logs

    # ----------------------------------------------------------------------------------------------- outputs

    def _save(self) -> None:
        trainer = {"stage": self.stage.name, "config": self.stage.config.to_dict()}
        ckpt.save_state(self.out, self.step, trainer, self.parts, self.info, self.cfg.keep_checkpoints)

    @torch.no_grad()
    def _validate(self, tracker: Tracker) -> dict[str, float]:
        self.model.eval()
        with self._ema_weights(), _unsharded(self.model), self._autocast():
            metrics = self.stage.validate(self.objective, self.step, self.out)
        tracker.log(self.step, "val", metrics)
        if metrics and self.info.is_main:
            log.info("%s step %d validation: %s", self.stage.name, self.step, _fmt(metrics))
        return {f"val_{k}": v for k, v in metrics.items()}

    def _export(self) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        with self._ema_weights():
            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            # cloned: on one CPU process the state dict aliases the parameters, which the EMA swap then restores
            state = {k: v.detach().clone() for k, v in get_model_state_dict(self.model, options=options).items()}
        if self.info.is_main:
            with atomic_folder(self.out / "model") as tmp:
                self.stage.export(state, tmp)
        barrier()

    def _ema_weights(self):
        return self.ema.applied() if self.ema is not None else contextlib.nullcontext()

    def _write_stage(self, status: str, metrics: dict[str, float]) -> None:
        if not self.info.is_main:
            return
        payload = {
            "stage": self.stage.name,
            "status": status,
            "step": self.step,
            "steps": self.cfg.steps,
            "data": str(self.stage.data),
            "inputs": self.stage.describe(),
            "world_size": self.info.world_size,
            "seconds": round(time.perf_counter() - self.tic, 1) if status != "running" else None,
            "metrics": metrics,
            "versions": ckpt.versions(),
        }
        ckpt.write_stage(self.out, payload)


# --------------------------------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _unsharded(model: torch.nn.Module):
    """FSDP2: gather the root's parameters so sub-networks can be called directly (validation)."""
    if not hasattr(model, "unshard"):
        yield
        return
    model.unshard()
    try:
        yield
    finally:
        model.reshard()


def _check_batch(cfg, n: int, world: int) -> None:
    parts = cfg.grad_accum * world
    if cfg.batch_size % parts:
        raise MindVideoError(
            f"expected train.batch_size divisible by grad_accum × processes = {cfg.grad_accum} × {world}",
            f"batch_size {cfg.batch_size}",
            "change train.batch_size or train.grad_accum",
        )
    if n < 1:
        raise MindVideoError("expected training samples", "an empty dataset", "check --data")


def _check_same_config(out: Path, stage: Stage) -> None:
    """Resuming with a different config would silently mix two runs; only the step count may change."""
    saved = read_json(out / "config.json")
    now = stage.config.to_dict()
    ignore = set(RUN_KEYS)
    diff = sorted(
        f"train.{k}"
        for k in now["train"]
        if k not in ignore and saved.get("train", {}).get(k) != _json(now["train"][k])
    )
    diff += sorted(k for k in now if k != "train" and saved.get(k) != _json(now[k]))
    if diff:
        raise MindVideoError(
            f"expected the config the run in {out} started with",
            f"different {diff[:5]}",
            f"resume with --config {out / 'config.json'} (only train.steps and logging may change)",
        )


def _json(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value))


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())


def train(stage: Stage, out: str | Path, *, resume: bool = False, stop_at: int | None = None) -> dict[str, Any]:
    """Run ``stage`` into ``out`` (see :class:`Trainer`)."""
    return Trainer(stage, out, resume=resume).fit(stop_at=stop_at)
