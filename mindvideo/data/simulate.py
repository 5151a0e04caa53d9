"""A simulated fMRI-video dataset with known ground truth, written in the Wen 2018 raw layout (:func:`simulate`
describes the generative model and the files). Deterministic given the seed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from mindvideo.config import Config
from mindvideo.data import stimuli
from mindvideo.data.io import progress_bar
from mindvideo.data.simulate_io import write_arrays, write_cifti, write_nifti, write_video
from mindvideo.errors import MindVideoError
from mindvideo.fsutil import atomic_folder, check_output_folder

log = logging.getLogger(__name__)

FORMATS = ("cifti", "nifti", "arrays")
FEATURE_GRID = 8  # feature maps are pooled to FEATURE_GRID × FEATURE_GRID blocks


@dataclasses.dataclass
class SimConfig(Config):
    """Size and realism knobs of the simulated dataset (defaults: ~19 min of movie, ~1,000 visual voxels)."""

    subjects: int = 1
    classes: int = 10
    train_segments: int = 12
    test_segments: int = 2
    segment_trs: int = 40
    train_repeats: int = 2
    test_repeats: int = 4
    extra_trs: int = 5
    tr: float = 2.0
    clip_trs: int = 2
    fps: int = 6
    size: int = 64
    grid: tuple[int, int, int] = (24, 24, 16)
    responsive_fraction: float = 0.5
    snr: float = 1.0
    drift: float = 2.0
    seed: int = 0
    formats: tuple[str, ...] = ("cifti", "nifti", "arrays")
    arrays_fps: float = 3.0

    @classmethod
    def tiny(cls, **changes: Any) -> SimConfig:
        """Seconds to generate: a 12 × 12 × 8 grid (~200 visual voxels), 32×32 video."""
        base = cls(grid=(12, 12, 8), train_segments=10, test_segments=2, segment_trs=30, test_repeats=3, size=32)
        return base.replace(**changes)

    @classmethod
    def from_minutes(cls, minutes: float, **changes: Any) -> SimConfig:
        """Split ``minutes`` of unique movie into segments of ``segment_trs`` TRs (2 of them test)."""
        base = cls().replace(**changes)
        total = max(3, round(minutes * 60 / base.tr / base.segment_trs))
        test = min(base.test_segments, total - 2)
        return base.replace(train_segments=total - test, test_segments=test)

    def validate(self) -> None:
        bad = [f for f in self.formats if f not in FORMATS]
        checks = [
            (not bad and bool(self.formats), f"formats among {FORMATS}", self.formats),
            (2 <= self.classes <= len(stimuli.CLASS_NAMES), f"2 ≤ classes ≤ {len(stimuli.CLASS_NAMES)}", self.classes),
            (self.train_segments >= 1 and self.test_segments >= 0, "≥ 1 train segment", self.train_segments),
            (self.segment_trs >= 4 and self.clip_trs >= 1, "segment_trs ≥ 4", self.segment_trs),
            (self.subjects >= 1 and self.train_repeats >= 1 and self.test_repeats >= 1, "≥ 1 subject/repeat", None),
            (min(self.grid) >= 6, "a grid of at least 6 voxels per side", self.grid),
            (self.snr >= 0 and self.size >= 16 and self.fps >= 1, "snr ≥ 0, size ≥ 16, fps ≥ 1", self.snr),
        ]
        for ok, expected, found in checks:
            if not ok:
                raise MindVideoError(f"expected {expected} for the simulation", repr(found), "fix the option")


# --------------------------------------------------------------------------------------------------- 1. stimulus


@dataclasses.dataclass
class Stimulus:
    """One segment's movie: frames (n, H, W, 3) uint8, per-TR class ids and captions."""

    name: str
    frames: np.ndarray
    classes: np.ndarray
    captions: list[str]


def make_stimuli(config: SimConfig, rng: np.random.Generator) -> list[Stimulus]:
    """Every segment's movie; clips are aligned to TR boundaries."""
    train = [f"seg{i + 1}" for i in range(config.train_segments)]
    names = train + [f"test{i + 1}" for i in range(config.test_segments)]
    clips_per_segment = -(-config.segment_trs // config.clip_trs)
    rounds = -(-clips_per_segment * len(names) // config.classes)
    order = np.concatenate([rng.permutation(config.classes) for _ in range(rounds)])
    frames_per_clip = round(config.clip_trs * config.tr * config.fps)
    out, k = [], 0
    for name in names:
        frames, classes, captions = [], [], []
        for _ in range(clips_per_segment):
            clip, caption = stimuli.render_clip(int(order[k]), frames_per_clip, config.size, config.fps, rng)
            frames.append(clip)
            classes += [int(order[k])] * config.clip_trs
            captions += [caption] * config.clip_trs
            k += 1
        n_frames = round(config.segment_trs * config.tr * config.fps)
        movie = (np.concatenate(frames)[:n_frames] * 255.0 + 0.5).astype(np.uint8)
        out.append(Stimulus(name, movie, np.asarray(classes[: config.segment_trs]), captions[: config.segment_trs]))
    return out


# --------------------------------------------------------------------------------------------------- 2. brain


@dataclasses.dataclass
class Brain:
    """Anatomy and voxel tuning of one simulated subject; per-voxel arrays follow the visual mask's C order."""

    atlas: np.ndarray  # (X, Y, Z) int16: 1–4 visual areas, 5 other brain, 0 outside
    affine: np.ndarray  # (4, 4) voxel → mm
    kind: np.ndarray  # (V_vis,) 0 noise-only, 1 retinotopic, 2 category
    prf: np.ndarray  # (V_vis, 3) centre x, centre y, sigma in visual-field units ([-1, 1])
    weights: np.ndarray  # (V_vis, 3) luminance, contrast, motion weights
    tuning: np.ndarray  # (V_vis, C) category tuning
    gain: np.ndarray  # (V_vis,)
    baseline: np.ndarray  # (V_brain,) in brain-mask C order

    @property
    def visual(self) -> np.ndarray:
        return (self.atlas >= 1) & (self.atlas <= 4)

    @property
    def responsive(self) -> np.ndarray:
        return self.kind > 0


def make_brain(config: SimConfig, rng: np.random.Generator) -> Brain:
    """Anatomy (ellipsoid, ribbon, posterior visual areas) and the tuning of every visual voxel."""
    # 1. anatomy
    atlas, rel = _anatomy(np.asarray(config.grid))
    affine = np.diag([3.0, 3.0, 3.0, 1.0])  # 3-mm voxels, centred
    affine[:3, 3] = -1.5 * (np.asarray(config.grid) - 1)
    visual = (atlas >= 1) & (atlas <= 4)
    pos, areas = rel[visual], atlas[visual]  # (V, 3) in [-1, 1], (V,)
    n = len(pos)
    # 2. which voxels respond, and how: category area → category tuning, V1–V3 → retinotopic pRFs
    kind = np.where(rng.random(n) < config.responsive_fraction, 1, 0)
    kind = np.where((kind == 1) & (areas == 4), 2, kind)
    prf = _retinotopy(pos, areas, rng)
    # 3. feature weights (luminance, contrast, motion): contrast-led; V3 and beyond lean towards motion
    weights = rng.dirichlet([1.0, 2.0, 2.5], size=n) * np.where(areas[:, None] >= 3, [0.6, 1.0, 1.4], 1.0)
    tuning = _tuning(n, config.classes, rng)
    gain = rng.uniform(0.6, 1.4, n)
    baseline = rng.uniform(800, 1200, int((atlas > 0).sum()))
    return Brain(atlas, affine, kind, prf, weights, tuning, gain, baseline)


def _anatomy(shape: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Atlas (X, Y, Z) int16 and voxel positions (X, Y, Z, 3) in [-1, 1]: an ellipsoidal brain whose cortical
    ribbon's posterior 45 % is visual cortex, split front-to-back into V1 (1), V2 (2), V3 (3), category area (4);
    the rest of the brain is 5."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(float)
    rel = (idx - (shape - 1) / 2) / (shape / 2 - 0.5)
    radius = np.sqrt((rel**2).sum(-1))
    brain, ribbon = radius <= 1.0, (radius <= 1.0) & (radius > 0.6)
    depth = (rel[..., 1] + 1) / 2  # 0 at the occipital pole (y = 0), 1 at the front
    visual = ribbon & (depth < 0.45)
    area = np.digitize(depth / 0.45, [0.3, 0.55, 0.75]) + 1
    return np.where(visual, area, np.where(brain, 5, 0)).astype(np.int16), rel


def _retinotopy(pos: np.ndarray, areas: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(V, 3) pRF centre x, centre y, sigma: the left hemisphere (x < 0) sees the right visual field, polar angle
    follows the voxel's angle about the pole, eccentricity grows away from it, size with eccentricity and area."""
    n = len(pos)
    ecc = np.clip(0.1 + (pos[:, 1] + 1), 0.1, 1.0) * rng.uniform(0.7, 1.0, n)
    angle = np.arctan2(pos[:, 2], np.abs(pos[:, 0]) + 0.3) + rng.normal(0, 0.15, n)
    side = np.where(pos[:, 0] < 0, 1.0, -1.0)
    sigma = 0.12 + 0.25 * ecc * (0.6 + 0.2 * areas) + rng.uniform(0, 0.05, n)
    return np.stack([side * ecc * np.cos(angle), ecc * np.sin(angle), sigma], axis=1)


def _tuning(n: int, classes: int, rng: np.random.Generator) -> np.ndarray:
    """(n, C): each voxel prefers 1–2 classes, with weak random responses to the rest."""
    tuning = rng.normal(0, 0.2, (n, classes))
    preferred = rng.integers(0, classes, (n, 2))
    tuning[np.arange(n), preferred[:, 0]] += 1.0
    tuning[np.arange(n), preferred[:, 1]] += rng.choice([0.0, 0.7], n)
    return tuning


# --------------------------------------------------------------------------------------------------- 3–4. BOLD


def double_gamma_hrf(dt: float, length: float = 32.0) -> np.ndarray:
    """Canonical (SPM) HRF sampled every ``dt`` s: gamma(6, 1) − gamma(16, 1)/6, summing to 1."""
    t = np.arange(0.0, length, dt)

    def gamma_pdf(shape: float) -> np.ndarray:
        return np.exp((shape - 1) * np.log(np.maximum(t, 1e-12)) - t - math.lgamma(shape))

    h = gamma_pdf(6.0) - gamma_pdf(16.0) / 6.0
    return h / h.sum()


def stimulus_features(frames: np.ndarray, grid: int = FEATURE_GRID) -> np.ndarray:
    """(n, 3, grid²) luminance, contrast (block std) and motion energy (block mean |Δ luminance|)."""
    lum = frames.astype(np.float32).mean(axis=-1) / 255.0  # (n, H, W)
    n, h, w = lum.shape
    blocks = lum.reshape(n, grid, h // grid, grid, w // grid)  # (n, g, bh, g, bw)
    motion = np.abs(np.diff(lum, axis=0, prepend=lum[:1])).reshape(blocks.shape)
    feats = [blocks.mean(axis=(2, 4)), blocks.std(axis=(2, 4)), motion.mean(axis=(2, 4))]
    return np.stack(feats, axis=1).reshape(n, 3, grid * grid)


def neural_drive(features: np.ndarray, classes: np.ndarray, brain: Brain, stats: tuple) -> np.ndarray:
    """(n, V_vis) drive at the frame rate; ``stats`` = feature mean/std over the whole experiment."""
    mean, std = stats
    feats = (features - mean) / std  # (n, 3, g²)
    centres = (np.arange(FEATURE_GRID) + 0.5) / FEATURE_GRID * 2 - 1
    gy, gx = np.meshgrid(centres, centres, indexing="ij")
    d2 = (gx.ravel()[None] - brain.prf[:, :1]) ** 2 + (gy.ravel()[None] - brain.prf[:, 1:2]) ** 2  # (V, g²)
    rf = np.exp(-d2 / (2 * brain.prf[:, 2:3] ** 2))
    rf /= rf.sum(axis=1, keepdims=True)
    retino = sum(brain.weights[:, f] * (feats[:, f] @ rf.T) for f in range(3))  # (n, V)
    onehot = (classes[:, None] == np.arange(brain.tuning.shape[1])[None]).astype(np.float64)  # (n, C); -1: blank
    category = onehot @ brain.tuning.T  # (n, V)
    return np.where(brain.kind == 2, 0.8 * category + 0.2 * retino, retino)


def segment_bold(stim: Stimulus, brain: Brain, config: SimConfig, stats: tuple) -> np.ndarray:
    """(segment_trs + extra_trs, V_vis) unscaled BOLD of one segment (blank grey screen after the movie)."""
    blank = np.full((round(config.extra_trs * config.tr * config.fps), *stim.frames.shape[1:]), 128, np.uint8)
    frames = np.concatenate([stim.frames, blank])
    per_frame = np.repeat(stim.classes, round(config.tr * config.fps))
    per_frame = np.concatenate([per_frame, np.full(len(frames) - len(per_frame), -1)])  # -1: blank screen
    drive = neural_drive(stimulus_features(frames), per_frame, brain, stats)  # (n_frames, V)
    from scipy.signal import fftconvolve

    hrf = double_gamma_hrf(1.0 / config.fps)
    bold = fftconvolve(drive, hrf[:, None], axes=0)[: len(drive)]  # causal: the response follows the drive
    n_vol = config.segment_trs + config.extra_trs
    mid = ((np.arange(n_vol) + 0.5) * config.tr * config.fps).astype(int)
    return bold[np.minimum(mid, len(bold) - 1)]


# --------------------------------------------------------------------------------------------------- 5. scanner


def scanner_run(signal: np.ndarray, brain: Brain, config: SimConfig, rng: np.random.Generator) -> np.ndarray:
    """(T, V_brain) float32 intensities of one run: baseline × (1 + 1 % × (signal + noise + drift)).

    ``signal`` (T, V_vis) is already scaled; visual voxels come first (the brain order of
    :mod:`mindvideo.data.simulate_io`).
    """
    t_count, v_count = signal.shape[0], len(brain.baseline)
    white = rng.normal(size=(t_count, v_count))
    noise = np.empty_like(white)
    noise[0] = white[0]
    for k in range(1, t_count):  # AR(1), rho = 0.3, unit variance
        noise[k] = 0.3 * noise[k - 1] + math.sqrt(1 - 0.09) * white[k]
    time = np.arange(t_count) * config.tr
    basis = np.polynomial.legendre.legvander(np.linspace(-1, 1, t_count), 3)[:, 1:]  # (T, 3)
    drift = basis @ rng.normal(0, config.drift / 2, (3, v_count))
    slow = np.sin(2 * np.pi * time[:, None] / rng.uniform(60, 200, v_count) + rng.uniform(0, 2 * np.pi, v_count))
    physio = sum(0.3 * np.sin(2 * np.pi * rng.uniform(0.08, 0.24, v_count) * time[:, None]) for _ in range(2))
    total = noise + drift + config.drift / 2 * slow + physio
    total[:, : signal.shape[1]] += signal
    return (brain.baseline * (1.0 + 0.01 * total)).astype(np.float32)


# --------------------------------------------------------------------------------------------------- driver


COMMAND = "data simulate"


def simulate(
    out: str | Path, config: SimConfig | None = None, progress: bool = False, *, overwrite: bool = False
) -> dict[str, Any]:
    """Generate and write the dataset to ``out`` (atomically); returns the contents of ``dataset.json``.

    ``out`` must be new or empty, or (with ``overwrite``) an earlier ``mindvideo data simulate`` output
    (:func:`mindvideo.fsutil.check_output_folder`).

    The generative model, stage by stage:

    1. **Stimulus**: a sequence of procedural clips (:mod:`mindvideo.data.stimuli`, ≥ 10 semantic classes with object
       motion and camera moves), ``clip_trs`` TRs each, classes drawn as shuffled rounds so they stay balanced.
    2. **Brain**: a small 3-D voxel grid holding an ellipsoidal brain; its cortical ribbon's posterior part is the
       visual-cortex mask, split front-to-back into V1, V2, V3 and a category area (atlas labels 1–4, other brain 5).
       Half of the visual voxels respond (``responsive_fraction``); the rest carry noise only.
    3. **Neural drive** at the frame rate: retinotopic voxels have a Gaussian population receptive field (pRF; centre
       from the voxel's position: polar angle from its angle about the occipital pole, eccentricity from the distance
       to it, size growing with eccentricity and area) and weights on three feature maps (luminance, local contrast,
       motion energy); category voxels respond to a preferred subset of the classes (plus a little contrast).
    4. **BOLD**: drive convolved with the canonical double-gamma HRF (SPM: gamma(6) − gamma(16)/6, peak ≈ 5 s), sampled
       at the middle of each TR (TR = 2 s), scaled to unit variance per voxel.
    5. **Scanner**: each run adds AR(1) noise (unit variance), slow polynomial drift, a low-frequency oscillation and
       aliased physiological (cardiac/respiratory) sinusoids; responsive voxels get ``snr`` × gain × BOLD; the result
       is a percent signal change around a voxel baseline (~1000). Every segment is scanned ``*_repeats`` times, each
       with ``extra_trs`` volumes after the movie ends (Wen runs: 245 volumes for 240 TRs of movie).

    Written layout (``SIM/``): ``stimuli/*.mp4`` + ``stimuli/captions/*.txt``;
    ``subjectN/fmri/<seg>/cifti/*.dtseries.nii`` (visual voxels as ``CORTEX_LEFT/RIGHT`` first, other brain voxels
    after, like Wen's 59,412 cortical grayordinates first) and/or ``…/nifti/*.nii.gz`` with
    ``subjectN/anat/{visual_mask,atlas}.nii.gz``; ``subjectN/events.tsv`` (the same NIfTI runs in the custom layout);
    ``arrays/`` (the reference's preprocessed arrays); ``truth/`` (responsive voxels, pRFs, tuning, the class of every
    TR); ``dataset.json``.
    """
    config = config or SimConfig()
    config.validate()
    check_output_folder(out, COMMAND, overwrite=overwrite)
    rng = np.random.default_rng(config.seed)
    stims = make_stimuli(config, rng)
    with atomic_folder(out, COMMAND, overwrite=overwrite) as tmp:
        (tmp / "stimuli" / "captions").mkdir(parents=True)
        with progress_bar(stims, "stimuli", progress) as bar:
            for stim in bar:
                write_video(tmp / "stimuli" / f"{stim.name}.mp4", stim.frames, config.fps)
                (tmp / "stimuli" / "captions" / f"{stim.name}.txt").write_text("\n".join(stim.captions) + "\n")
        features = [stimulus_features(s.frames) for s in stims]
        cat = np.concatenate(features)
        stats = (cat.mean(axis=(0, 2), keepdims=True)[0], cat.std(axis=(0, 2), keepdims=True)[0] + 1e-6)
        subjects = [_simulate_subject(tmp, n + 1, stims, config, stats, progress) for n in range(config.subjects)]
        info = _dataset_info(config, stims, subjects)
        (tmp / "truth").mkdir(exist_ok=True)
        (tmp / "truth" / "labels.json").write_text(json.dumps(info.pop("labels")) + "\n")
        (tmp / "dataset.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def _simulate_subject(root: Path, number: int, stims: list[Stimulus], config: SimConfig, stats, progress) -> dict:
    rng = np.random.default_rng([config.seed, number])
    brain = make_brain(config, rng)
    bold = [segment_bold(s, brain, config, stats) for s in stims]  # each (T_run, V_vis)
    cat = np.concatenate(bold)
    scale = config.snr * brain.gain * brain.responsive / (cat.std(axis=0) + 1e-8)
    mean = cat.mean(axis=0)
    subject = root / f"subject{number}"
    runs: dict[str, list[np.ndarray]] = {}
    with progress_bar(list(zip(stims, bold)), f"subject{number} runs", progress) as bar:
        for stim, segment in bar:
            repeats = config.test_repeats if stim.name.startswith("test") else config.train_repeats
            runs[stim.name] = [scanner_run((segment - mean) * scale, brain, config, rng) for _ in range(repeats)]
            _write_runs(subject / "fmri" / stim.name, stim.name, runs[stim.name], brain, config)
    _write_anatomy(subject, brain, stims, runs, config)
    if "arrays" in config.formats:
        n_vis = int(brain.visual.sum())
        write_arrays(root, f"subject{number}", stims, {k: [r[:, :n_vis] for r in v] for k, v in runs.items()}, config)
    np.savez(
        root / "truth" / f"subject{number}.npz",
        responsive=brain.responsive,
        kind=brain.kind,
        prf=brain.prf,
        tuning=brain.tuning,
        gain=brain.gain,
        atlas=brain.atlas,
    )
    return {
        "name": f"subject{number}",
        "visual_voxels": int(brain.visual.sum()),
        "responsive_voxels": int(brain.responsive.sum()),
        "brain_voxels": len(brain.baseline),
    }


def _write_runs(folder: Path, name: str, runs: list[np.ndarray], brain: Brain, config: SimConfig) -> None:
    """Every repeat of one segment as CIFTI (``cifti/<name>_<r>_Atlas.dtseries.nii``) and/or NIfTI."""
    for r, run in enumerate(runs, start=1):
        if "cifti" in config.formats:
            write_cifti(folder / "cifti" / f"{name}_{r}_Atlas.dtseries.nii", run, brain, config.tr)
        if "nifti" in config.formats:
            write_nifti(folder / "nifti" / f"{name}_{r}.nii.gz", run, brain, config.tr)


def _write_anatomy(subject: Path, brain: Brain, stims: list[Stimulus], runs: dict, config: SimConfig) -> None:
    """Masks, the atlas + label table, the custom-layout onset table and the subject's dataset.json."""
    import nibabel as nib

    (subject / "anat").mkdir(parents=True, exist_ok=True)
    (subject.parent / "truth").mkdir(exist_ok=True)
    nib.save(nib.Nifti1Image(brain.visual.astype(np.uint8), brain.affine), subject / "anat" / "visual_mask.nii.gz")
    nib.save(nib.Nifti1Image(brain.atlas, brain.affine), subject / "anat" / "atlas.nii.gz")
    labels = {"V1": 1, "V2": 2, "V3": 3, "category": 4, "other": 5}
    (subject / "anat" / "atlas.json").write_text(json.dumps(labels, indent=2) + "\n")
    if "nifti" in config.formats:
        lines = ["run\tonset\tstimulus\tsplit\tcaptions"]
        for stim in stims:
            split = "test" if stim.name.startswith("test") else "train"
            for r in range(1, len(runs[stim.name]) + 1):
                lines.append(
                    f"fmri/{stim.name}/nifti/{stim.name}_{r}.nii.gz\t0\t../stimuli/{stim.name}.mp4\t{split}"
                    f"\t../stimuli/captions/{stim.name}.txt"
                )
        (subject / "events.tsv").write_text("\n".join(lines) + "\n")
        (subject / "dataset.json").write_text(json.dumps({"tr": config.tr, "mask": "anat/visual_mask.nii.gz"}) + "\n")


def _dataset_info(config: SimConfig, stims: list[Stimulus], subjects: list[dict]) -> dict[str, Any]:
    names = stimuli.CLASS_NAMES[: config.classes]
    return {
        "name": "mindvideo-simulated",
        "tr": config.tr,
        "fps": config.fps,
        "mask": "{subject}/anat/visual_mask.nii.gz",
        "cifti_select": "cortex",
        "classes": list(names),
        "hrf_peak_s": 5.0,
        "train": [s.name for s in stims if s.name.startswith("seg")],
        "test": [s.name for s in stims if s.name.startswith("test")],
        "subjects": subjects,
        "config": config.to_dict(),
        "labels": {s.name: s.classes.tolist() for s in stims},
    }
