"""An evaluation report folder from :func:`~mindvideo.eval.evaluate.evaluate`'s metrics: :func:`write_report`.

``out/`` holds

* ``metrics.json`` — the metrics dict as is;
* ``report.md`` — this run's numbers (every computed n-way, SSIM in both conventions named, CLIP-pcc), the protocol
  settings, a per-frame-position table, and, in a section of their own with a caption saying when they are comparable,
  the published MinD-Video / NeuroClips / NEURONS numbers on the Wen 2018 test set (never a row beside ours: on
  simulated data or another test set they do not compare);
* ``best.{gif,png}``, ``median.{gif,png}``, ``worst.{gif,png}`` — clips ranked by a per-clip score (colour SSIM by
  default), ground truth | reconstruction side by side (GIF: animated; PNG: ground-truth frames above
  reconstructed frames);
* ``metrics.png`` — a bar plot of this run's columns with their std and the chance levels (matplotlib).

The folder is written atomically: on any error nothing (not even a partial folder) is left at ``out``. ``out`` must
be new or empty, or (with ``overwrite``) an earlier report (:func:`mindvideo.fsutil.check_output_folder`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from mindvideo.errors import MindVideoError
from mindvideo.fsutil import atomic_folder

log = logging.getLogger(__name__)

# Published results on the Wen 2018 test set, mean of subjects ("~": secondary source, not verified against the paper):
# MinD-Video ("Cinematic Mindscapes", NeurIPS 2023), NeuroClips (NeurIPS 2024), NEURONS (ICCV 2025).
COLUMNS = ("video 2-way", "video 50-way", "frame 2-way", "frame 50-way", "SSIM", "CLIP-pcc")
PUBLISHED: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("MinD-Video (2023)", ("0.839", "0.197", "0.796", "~0.17", "~0.17 (colour)", "0.408")),
    ("NeuroClips (NeurIPS 2024)", ("0.834", "0.220", "~0.81", "~0.20", "~0.39", "0.738")),
    ("NEURONS (ICCV 2025)", ("0.863", "0.262", "–", "–", "–", "0.934")),
)
OURS = "mindvideo (this run)"
GROUPS = ("best", "median", "worst")
COMMAND = "eval"  # the marker of a report folder, also one written by `generate --eval`


def write_report(
    metrics: dict[str, Any],
    pred: np.ndarray,
    gt: np.ndarray,
    out: str | Path,
    *,
    rank_by: str = "ssim_colour",
    clips_per_group: int = 3,
    fps: float = 3.0,
    tile: int = 128,
    overwrite: bool = False,
) -> Path:
    """Write the report folder ``out`` and return its path (``overwrite``: replace an earlier report there).

    ``pred`` / ``gt`` are the ``(N, F, H, W, 3)`` uint8 arrays given to ``evaluate`` (all clips; the evaluated ones
    are ``metrics["per_clip"]["index"]``). ``rank_by`` is a key of ``metrics["per_clip"]`` (higher = better);
    frames in the grids are scaled to at most ``tile`` pixels high; GIFs play at ``fps``.
    """
    groups = rank_clips(metrics["per_clip"], rank_by, clips_per_group)
    with atomic_folder(out, COMMAND, overwrite=overwrite) as tmp:
        text = json.dumps(metrics, indent=2, allow_nan=False)
        (tmp / "metrics.json").write_text(text + "\n", encoding="utf-8")
        for name, index in groups.items():
            write_grid(pred[index], gt[index], tmp / name, fps=fps, tile=tile)
        plotted = write_bar_plot(metrics, tmp / "metrics.png")
        (tmp / "report.md").write_text(markdown(metrics, groups, rank_by, plotted), encoding="utf-8")
    log.info("wrote the report to %s", out)
    return Path(out)


# --------------------------------------------------------------------------------------------------- numbers


PUBLISHED_CAPTION = (
    'Published numbers on the **Wen 2018 test set** (mean of subjects; "~" = secondary source, not verified against '
    "the paper), measured with the reference protocol: ImageNet ViT-B/16 frame and VideoMAE Kinetics-400 video "
    "classifiers, true classes = the classifier's top-3 on the ground truth, colour SSIM at 256². They are shown "
    "for orientation and are **not comparable** with this run unless it scored that test set with that protocol; "
    "numbers on simulated data, another dataset, known labels or another classifier do not compare with them."
)


def ours(metrics: dict[str, Any]) -> dict[str, tuple[float, float] | None]:
    """This run's (mean, std) per column — every computed video and frame n-way, colour and grey SSIM, CLIP-pcc —
    ``None`` where not computed."""
    columns: dict[str, tuple[float, float] | None] = {}
    for level in ("video", "frame"):
        for n, entry in (metrics.get(f"{level}_nway") or {}).items():
            if "mean" in entry:
                columns[f"{level} {n}-way"] = _pair(entry)
    columns["SSIM (colour)"] = _pair(metrics.get("ssim_colour"))
    columns["SSIM (grey)"] = _pair(metrics.get("ssim_grey"))
    columns["CLIP-pcc"] = _pair(metrics.get("clip_pcc"))
    return columns


def summary_rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """The headline numbers as (name, value) rows, for a terminal table: every computed n-way, SSIM in both
    conventions, PSNR and the CLIP metrics."""
    clips = metrics["clips"]
    rows = [("clips", f"{clips['evaluated']} evaluated of {clips['given']}")]
    for level in ("video", "frame"):
        for n, entry in (metrics.get(f"{level}_nway") or {}).items():
            rows.append((f"{level} {n}-way", _cell(_pair(entry)) if "mean" in entry else "– (skipped)"))
    rows += [
        ("SSIM (colour)", _cell(_pair(metrics["ssim_colour"]))),
        ("SSIM (grey)", _cell(_pair(metrics["ssim_grey"]))),
        ("PSNR (dB)", _cell(_pair(metrics["psnr"]), 2)),
        ("CLIP similarity", _cell(_pair(metrics.get("clip_similarity")))),
        ("CLIP-pcc (adjacent-frame CLIP similarity)", _cell(_pair(metrics.get("clip_pcc")))),
    ]
    return rows


def _cell(value: tuple[float, float] | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value[0]:.{digits}f} ± {value[1]:.{digits}f}"


def rank_clips(per_clip: dict[str, Any], rank_by: str, k: int) -> dict[str, list[int]]:
    """Indices (into the arrays given to ``evaluate``) of the ``k`` best, median and worst clips by
    ``per_clip[rank_by]`` (higher = better)."""
    if per_clip.get(rank_by) is None:
        have = sorted(key for key, value in per_clip.items() if value and key not in ("index", "name"))
        raise MindVideoError(
            f"expected per-clip scores {rank_by!r} to rank clips by",
            f"only {have}",
            "rank by one of those (clip_similarity needs a CLIP model)",
        )
    scores, index = np.asarray(per_clip[rank_by], dtype=np.float64), np.asarray(per_clip["index"])
    order = np.argsort(-scores, kind="stable")  # best first
    k = max(1, min(k, len(order)))
    mid = max(0, min(len(order) - k, (len(order) - k) // 2))
    picks = {"best": order[:k], "median": order[mid : mid + k], "worst": order[::-1][:k]}
    return {name: index[p].tolist() for name, p in picks.items()}


# --------------------------------------------------------------------------------------------------- Markdown


def markdown(metrics: dict[str, Any], groups: dict[str, list[int]], rank_by: str, plotted: bool = True) -> str:
    """The ``report.md`` text."""
    clips, video, settings = metrics["clips"], metrics["video"], metrics["settings"]
    lines = [
        "# mindvideo evaluation",
        "",
        f"{clips['evaluated']} clips evaluated of {clips['given']} given"
        + (
            f" ({clips['dropped_by_scene_filter']} removed by the scene filter)"
            if settings.get("scene_filter")
            else ""
        )
        + f"; {video['frames']} frames of {video['height']}×{video['width']} per clip.",
        "",
        "## This run",
        "",
        *_main_table(metrics),
        "",
        *_notes(metrics),
        "",
        "## Per frame position",
        "",
        *_frame_table(metrics),
        "",
        "## Clips",
        "",
        f"Ranked by per-clip mean `{rank_by}`; ground truth | reconstruction.",
        "",
        *_clip_section(metrics, groups, rank_by),
    ]
    if plotted:
        lines += ["", "## Plot", "", "![metrics](metrics.png)", ""]
    lines += ["## Published results (Wen 2018 test set)", "", *_published_section(metrics)]
    return "\n".join(lines) + "\n"


def _main_table(metrics: dict[str, Any]) -> list[str]:
    mine = ours(metrics)
    return [
        f"| | {' | '.join(mine)} |",
        "|" + "---|" * (len(mine) + 1),
        f"| **{OURS}** | {' | '.join(_cell(v) for v in mine.values())} |",
    ]


def _published_section(metrics: dict[str, Any]) -> list[str]:
    """The published table under its caption, and why this run does not compare when its settings say so."""
    lines = [PUBLISHED_CAPTION, ""]
    if metrics["settings"].get("true_classes") == "labels":
        lines += ["This run took known labels as the true classes (chance 1/n): another protocol, not comparable.", ""]
    lines += [f"| Wen 2018 test, mean of subjects | {' | '.join(COLUMNS)} |", "|" + "---|" * (len(COLUMNS) + 1)]
    return lines + [f"| {name} | {' | '.join(values)} |" for name, values in PUBLISHED]


def _notes(metrics: dict[str, Any]) -> list[str]:
    s = metrics["settings"]
    notes = [
        f"- **SSIM**: {metrics['ssim_colour']['convention']} — the convention of MinD-Video's published number; "
        f"{metrics['ssim_grey']['convention']} — compare this one with later papers. ± = std over all evaluated "
        "frames (per clip for CLIP-pcc).",
    ]
    if metrics.get("frame_nway") or metrics.get("video_nway"):
        chance = ", ".join(f"{n}-way {_chance(metrics, n):.3f}" for n in map(str, s["n_ways"]) if _chance(metrics, n))
        notes.append(
            f"- **n-way top-{s['top_k']}**: {s['num_trials']} trials per sample, seed {s['seed']}, true classes = "
            f"{s['true_classes']}; ± is the mean binomial std. Chance level under this protocol: {chance}."
        )
        for level in ("video_nway", "frame_nway"):
            entries = (metrics.get(level) or {}).items()
            done = [f"{n}-way {_cell(_pair(e))}" for n, e in entries if "mean" in e]
            if done:
                notes.append(f"- {level.split('_')[0]} level: {', '.join(done)}.")
            notes += [
                f"- {level.split('_')[0]} {n}-way not computed: {e['skipped']}." for n, e in entries if "skipped" in e
            ]
    else:
        notes.append("- **n-way**: not computed (pass `--classifier` / `--video-classifier`).")
    for key in ("classifier", "video_classifier", "clip"):
        if s.get(key):
            notes.append(f"- {key.replace('_', ' ')}: `{s[key]}`")
    if metrics.get("clip_pcc"):
        notes.append(
            f"- **CLIP-pcc** = adjacent-frame CLIP similarity of the reconstructions (no ground truth involved); "
            f"ground truth: {_cell(_pair(metrics['clip_pcc_gt']))}. CLIP similarity reconstruction ↔ ground truth: "
            f"{_cell(_pair(metrics['clip_similarity']))}."
        )
    else:
        notes.append("- **CLIP-pcc**: not computed (pass `--clip`).")
    psnr = metrics["psnr"]
    notes.append(f"- PSNR: {psnr['mean']:.2f} ± {psnr['std']:.2f} dB (capped at {psnr['cap']:.0f} dB).")
    return notes


def _pair(entry: dict[str, Any] | None) -> tuple[float, float] | None:
    return None if not entry or entry.get("mean") is None else (entry["mean"], entry["std"])


def _chance(metrics: dict[str, Any], n: str) -> float | None:
    for level in ("frame_nway", "video_nway"):
        entry = (metrics.get(level) or {}).get(n) or {}
        if "chance" in entry:
            return entry["chance"]
    return None


def _frame_table(metrics: dict[str, Any]) -> list[str]:
    columns = [
        ("SSIM colour", metrics["ssim_colour"]),
        ("SSIM grey", metrics["ssim_grey"]),
        ("PSNR (dB)", metrics["psnr"]),
    ]
    for n, entry in (metrics.get("frame_nway") or {}).items():
        if "per_frame" in entry:
            columns.append((f"frame {n}-way", entry))
    if metrics.get("clip_similarity"):
        columns.append(("CLIP similarity", metrics["clip_similarity"]))
    lines = ["| frame | " + " | ".join(name for name, _ in columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for f in range(metrics["video"]["frames"]):
        cells = [_cell(_pair(entry["per_frame"][f]), 2 if "PSNR" in name else 3) for name, entry in columns]
        lines.append(f"| {f} | " + " | ".join(cells) + " |")
    return lines


def _clip_section(metrics: dict[str, Any], groups: dict[str, list[int]], rank_by: str) -> list[str]:
    per_clip = metrics["per_clip"]
    position = {clip: i for i, clip in enumerate(per_clip["index"])}
    lines = []
    for name, index in groups.items():
        described = []
        for clip in index:
            label = per_clip["name"][position[clip]] if per_clip.get("name") else f"clip {clip}"
            described.append(f"{label} ({per_clip[rank_by][position[clip]]:.3f})")
        lines += [f"**{name}**: {', '.join(described)}", "", f"![{name}]({name}.png) ![{name}]({name}.gif)", ""]
    return lines


# --------------------------------------------------------------------------------------------------- images


def _resize(frames: np.ndarray, height: int) -> np.ndarray:
    """``(M, H, W, 3)`` uint8 scaled (bilinear) to at most ``height`` pixels high."""
    if frames.shape[1] <= height:
        return np.asarray(frames)
    from PIL import Image

    width = max(1, round(frames.shape[2] * height / frames.shape[1]))
    return np.stack([np.asarray(Image.fromarray(f).resize((width, height), Image.BILINEAR)) for f in frames])


def _hstack(frames: list[np.ndarray], gap: int) -> np.ndarray:
    """Frames ``(H, W, 3)`` side by side with white gaps of ``gap`` pixels."""
    spacer = np.full((frames[0].shape[0], gap, 3), 255, dtype=np.uint8)
    parts = [p for f in frames for p in (f, spacer)][:-1]
    return np.concatenate(parts, axis=1)


def _vstack(rows: list[np.ndarray], gap: int) -> np.ndarray:
    spacer = np.full((gap, rows[0].shape[1], 3), 255, dtype=np.uint8)
    parts = [p for r in rows for p in (r, spacer)][:-1]
    return np.concatenate(parts, axis=0)


def write_grid(pred: np.ndarray, gt: np.ndarray, stem: Path, *, fps: float = 3.0, tile: int = 128) -> None:
    """``stem.png``: per clip, the ground-truth frames in a row above the reconstructed frames; ``stem.gif``: per
    clip a row ``ground truth | reconstruction``, animated over frames. Inputs ``(K, F, H, W, 3)`` uint8."""
    import imageio.v3 as iio

    k, f = pred.shape[:2]
    small_gt = _resize(gt.reshape(k * f, *gt.shape[2:]), tile)  # (K·F, h, w, 3)
    small_pred = _resize(pred.reshape(k * f, *pred.shape[2:]), tile)
    small_gt, small_pred = (x.reshape(k, f, *x.shape[1:]) for x in (small_gt, small_pred))  # (K, F, h, w, 3)
    rows = [_vstack([_hstack(list(small_gt[i]), 2), _hstack(list(small_pred[i]), 2)], 2) for i in range(k)]
    iio.imwrite(stem.with_suffix(".png"), _vstack(rows, 8))
    frames = [_vstack([_hstack([small_gt[i, t], small_pred[i, t]], 4) for i in range(k)], 8) for t in range(f)]
    iio.imwrite(stem.with_suffix(".gif"), np.stack(frames), duration=1000.0 / fps, loop=0)


def write_bar_plot(metrics: dict[str, Any], path: Path) -> bool:
    """This run's columns (:func:`ours`) as bars with their std, chance levels marked on the n-way bars. Returns
    ``False`` (and logs a warning) when matplotlib is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        log.warning("matplotlib is not installed; skipping %s (pip install matplotlib)", path.name)
        return False
    columns = {name: value for name, value in ours(metrics).items() if value is not None}
    figure = Figure(figsize=(max(5.0, 1.1 * len(columns) + 1.5), 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    x = np.arange(len(columns))
    axes.bar(x, [v[0] for v in columns.values()], 0.6, yerr=[v[1] for v in columns.values()], capsize=3)
    ways = [(i, name.split()[1].removesuffix("-way")) for i, name in enumerate(columns) if name.endswith("-way")]
    chance = [(i, _chance(metrics, n)) for i, n in ways if _chance(metrics, n) is not None]
    if chance:
        axes.scatter(*zip(*chance), marker="_", s=600, color="black", zorder=3, label="chance")
        axes.legend(fontsize=8, frameon=False)
    axes.set_xticks(x, list(columns), rotation=20)
    axes.set_ylim(min(0.0, *(v[0] - v[1] for v in columns.values())), 1.1)
    axes.set_ylabel("score")
    axes.set_title(f"this run: {metrics['clips']['evaluated']} clips")
    figure.tight_layout()
    figure.savefig(path)
    return True
