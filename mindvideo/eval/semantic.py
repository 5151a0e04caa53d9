"""n-way top-k semantic classification accuracy, the MinD-Video evaluation protocol (paper §4; reference code
``utils/eval_metrics.py``), at frame and video level (:func:`n_way_top_k` describes the protocol).

A classifier is any callable: frames ``(M, H, W, 3)`` uint8 → ``(M, C)`` class probabilities (or, at video level,
clips ``(N, F, H, W, 3)`` → ``(N, C)``); see :mod:`mindvideo.eval.classifiers`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import numpy as np

from mindvideo.errors import MindVideoError
from mindvideo.eval.metrics import progress_bar

log = logging.getLogger(__name__)

FrameClassifier = Callable[[np.ndarray], np.ndarray]  # (M, H, W, 3) uint8 → (M, C) probabilities
VideoClassifier = Callable[[np.ndarray], np.ndarray]  # (N, F, H, W, 3) uint8 → (N, C) probabilities

TRUE_TOP = 3  # the reference takes the classifier's top-3 classes on the ground truth as correct
NUM_TRIALS = 100
N_WAYS = (2, 50)


def chance_level(n_way: int, n_true: int = TRUE_TOP, top_k: int = 1) -> float:
    """Expected accuracy of a reconstruction unrelated to the ground truth (i.i.d. continuous probabilities).

    The n−1 drawn and ``n_true`` true probabilities are exchangeable; a trial succeeds iff fewer than ``top_k`` drawn
    ones exceed the largest true one. P(exactly j drawn above it) = C(n+t−2−j, t−1) / C(n−1+t, t).

    A classifier is any callable: frames ``(M, H, W, 3)`` uint8 → ``(M, C)`` class probabilities (or, at video level,
    clips ``(N, F, H, W, 3)`` → ``(N, C)``); see :mod:`mindvideo.eval.classifiers` for ViT, VideoMAE and a small pixel
    classifier for simulated data.
    """
    total = math.comb(n_way - 1 + n_true, n_true)
    return sum(math.comb(n_way + n_true - 2 - j, n_true - 1) for j in range(top_k)) / total


def true_classes(gt_probs: np.ndarray, top: int = TRUE_TOP) -> np.ndarray:
    """The classifier's ``top`` most probable classes on the ground truth: ``(M, C)`` → ``(M, top)`` int64."""
    order = np.argsort(-np.asarray(gt_probs, dtype=np.float64), axis=-1, kind="stable")
    return order[..., :top].astype(np.int64)


def _check_feasible(n_way: int, n_classes: int, n_true: int, top_k: int) -> str | None:
    """Why ``n_way`` cannot be evaluated, or ``None``."""
    if n_way <= top_k:
        return f"{n_way}-way needs n > top-k ({top_k})"
    if n_way - 1 > n_classes - n_true:
        return f"{n_way}-way needs ≥ {n_way - 1 + n_true} classes; the classifier has {n_classes}"
    return None


def n_way_top_k(
    probs: np.ndarray,
    true: Sequence[int] | np.ndarray,
    n_way: int,
    *,
    num_trials: int = NUM_TRIALS,
    top_k: int = 1,
    rng: np.random.RandomState | int = 0,
) -> tuple[float, float]:
    """Accuracy and binomial std of one sample: ``probs`` ``(C,)`` are the reconstruction's class probabilities,
    ``true`` the correct classes. ``rng`` is advanced by ``num_trials`` draws (pass one ``RandomState`` through a
    loop over samples to reproduce the reference's sequence).

    For one sample (a frame, or a whole clip at video level) a classifier scores the ground truth and the
    reconstruction. The *true* classes are the classifier's top-3 on the ground truth. Each of 100 trials draws n−1
    other classes (without replacement, never a true class); the trial succeeds if, for some true class t, the
    reconstruction's probability of t is among the top k of {t} ∪ the n−1 drawn classes. The sample's accuracy is the
    success rate and its std the binomial one, ``sqrt(p(1−p)/trials)``. Reported numbers are means over test samples of
    both; frame level is computed per frame position and then averaged over positions.

    Details that decide the last digit, matched to the reference:

    * draws use numpy's legacy ``RandomState.choice(candidates, n−1, replace=False)`` with the candidates in ascending
      class order, so with the same seed our draws equal the reference's after ``np.random.seed(seed)``;
    * ties count against the reconstruction (the reference's stable ascending argsort puts the true class below equal
      values): a trial succeeds iff fewer than k drawn classes have probability ≥ the best true class's.

    Chance level is **not** 1/n under this protocol: with three true classes, random predictions succeed with
    probability 3/(n+2) at k = 1 (0.75 for 2-way, 0.058 for 50-way); see :func:`chance_level`. With known labels (one
    true class per sample) chance is 1/n.
    """
    probs = np.asarray(probs, dtype=np.float64)
    true = np.unique(np.asarray(true, dtype=np.int64))
    reason = _check_feasible(n_way, probs.shape[-1], len(true), top_k)
    if reason:
        raise MindVideoError(f"expected a feasible n-way setting: {reason}", f"n_way={n_way}", "use a smaller n")
    rng = np.random.RandomState(rng) if isinstance(rng, int) else rng
    candidates = np.setdiff1d(np.arange(probs.shape[-1]), true)  # ascending, true classes excluded
    drawn = np.stack([rng.choice(candidates, n_way - 1, replace=False) for _ in range(num_trials)])  # (T, n−1)
    beaten_by = np.count_nonzero(probs[drawn] >= probs[true].max(), axis=1)  # (T,)
    accuracy = float(np.mean(beaten_by < top_k))
    return accuracy, math.sqrt(accuracy * (1.0 - accuracy) / num_trials)


def n_way_accuracy(
    pred_probs: np.ndarray,
    true: np.ndarray,
    n_way: int,
    *,
    num_trials: int = NUM_TRIALS,
    top_k: int = 1,
    rng: np.random.RandomState | int = 0,
    progress: bool = False,
    desc: str = "n-way",
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`n_way_top_k` over samples in order: ``(M, C)`` probabilities, ``(M, T)`` true classes →
    accuracies ``(M,)`` and binomial stds ``(M,)``."""
    rng = np.random.RandomState(rng) if isinstance(rng, int) else rng
    pred_probs, true = np.asarray(pred_probs), np.asarray(true)
    if true.ndim == 1:
        true = true[:, None]
    if len(pred_probs) != len(true):
        raise MindVideoError(
            "expected one set of true classes per sample",
            f"{len(true)} for {len(pred_probs)}",
            "pass labels for every clip",
        )
    out = np.empty((2, len(pred_probs)))
    samples = progress_bar(range(len(pred_probs)), desc, progress)
    for i in samples:
        out[:, i] = n_way_top_k(pred_probs[i], true[i], n_way, num_trials=num_trials, top_k=top_k, rng=rng)
    return out[0], out[1]


# --------------------------------------------------------------------------------------------------- levels


def video_level(
    pred_probs: np.ndarray,
    true: np.ndarray,
    n_ways: Sequence[int] = N_WAYS,
    *,
    num_trials: int = NUM_TRIALS,
    top_k: int = 1,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, dict[str, object]]:
    """Video-level accuracy per n: ``(N, C)`` probabilities of the reconstructed clips, ``(N, T)`` true classes →
    ``{"2": {"mean", "std", "chance"}, …}`` (``std`` = mean binomial std, as the reference prints it). Each n starts
    from ``RandomState(seed)``; an infeasible n gets ``{"skipped": reason}``."""
    true = true[:, None] if true.ndim == 1 else true
    results: dict[str, dict[str, object]] = {}
    for n in n_ways:
        reason = _check_feasible(n, pred_probs.shape[-1], true.shape[-1], top_k)
        if reason:
            log.warning("video level: skipping %s", reason)
            results[str(n)] = {"skipped": reason}
            continue
        acc, std = n_way_accuracy(
            pred_probs,
            true,
            n,
            num_trials=num_trials,
            top_k=top_k,
            rng=np.random.RandomState(seed),
            progress=progress,
            desc=f"video {n}-way",
        )
        results[str(n)] = {
            "mean": float(acc.mean()),
            "std": float(std.mean()),
            "chance": chance_level(n, true.shape[-1], top_k),
        }
    return results


def frame_level(
    pred_probs: np.ndarray,
    true: np.ndarray,
    n_ways: Sequence[int] = N_WAYS,
    *,
    num_trials: int = NUM_TRIALS,
    top_k: int = 1,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, dict[str, object]]:
    """Frame-level accuracy per n, per frame position, then averaged over positions (the reference's loop):
    ``(N, F, C)`` probabilities of the reconstructed frames, ``(N, F, T)`` true classes →
    ``{"2": {"mean", "std", "chance", "per_frame": [{"mean", "std"}, …]}, …}``. The draws of one n run through the
    positions in order from ``RandomState(seed)``."""
    true = true[..., None] if true.ndim == 2 else true
    results: dict[str, dict[str, object]] = {}
    for n in n_ways:
        reason = _check_feasible(n, pred_probs.shape[-1], true.shape[-1], top_k)
        if reason:
            log.warning("frame level: skipping %s", reason)
            results[str(n)] = {"skipped": reason}
            continue
        rng, per_frame = np.random.RandomState(seed), []
        for f in range(pred_probs.shape[1]):
            acc, std = n_way_accuracy(
                pred_probs[:, f],
                true[:, f],
                n,
                num_trials=num_trials,
                top_k=top_k,
                rng=rng,
                progress=progress,
                desc=f"frame {f} {n}-way",
            )
            per_frame.append({"mean": float(acc.mean()), "std": float(std.mean())})
        results[str(n)] = {
            "mean": float(np.mean([p["mean"] for p in per_frame])),
            "std": float(np.mean([p["std"] for p in per_frame])),
            "chance": chance_level(n, true.shape[-1], top_k),
            "per_frame": per_frame,
        }
    return results


def check_probabilities(probs: object, rows: int, who: str) -> np.ndarray:
    """A classifier's output as ``(rows, C)`` float64, or :class:`MindVideoError` naming the classifier."""
    out = np.asarray(probs.detach().cpu() if hasattr(probs, "detach") else probs, dtype=np.float64)
    if out.ndim != 2 or out.shape[0] != rows or out.shape[1] < 2 or not np.isfinite(out).all():
        raise MindVideoError(
            f"expected the {who} to return ({rows}, C) finite class probabilities",
            f"shape {out.shape}",
            "check the classifier",
        )
    return out
