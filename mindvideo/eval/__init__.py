"""Evaluation of reconstructed videos: the field's metrics and a report folder.

Every metric takes reconstructions and ground truth as ``(N, F, H, W, 3)`` uint8 arrays (N clips, F frames, RGB):

* pixels — :func:`ssim` in two named conventions (:data:`COLOUR_SSIM`, the MinD-Video reference's; :data:`GREY_SSIM`,
  later papers'), :func:`psnr`; :func:`summarise` gives the mean ± std per frame position and overall;
* semantics — n-way top-k classification accuracy at frame and video level with any classifier
  (:mod:`mindvideo.eval.semantic`, the reference protocol; :mod:`mindvideo.eval.classifiers` for ViT, VideoMAE and
  a pixel classifier for simulated data);
* CLIP — similarity to the ground truth and CLIP-pcc (adjacent-frame CLIP similarity) (:mod:`mindvideo.eval.clip`).

:func:`evaluate` computes them all (with an optional scene-cut filter); :func:`write_report` writes ``metrics.json``,
a Markdown table (the published Wen 2018 numbers in a section of their own), best/median/worst clip grids and a bar
plot. ``mindvideo eval`` wraps both.
"""

from __future__ import annotations

from mindvideo.eval.classifiers import (
    FrameAveragedVideoClassifier,
    PixelClassifier,
    load_frame_classifier,
    load_video_classifier,
    load_videomae_classifier,
    load_vit_classifier,
)
from mindvideo.eval.clip import ClipEmbedder, adjacent_similarity, clip_similarity, load_clip
from mindvideo.eval.evaluate import evaluate
from mindvideo.eval.metrics import COLOUR_SSIM, GREY_SSIM, SSIMConvention, psnr, ssim, ssim_frames, summarise
from mindvideo.eval.report import write_report
from mindvideo.eval.semantic import chance_level, frame_level, n_way_accuracy, n_way_top_k, true_classes, video_level
from mindvideo.eval.videos import load_pair, load_scene_ids, load_videos, scene_mask

__all__ = [
    "COLOUR_SSIM",
    "GREY_SSIM",
    "ClipEmbedder",
    "FrameAveragedVideoClassifier",
    "PixelClassifier",
    "SSIMConvention",
    "adjacent_similarity",
    "chance_level",
    "clip_similarity",
    "evaluate",
    "frame_level",
    "load_clip",
    "load_frame_classifier",
    "load_pair",
    "load_scene_ids",
    "load_video_classifier",
    "load_videomae_classifier",
    "load_videos",
    "load_vit_classifier",
    "n_way_accuracy",
    "n_way_top_k",
    "psnr",
    "scene_mask",
    "ssim",
    "ssim_frames",
    "summarise",
    "true_classes",
    "video_level",
    "write_report",
]
