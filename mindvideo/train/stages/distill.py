"""Stage 5 — the few-step student, distilled from a trained video model (``mindvideo train distill``).

``--mode guidance`` (Meng et al. CVPR 2023, stage one): the student starts as the teacher's UNet plus a
zero-initialised guidance embedding (:meth:`VideoUNet.student_of`) and learns, in one pass with only the positive
condition, the teacher's guided prediction ``ε_neg + g·(ε_pos − ε_neg)`` for g ~ U(``guidance_range``). The negative
condition is MinD-Video's: the mean training window (the data transform's ``negative_fmri``) through the teacher's
encoder. The result samples with DDIM / DPM-Solver / Euler at half the UNet cost per step.

``--mode consistency`` (Luo et al. 2023, Latent Consistency Distillation, Algorithm 1): from a guidance student
(single-pass teacher) or directly from the teacher (two passes); a skipping-step DDIM solver on the guided teacher
goes from ``t_{n+k}`` to ``t_n`` (k = 1000 / ``ddim_steps``), and the online student at ``t_{n+k}`` is pulled towards
an EMA target at ``t_n`` (pseudo-Huber or MSE between ``c_skip·x + c_out·x̂₀``). The result samples with LCM in ~4
steps.

The fMRI encoder is frozen (its conditions are computed once); every UNet layer, temporal ones included, trains.
The output is a complete checkpoint folder whose ``unet/config.json`` names ``guidance_range`` and ``schedulers``;
the encoder, VAE, scheduler and data transform are the teacher's.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils.data as tud

from mindvideo.checkpoint import load_components, save_component
from mindvideo.errors import MindVideoError
from mindvideo.models import FMRIEncoder, VideoUNet
from mindvideo.pipeline import load_transform
from mindvideo.sampling import guided_sample, initial_noise, make_scheduler
from mindvideo.train import diffusion as dm
from mindvideo.train import distillation as dl
from mindvideo.train.checkpointing import read_stage
from mindvideo.train.config import StageConfig, TrainConfig, check_all
from mindvideo.train.data import ArrayDataset, StepRandom, load_split, single_chunk
from mindvideo.train.stages.base import Objective, Stage, substate
from mindvideo.train.stages.cotrain import _transform
from mindvideo.train.tracking import write_grid

log = logging.getLogger(__name__)

MODES = ("guidance", "consistency")
LOSSES = ("huber", "mse")
GUIDANCE_SCHEDULERS = ("ddim", "dpm", "euler")  # what a guidance student samples with; a consistency one: LCM


@dataclasses.dataclass
class DistillValidation:
    """Validation samples: the teacher (guided DDIM, ``steps``) next to the student (``steps`` DDIM steps for a
    guidance student, ``student_steps`` LCM steps for a consistency student), both at scale ``guidance``."""

    clips: int = 4
    steps: int = 25
    guidance: float = 5.0
    student_steps: int = 4


@dataclasses.dataclass
class DistillConfig(StageConfig):
    """``teacher``: a trained video model — a cotrain (or, for ``consistency``, a guidance distill) output or its
    checkpoint folder. ``guidance_range``: the g the student learns (uniform). Consistency only: ``ddim_steps`` (N
    of the solver grid, skip k = 1000 / N), ``target_decay`` (μ of the EMA target), ``loss`` and ``huber_c``."""

    stage = "distill"
    mode: str = "guidance"
    teacher: str | None = None
    guidance_range: tuple[float, float] = (1.0, 8.0)
    trainable: tuple[str, ...] = ("all",)
    train_frames: int = 0  # > 0: train on random runs of this many consecutive frames
    ddim_steps: int = 50
    target_decay: float = 0.95
    loss: str = "huber"
    huber_c: float = 0.001
    validation: DistillValidation = dataclasses.field(default_factory=DistillValidation)

    def validate(self) -> None:
        super().validate()
        low, high = self.guidance_range
        v = self.validation
        check_all(
            [
                (self.mode in MODES, f"mode among {MODES}", self.mode),
                (bool(self.teacher), "teacher (a cotrain output or a trained checkpoint folder)", self.teacher),
                (0 < low <= high, "guidance_range (low, high) with 0 < low ≤ high", self.guidance_range),
                (bool(self.trainable), "trainable layer groups", self.trainable),
                (self.train_frames >= 0, "train_frames ≥ 0", self.train_frames),
                (
                    1 <= self.ddim_steps <= 1000 and 1000 % self.ddim_steps == 0,
                    "ddim_steps dividing 1000",
                    self.ddim_steps,
                ),
                (0 <= self.target_decay < 1, "target_decay in [0, 1)", self.target_decay),
                (
                    self.loss in LOSSES and self.huber_c > 0,
                    f"loss among {LOSSES}, huber_c > 0",
                    (self.loss, self.huber_c),
                ),
                (min(v.clips, v.steps, v.student_steps) >= 1, "validation clips/steps/student_steps ≥ 1", v),
            ]
        )

    @classmethod
    def tiny(cls) -> DistillConfig:
        train = TrainConfig(steps=3, batch_size=2, lr=1e-3, log_every=1)
        return cls(train=train, validation=DistillValidation(1, 2, 3.0, 2))

    @classmethod
    def demo(cls) -> DistillConfig:
        """The demo model's student (both modes): g in (1, 8) around the demo's guidance 5, runs of 3 frames like
        cotrain; 450 steps per mode (~3.5 min each on one CPU thread). The demo recipe runs the consistency mode
        for 1350 steps (``mindvideo.train.recipe.PRESET_STEPS``)."""
        train = TrainConfig(
            steps=450,
            batch_size=16,
            lr=4e-4,
            warmup_steps=20,
            weight_decay=0.0,
            min_lr_ratio=0.1,
            threads=1,
            save_every=150,
        )
        return cls(train=train, train_frames=3, validation=DistillValidation(8, 25, 5.0, 4))

    @classmethod
    def reference(cls) -> DistillConfig:
        """SD-1.5 scale: g in (2, 14) (LCM's range, covering MinD-Video's 12.5), LCM's μ = 0.95, N = 50, Huber."""
        train = TrainConfig(
            steps=4000,
            batch_size=16,
            lr=8e-6,
            warmup_steps=100,
            weight_decay=0.0,
            precision="bf16",
            gradient_checkpointing=True,
            val_every=1000,
            save_every=500,
        )
        return cls(train=train, guidance_range=(2.0, 14.0), validation=DistillValidation(4, 50, 12.5, 4))


class DistillObjective(Objective):
    """The student (trained), its EMA target (consistency mode; in the state dict so a run resumes exactly) and the
    frozen teacher (kept out of the state dict and of DDP: it is reloaded from ``teacher``)."""

    evolving_state = ("target.", "target_step")

    def __init__(
        self,
        student: VideoUNet,
        teacher: VideoUNet,
        negative: torch.Tensor,
        cfg: DistillConfig,
        scaling: float,
        scheduler_config: dict[str, Any],
    ):
        super().__init__()
        self.student, self.cfg, self.scaling = student, cfg, scaling
        object.__setattr__(self, "teacher", teacher.requires_grad_(False).eval())  # not a registered submodule
        self.noise_scheduler = dm.noise_scheduler()
        self.lcm = make_scheduler(scheduler_config, "lcm")
        self.register_buffer("negative", negative, persistent=False)  # (1, L, D): the encoded mean window
        k = self.noise_scheduler.config.num_train_timesteps // cfg.ddim_steps
        self.register_buffer("grid", dl.skip_timesteps(k * cfg.ddim_steps, cfg.ddim_steps), persistent=False)
        self.k = k
        if cfg.mode == "consistency":
            self.target = copy.deepcopy(student).requires_grad_(False)
            self.register_buffer("target_step", torch.tensor(-1))  # the last optimiser step folded into the target

    def forward(self, batch: dict[str, torch.Tensor], rng: StepRandom) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.cfg.mode == "consistency":
            self.update_target(rng.chunk.step)
        return self.loss(batch, rng), {}

    def loss(self, batch: dict[str, torch.Tensor], rng: StepRandom) -> torch.Tensor:
        latents = dm.sample_latents(batch, rng, self.scaling, self.cfg.train_frames)
        cond, (low, high) = batch["cond"], self.cfg.guidance_range
        g = low + (high - low) * rng.rand("guidance")  # (b,)
        noise = rng.randn("noise", *latents.shape[1:])
        if self.cfg.mode == "guidance":
            t = rng.randint("timestep", self.noise_scheduler.config.num_train_timesteps)
            x = self.noise_scheduler.add_noise(latents, noise, t)
            with torch.no_grad():
                target = dl.guided_eps(self.teacher, x, t, cond, self.negative, g)
            return torch.nn.functional.mse_loss(self.student(x, t, cond, guidance=g).float(), target)
        return self._consistency_loss(latents, noise, cond, g, rng)

    def _consistency_loss(self, latents, noise, cond, g, rng: StepRandom) -> torch.Tensor:
        """LCM Algorithm 1: x_{t_{n+k}} from the data, Ψ (guided DDIM) to t_n, online vs target consistency output."""
        t = self.grid[rng.randint("timestep", len(self.grid))]  # t_{n+k}, (b,)
        s = t - self.k  # t_n; −1 below the lowest grid point, where f(x, 0) = x
        x = self.noise_scheduler.add_noise(latents, noise, t)
        pred = dl.consistency_output(self.lcm, x, self.student(x, t, cond, guidance=g), t)
        with torch.no_grad():
            eps = dl.guided_eps(self.teacher, x, t, cond, self.negative, g)
            x_prev = dl.ddim_step(self.lcm.alphas_cumprod, x, eps, t, s).to(x.dtype)
            eps_target = self.target(x_prev, s.clamp(min=0), cond, guidance=g)
            target = dl.consistency_output(self.lcm, x_prev, eps_target, s)
        return dl.consistency_loss(pred, target, self.cfg.loss, self.cfg.huber_c)

    @torch.no_grad()
    def update_target(self, step: int) -> None:
        """θ⁻ ← μθ⁻ + (1 − μ)θ once per optimiser step, before its loss (= after the previous step's update, as in
        Algorithm 1); a no-op at step 0, where both are the initial student."""
        if step <= int(self.target_step):
            return
        for target, online in zip(self.target.parameters(), self.student.parameters()):
            target.lerp_(online.detach().to(target.dtype), 1.0 - self.cfg.target_decay)
        self.target_step.fill_(step)


class DistillStage(Stage):
    name = "distill"
    config_class = DistillConfig
    summary = "Distil a few-step student from a trained video model: --mode guidance, then --mode consistency."

    def build(self) -> DistillObjective:
        cfg: DistillConfig = self.config
        self.teacher_root = teacher_checkpoint(cfg.teacher)
        parts = load_components(self.teacher_root)
        teacher, encoder = parts["unet"].to(self.device), parts["fmri_encoder"].to(self.device).eval()
        check_teacher(teacher, cfg, self.teacher_root)
        self.scheduler_config = parts["scheduler_config"]
        check_epsilon(self.scheduler_config, self.teacher_root)
        self.vae = parts["vae"].requires_grad_(False).eval().to(self.device)
        train = load_split(self.data, "train", video=True)
        check_encoder(encoder, train.fmri.shape[1:], self.teacher_root)
        self.transform = load_transform(self.teacher_root)
        if self.transform is None:
            self.transform = _transform(self.data)
        # 1. cache latents and the frozen encoder's conditions; the negative: the encoded mean training window
        mean, std = dm.encode_videos(self.vae, train.video, self.device)
        cond = encode_windows(encoder, np.asarray(train.fmri, np.float32), self.device)
        self.train_set = ArrayDataset({"cond": cond, "latent_mean": mean, "latent_std": std})
        negative = encode_windows(encoder, self.transform.negative_fmri[None], self.device)
        # 2. the student: the guidance student itself, or the teacher plus a zero-output guidance embedding
        changes = {"guidance_range": tuple(cfg.guidance_range), "schedulers": student_schedulers(cfg.mode)}
        if teacher.config.guidance_embedding:
            student = VideoUNet(teacher.config.replace(**changes)).to(self.device)
            student.load_state_dict(teacher.state_dict())
        else:
            student = VideoUNet.student_of(teacher, **changes)
        self.trainable = dm.select_trainable(student, (*cfg.trainable, "guidance_embedding."))
        self.student_config = student.config
        # 3. validation clips (every other test window, as the other video stages)
        test = load_split(self.data, "test", video=True)
        index = np.arange(0, len(test), 2)[: cfg.validation.clips]
        self.val_video = np.asarray(test.video[index])
        val_mean, val_std = dm.encode_videos(self.vae, self.val_video, self.device)
        val_cond = encode_windows(encoder, np.asarray(test.fmri[index], np.float32), self.device)
        self.val_batch = {k: torch.from_numpy(v) for k, v in (("cond", val_cond), ("latent_mean", val_mean))}
        self.val_batch["latent_std"] = torch.from_numpy(val_std)
        self.teacher_samples: torch.Tensor | None = None
        return DistillObjective(
            student, teacher, torch.from_numpy(negative), cfg, dm.vae_scaling(self.vae), self.scheduler_config
        )

    def dataset(self) -> tud.Dataset:
        return self.train_set

    @torch.no_grad()
    def heldout_loss(self, objective: DistillObjective) -> float:
        """The distillation loss on the validation clips with fixed noise, timesteps and g (no target update)."""
        batch = {k: v.to(self.device) for k, v in self.val_batch.items()}
        rng = StepRandom(self.config.train.seed, single_chunk(len(batch["cond"]), step=-1), self.device)
        return float(objective.loss(batch, rng))

    def validate(self, objective: DistillObjective, step: int, out: Path) -> dict[str, float]:
        """Held-out distillation loss; the student's samples against the teacher's (latent MSE) and, on rank 0, a
        GIF grid ground truth | teacher | student."""
        v, cond = self.config.validation, self.val_batch["cond"].to(self.device)
        shape = (len(cond), *self.val_batch["latent_mean"].shape[1:])
        if self.teacher_samples is None:
            self.teacher_samples = self.sample(objective.teacher, objective.negative, cond, shape, "ddim", v.steps)
        kind, steps = ("lcm", v.student_steps) if self.config.mode == "consistency" else ("ddim", v.steps)
        student = self.sample(objective.student, None, cond, shape, kind, steps)
        metrics = {
            "distill_loss": self.heldout_loss(objective),
            "sample_mse_to_teacher": float((student.float() - self.teacher_samples.float()).pow(2).mean()),
        }
        if self.info.is_main:
            teacher_video, student_video = (
                dm.decode_latents(self.vae, x.float()) for x in (self.teacher_samples, student)
            )
            rows = [list(r) for r in zip(self.val_video, teacher_video, student_video)]
            write_grid(out / "samples" / f"{self.name}-{self.config.mode}-step{step:07d}.gif", rows, fps=2.0)
        return metrics

    def sample(self, unet: VideoUNet, negative, cond, shape, kind: str, steps: int) -> torch.Tensor:
        """Latents from ``unet`` at the validation scale: two passes for a teacher, one for a student."""
        g, student = self.config.validation.guidance, bool(unet.config.guidance_embedding)
        scheduler = make_scheduler(self.scheduler_config, kind)
        latents, generator = initial_noise(shape, self.config.train.seed, float(scheduler.init_noise_sigma))
        stacked = cond if student or g <= 1 else torch.cat([negative.expand_as(cond), cond])
        return guided_sample(
            unet, scheduler, latents.to(cond.device), stacked, g, steps, generator=generator, single_pass=student
        )

    def export(self, state: dict[str, torch.Tensor], folder: Path) -> None:
        """The student's UNet with the teacher's encoder, VAE, scheduler and data transform; verified by loading."""
        unet = VideoUNet(self.student_config)
        unet.load_state_dict(substate(state, "student"))
        save_component(unet, folder / "unet")
        for part in ("fmri_encoder", "vae"):
            shutil.copytree(self.teacher_root / part, folder / part)
        (folder / "scheduler").mkdir()
        scheduler = {**self.scheduler_config}
        if self.config.mode == "consistency":  # the solver grid LCM's sampler must draw its timesteps from
            scheduler["original_inference_steps"] = self.config.ddim_steps
        (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2) + "\n")
        self.transform.save(folder / "data_transform")
        load_components(folder)

    def describe(self) -> dict[str, Any]:
        return {
            "teacher": str(self.teacher_root),
            "teacher_passes": 1 if self.teacher_is_student else 2,
            "windows": len(self.train_set),
            "trainable_unet": self.trainable,
        }

    @property
    def teacher_is_student(self) -> bool:
        return bool(json.loads((self.teacher_root / "unet" / "config.json").read_text()).get("guidance_embedding"))


# --------------------------------------------------------------------------------------------------- inputs


def student_schedulers(mode: str) -> tuple[str, ...]:
    return ("lcm",) if mode == "consistency" else GUIDANCE_SCHEDULERS


def teacher_checkpoint(path: str) -> Path:
    """The checkpoint folder of ``teacher``: a finished cotrain/distill output (→ ``model/``) or a checkpoint root
    with ``fmri_encoder/`` and ``unet/``."""
    root = Path(path)
    if not root.is_dir():
        raise MindVideoError(f"expected the teacher checkpoint at {root}", "no such folder", "check teacher=…")
    stage = read_stage(root)
    if stage is not None:
        if stage.get("stage") not in ("cotrain", "distill") or stage.get("status") != "finished":
            raise MindVideoError(
                "expected teacher to be a finished cotrain (or distill) output or a trained checkpoint folder",
                f"a {stage.get('status')} output of stage {stage.get('stage')!r} at {root}",
                "pass the cotrain output folder (or its model/ folder)",
            )
        root = root / "model"
    missing = [c for c in ("fmri_encoder", "unet") if not (root / c / "config.json").is_file()]
    if missing:
        raise MindVideoError(
            f"expected a trained video model (fmri_encoder/ and unet/ folders) as the teacher at {root}",
            f"{missing} missing",
            "pass the cotrain output folder (or its model/ folder)",
        )
    return root


def check_teacher(teacher: VideoUNet, cfg: DistillConfig, root: Path) -> None:
    """Guidance mode needs a plain teacher; consistency mode a teacher or a guidance student whose g range covers
    the one asked for (a consistency student is not an ε-predictor of the ODE any more)."""
    tc = teacher.config
    if cfg.mode == "guidance" and tc.guidance_embedding:
        raise MindVideoError(
            "expected a teacher that is not a distilled student for --mode guidance",
            f"a student UNet (guidance_embedding on, schedulers {tc.schedulers}) in {root / 'unet'}",
            "distil from the cotrain checkpoint, or use this student as the teacher of --mode consistency",
        )
    if cfg.mode == "consistency" and tc.schedulers is not None and "lcm" in tc.schedulers:
        raise MindVideoError(
            "expected a teacher or a guidance student for --mode consistency",
            f"a consistency student (schedulers {list(tc.schedulers)}) in {root / 'unet'}",
            "distil from the cotrain checkpoint or from the guidance distill output",
        )
    if tc.guidance_embedding and tc.guidance_range is not None:
        low, high = tc.guidance_range
        if not low <= cfg.guidance_range[0] <= cfg.guidance_range[1] <= high:
            raise MindVideoError(
                f"expected guidance_range inside the teacher student's range [{low}, {high}]",
                str(list(cfg.guidance_range)),
                f"set guidance_range=[{low},{high}] or narrower",
            )


def check_epsilon(scheduler_config: dict[str, Any], root: Path) -> None:
    kind = scheduler_config.get("prediction_type", "epsilon")
    if kind != "epsilon":
        raise MindVideoError(
            "expected an ε-prediction teacher (scheduler prediction_type 'epsilon')",
            f"{kind!r} in {root / 'scheduler'}",
            "distillation supports ε-prediction models only",
        )


def check_encoder(encoder: FMRIEncoder, shape: tuple[int, ...], root: Path) -> None:
    window, voxels = shape
    if (encoder.config.window_size, encoder.config.num_voxels) != (window, voxels):
        raise MindVideoError(
            f"expected the teacher's encoder to take the data's windows of {window} TRs × {voxels} voxels",
            f"{encoder.config.window_size} × {encoder.config.num_voxels} in {root / 'fmri_encoder'}",
            "pass the prepared folder the teacher was trained on",
        )


@torch.no_grad()
def encode_windows(encoder: FMRIEncoder, fmri: np.ndarray, device: torch.device, batch: int = 64) -> np.ndarray:
    """fMRI windows (N, W, V) → the frozen encoder's conditions (N, L, D) float32."""
    out = [
        encoder(torch.from_numpy(np.array(fmri[i : i + batch], np.float32)).to(device)).float().cpu()
        for i in range(0, len(fmri), batch)
    ]
    return torch.cat(out).numpy()
