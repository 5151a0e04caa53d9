"""One call that computes every metric of a set of reconstructions: :func:`evaluate`.

The result is a JSON-ready dict (``metrics.json`` of a report):

* ``clips`` — how many were given, evaluated and dropped at scene cuts; ``video`` — frames, height, width;
* ``ssim_colour``, ``ssim_grey``, ``psnr`` — ``{mean, std, per_frame: [{mean, std}], convention}``;
* ``frame_nway`` / ``video_nway`` — ``{"2": {mean, std, chance, per_frame?}, "50": …}`` or ``None`` without a
  classifier (``std`` is the mean binomial std, as the reference reports it);
* ``clip_similarity``, ``clip_pcc`` (adjacent-frame CLIP similarity of the reconstructions), ``clip_pcc_gt``
  (of the ground truth) — or ``None`` without a CLIP model;
* ``per_clip`` — index, name and the per-clip means used to pick the best/median/worst clips;
* ``settings`` — protocol parameters and where the models came from.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mindvideo.errors import MindVideoError
from mindvideo.eval import semantic
from mindvideo.eval.classifiers import load_frame_classifier, load_video_classifier, model_config
from mindvideo.eval.clip import ClipEmbedder, adjacent_similarity, clip_similarity, embed_videos, load_clip
from mindvideo.eval.metrics import COLOUR_SSIM, GREY_SSIM, check_videos, psnr, ssim, summarise
from mindvideo.eval.report import COMMAND as REPORT_COMMAND
from mindvideo.eval.report import write_report
from mindvideo.eval.semantic import N_WAYS, NUM_TRIALS, TRUE_TOP, FrameClassifier, VideoClassifier
from mindvideo.eval.videos import load_pair, load_scene_ids, scene_mask
from mindvideo.fsutil import check_output_folder

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


def evaluate(
    pred: np.ndarray,
    gt: np.ndarray,
    *,
    frame_classifier: FrameClassifier | None = None,
    video_classifier: VideoClassifier | None = None,
    clip: ClipEmbedder | None = None,
    labels: np.ndarray | None = None,
    n_ways: Sequence[int] = N_WAYS,
    top_k: int = 1,
    num_trials: int = NUM_TRIALS,
    true_top: int = TRUE_TOP,
    seed: int = 0,
    scene_ids: Sequence[str] | None = None,
    drop_scene_cuts: bool = True,
    one_per_scene: bool = False,
    names: Sequence[str] | None = None,
    provenance: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Every metric of reconstructions ``pred`` against ground truth ``gt``, both ``(N, F, H, W, 3)`` uint8.

    Semantic metrics need a classifier (frames: ``(M, H, W, 3) → (M, C)`` probabilities; clips:
    ``(N, F, H, W, 3) → (N, C)``); the true classes are the classifier's top-``true_top`` on the ground truth
    (reference protocol), or ``labels`` ``(N,)`` — the known class of each clip (simulated data). CLIP metrics need
    ``clip``. ``scene_ids`` (one per clip) drop clips that cross a scene cut (``drop_scene_cuts``) and optionally keep
    one clip per scene. ``provenance`` (e.g. model paths) is stored under ``settings``.
    """
    check_videos(pred, gt)
    n_given = len(gt)
    index = _kept_clips(n_given, scene_ids, drop_scene_cuts, one_per_scene)
    if len(index) < len(gt):
        pred, gt = pred[index], gt[index]
    start = time.perf_counter()
    per_clip: dict[str, Any] = {"index": index.tolist(), "name": [str(names[i]) for i in index] if names else None}
    metrics: dict[str, Any] = {
        "format": f"mindvideo-eval/{FORMAT_VERSION}",
        "clips": {"given": n_given, "evaluated": len(index), "dropped_by_scene_filter": n_given - len(index)},
        "video": dict(zip(("frames", "height", "width"), map(int, gt.shape[1:4]))),
    }
    metrics.update(_pixel_metrics(pred, gt, per_clip, progress))
    true = None if labels is None else _labels(labels, index)
    if labels is not None and frame_classifier is None and video_classifier is None:
        log.warning("labels given without a classifier: n-way accuracy needs one to score the reconstructions")
    protocol = dict(n_ways=tuple(n_ways), top_k=top_k, num_trials=num_trials, seed=seed)
    nway = functools.partial(_nway, pred=pred, gt=gt, labels=true, true_top=true_top, progress=progress, **protocol)
    metrics["frame_nway"], metrics["video_nway"] = nway("frame", frame_classifier), nway("video", video_classifier)
    metrics.update(_clip_metrics(pred, gt, clip, per_clip))
    metrics["per_clip"] = per_clip
    metrics["settings"] = {
        **protocol,
        "n_ways": list(n_ways),
        "true_top": true_top,
        "true_classes": "labels" if labels is not None else f"classifier top-{true_top} on ground truth",
        "scene_filter": None if scene_ids is None else {"drop_cuts": drop_scene_cuts, "one_per_scene": one_per_scene},
        **(provenance or {}),
        "seconds": round(time.perf_counter() - start, 2),
    }
    return metrics


def _kept_clips(n: int, scene_ids: Sequence[str] | None, drop_cuts: bool, one_per_scene: bool) -> np.ndarray:
    if scene_ids is None:
        return np.arange(n)
    if len(scene_ids) != n:
        raise MindVideoError(
            "expected one scene id per clip",
            f"{len(scene_ids)} ids for {n} clips",
            "pass the scene ids of exactly the evaluated clips",
        )
    index = np.flatnonzero(scene_mask(scene_ids, drop_cuts=drop_cuts, one_per_scene=one_per_scene))
    if len(index) == 0:
        raise MindVideoError(
            "expected some clips to remain after the scene filter",
            "none left",
            "check the scene ids, or keep clips that cross scene cuts",
        )
    log.info("scene filter keeps %d of %d clips", len(index), n)
    return index


def _labels(labels: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Known classes ``(N,)`` → the kept clips' ``(n,)`` int64."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or labels.min(initial=0) < 0:
        raise MindVideoError(
            "expected labels as one class index ≥ 0 per clip, shape (N,)",
            f"{labels.dtype} {labels.shape}",
            "save them with np.save(path, labels.astype(int))",
        )
    if len(labels) <= index.max():
        raise MindVideoError(
            "expected one label per clip",
            f"{len(labels)} labels for {index.max() + 1}+ clips",
            "pass labels for every clip",
        )
    return labels[index].astype(np.int64)


def _pixel_metrics(pred: np.ndarray, gt: np.ndarray, per_clip: dict[str, Any], progress: bool) -> dict[str, Any]:
    out = {}
    for key, convention in (("ssim_colour", COLOUR_SSIM), ("ssim_grey", GREY_SSIM)):
        scores = ssim(pred, gt, convention, progress=progress)
        out[key] = {**summarise(scores), "convention": convention.label}
        per_clip[key] = scores.mean(axis=1).tolist()
    scores = psnr(pred, gt)
    out["psnr"] = {**summarise(scores), "unit": "dB", "cap": 100.0}
    per_clip["psnr"] = scores.mean(axis=1).tolist()
    return out


def _flat(videos: np.ndarray) -> np.ndarray:
    """``(N, F, H, W, 3)`` → ``(N·F, H, W, 3)`` frames."""
    return videos.reshape(-1, *videos.shape[2:])


def _nway(level: str, classifier, *, pred, gt, labels, true_top: int, **protocol: Any) -> dict[str, Any] | None:
    """Frame- or video-level n-way accuracy (``level``), or ``None`` without a classifier for that level."""
    if classifier is None:
        return None
    n, f = pred.shape[:2]
    shape = (n, f) if level == "frame" else (n,)
    inputs = (_flat(pred), _flat(gt)) if level == "frame" else (pred, gt)
    who = f"{level} classifier"
    pred_probs = semantic.check_probabilities(classifier(inputs[0]), math.prod(shape), who).reshape(*shape, -1)
    if labels is not None and labels.max() >= pred_probs.shape[-1]:
        raise MindVideoError(
            f"expected labels below the {who}'s {pred_probs.shape[-1]} classes",
            f"label {labels.max()}",
            "pass labels that index the classifier's classes",
        )
    if labels is None:
        gt_probs = semantic.check_probabilities(classifier(inputs[1]), math.prod(shape), who)
        true = semantic.true_classes(gt_probs, true_top).reshape(*shape, -1)  # (N[, F], T)
    else:
        true = np.broadcast_to(labels.reshape(n, *(1,) * len(shape)), (*shape, 1))  # (N[, F], 1)
    run = semantic.frame_level if level == "frame" else semantic.video_level
    return run(pred_probs, true, **protocol)


def _clip_metrics(pred, gt, clip: ClipEmbedder | None, per_clip: dict[str, Any]) -> dict[str, Any]:
    """CLIP similarity to the ground truth and adjacent-frame CLIP similarity (CLIP-pcc)."""
    if clip is None:
        return {"clip_similarity": None, "clip_pcc": None, "clip_pcc_gt": None}
    pred_embeds, gt_embeds = embed_videos(pred, clip), embed_videos(gt, clip)  # (N, F, D)
    similarity = clip_similarity(pred_embeds, gt_embeds)  # (N, F)
    per_clip["clip_similarity"] = similarity.mean(axis=1).tolist()
    pcc, pcc_gt = adjacent_similarity(pred_embeds), adjacent_similarity(gt_embeds)  # (N,)
    return {
        "clip_similarity": summarise(similarity),
        "clip_pcc": {**_mean_std(pcc), "name": "CLIP-pcc (adjacent-frame CLIP similarity)"},
        "clip_pcc_gt": {**_mean_std(pcc_gt), "name": "CLIP-pcc of the ground truth"},
    }


def _mean_std(values: np.ndarray) -> dict[str, float | None]:
    summary = summarise(values[:, None])
    return {"mean": summary["mean"], "std": summary["std"]}


# --------------------------------------------------------------------------------------------------- from files

MODEL_OPTIONS = {  # evaluate() keyword → (what, CLI option)
    "frame_classifier": ("frame classifier", "--classifier"),
    "video_classifier": ("video classifier", "--video-classifier"),
    "clip": ("CLIP model", "--clip"),
}
MODEL_PATHS = {"frame_classifier": "classifier", "video_classifier": "video_classifier", "clip": "clip"}  # → option


def check_model_folders(paths: dict[str, str | Path | None]) -> None:
    """Raise a clear error for any model folder (keyed like :data:`MODEL_OPTIONS`) that is missing or unreadable."""
    for key, path in paths.items():
        if path is not None:
            model_config(path, *MODEL_OPTIONS[key])


def load_models(
    *,
    classifier: str | Path | None = None,
    video_classifier: str | Path | None = None,
    clip: str | Path | None = None,
    num_frames: int | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Models from local folders (any may be ``None``) as ``evaluate`` keyword arguments: ``frame_classifier`` (ViT
    or pixel classifier), ``video_classifier`` (VideoMAE for ``num_frames``, or a frame classifier averaged over
    frames), ``clip`` (CLIP image embedder). Every folder is checked before any is loaded, so a typo fails fast."""
    paths = {"frame_classifier": classifier, "video_classifier": video_classifier, "clip": clip}
    check_model_folders(paths)
    loaders = {
        "frame_classifier": lambda p: load_frame_classifier(p, device=device, progress=progress),
        "video_classifier": lambda p: load_video_classifier(
            p, num_frames=num_frames, device=device, progress=progress
        ),
        "clip": lambda p: load_clip(p, device=device, progress=progress),
    }
    return {key: None if path is None else loaders[key](path) for key, path in paths.items()}


def evaluate_paths(
    pred: str | Path,
    gt: str | Path,
    out: str | Path | None = None,
    *,
    labels: str | Path | None = None,
    scenes: str | Path | None = None,
    **options: Any,
) -> dict[str, Any]:
    """``mindvideo eval`` as a function: read clips (``.npy`` or folders, see :mod:`mindvideo.eval.videos`),
    ``labels`` (``.npy`` ``(N,)`` int or text) and ``scenes`` (scene ids), then :func:`evaluate_videos` (``options``
    are its keyword arguments). Every input is checked before the long work starts."""
    check_model_folders({key: options.get(name) for key, name in MODEL_PATHS.items()})
    pred_videos, gt_videos, names = load_pair(pred, gt)
    check_videos(pred_videos, gt_videos)
    known = None if labels is None else read_labels(labels, len(gt_videos))
    scene_ids = None if scenes is None else load_scene_ids(scenes, len(gt_videos))
    sources = {"pred": str(pred), "gt": str(gt), "labels": _str(labels), "scenes": _str(scenes)}
    return evaluate_videos(
        pred_videos, gt_videos, out, names=names, labels=known, scene_ids=scene_ids, sources=sources, **options
    )


def evaluate_videos(
    pred: np.ndarray,
    gt: np.ndarray,
    out: str | Path | None = None,
    *,
    classifier: str | Path | None = None,
    video_classifier: str | Path | None = None,
    clip: str | Path | None = None,
    device: str = "cpu",
    report_options: dict[str, Any] | None = None,
    sources: dict[str, str | None] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Clips already in memory (``(N, F, H, W, 3)`` uint8 each) with models from local folders: :func:`evaluate`
    (``options`` are its keyword arguments) and, if ``out`` is given,
    :func:`~mindvideo.eval.report.write_report` with ``report_options``. ``sources`` names where the clips came
    from (recorded in ``settings``)."""
    check_model_folders({"frame_classifier": classifier, "video_classifier": video_classifier, "clip": clip})
    if (report_options or {}).get("rank_by") == "clip_similarity" and clip is None:
        raise MindVideoError("expected a CLIP model to rank clips by CLIP similarity", "no --clip", "pass --clip")
    check_videos(pred, gt)
    if out is not None:  # before the long work
        check_output_folder(out, REPORT_COMMAND, overwrite=(report_options or {}).get("overwrite", False))
    models = load_models(
        classifier=classifier,
        video_classifier=video_classifier,
        clip=clip,
        num_frames=gt.shape[1],
        device=device,
        progress=options.get("progress", True),
    )
    provenance = {
        **(sources or {}),
        "classifier": _str(classifier),
        "video_classifier": _str(video_classifier),
        "clip": _str(clip),
    }
    metrics = evaluate(pred, gt, **models, provenance=provenance, **options)
    if out is not None:
        write_report(metrics, pred, gt, out, **(report_options or {}))
    return metrics


def _str(path: str | Path | None) -> str | None:
    return None if path is None else str(path)


def read_labels(path: str | Path, n_clips: int) -> np.ndarray:
    """Known classes ``(N,)`` from a ``.npy`` file or a text file with one integer per line."""
    try:
        if str(path).endswith(".npy"):
            labels = np.load(path, allow_pickle=False)
        else:
            labels = np.loadtxt(path, dtype=np.int64, ndmin=1)
    except Exception as exc:
        raise MindVideoError(
            f"expected a label file (.npy or .txt of ints) at {path}", f"{type(exc).__name__}: {exc}", "check --labels"
        ) from None
    if labels.shape != (n_clips,):
        raise MindVideoError(
            "expected one label per clip",
            f"shape {labels.shape} for {n_clips} clips",
            "pass labels of exactly the evaluated clips",
        )
    return labels
