"""``mindvideo data``: simulate a dataset, prepare model-ready windows, inspect the result.

Each command wraps one library function (:func:`mindvideo.data.simulate`, :func:`mindvideo.data.prepare`,
:func:`mindvideo.data.inspect.describe`); outputs are written to a temporary folder and renamed at the end, so a
failed command leaves nothing behind.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from mindvideo.cli.group import Group


def _write_json(path: str | None, data: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _table(rows: list[tuple[str, Any]]) -> None:
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"  {key:<{width}}  {value}")


@click.group(cls=Group)
def data() -> None:
    """fMRI data: simulate a dataset, prepare windows for training, inspect prepared data.

    \b
    Example:
      mindvideo data simulate --out sim/
      mindvideo data prepare --layout wen --src sim/ --out prepared/
      mindvideo data inspect prepared/
    """


# --------------------------------------------------------------------------------------------------- simulate


@data.command()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to create (new or empty).")
@click.option("--overwrite", is_flag=True, help="Replace --out if it holds an earlier output of this command.")
@click.option("--subjects", default=1, show_default=True, help="Simulated subjects.")
@click.option("--classes", default=10, show_default=True, help="Semantic stimulus classes (2–12).")
@click.option("--minutes", type=float, default=None, help="Unique movie minutes (default ~19: 14 segments of 80 s).")
@click.option("--snr", default=1.0, show_default=True, help="Signal/noise std ratio of a responsive voxel.")
@click.option("--seed", default=0, show_default=True, help="Random seed: same seed, same files.")
@click.option("--formats", default="cifti,nifti,arrays", show_default=True, help="Any of cifti, nifti, arrays.")
@click.option("--size", default=64, show_default=True, help="Stimulus frame size in pixels.")
@click.option("--tiny", is_flag=True, help="A ~200-voxel, 32-pixel dataset for tests and demos (seconds).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write dataset.json's content here.")
def simulate(out, overwrite, subjects, classes, minutes, snr, seed, formats, size, tiny, json_path) -> None:
    """Write a simulated fMRI–video dataset with known ground truth in the Wen 2018 layout.

    Procedural clips of --classes semantic classes drive retinotopic and category-tuned voxels of a small voxel
    grid through a double-gamma HRF (TR 2 s) with drift and noise; runs are written as CIFTI-2 and NIfTI, stimuli
    as mp4 + captions, plus the reference arrays layout and truth/ (responsive voxels, class of every TR).

    \b
    Example:
      mindvideo data simulate --out sim/ --minutes 10 --snr 0.5 --seed 1
    """
    from mindvideo.data.simulate import SimConfig
    from mindvideo.data.simulate import simulate as run

    changes = dict(
        subjects=subjects,
        classes=classes,
        snr=snr,
        seed=seed,
        size=size,
        formats=tuple(f.strip() for f in formats.split(",") if f.strip()),
    )
    config = SimConfig.tiny(**changes) if tiny else SimConfig(**changes)
    if minutes is not None:
        config = SimConfig.from_minutes(minutes, **config.to_dict())
    info = run(out, config, progress=True, overwrite=overwrite)
    click.echo(f"simulated dataset written to {out}")
    subject = info["subjects"][0]
    _table(
        [
            ("segments", f"{len(info['train'])} train, {len(info['test'])} test of {config.segment_trs} TRs"),
            ("classes", ", ".join(info["classes"])),
            (
                "voxels",
                f"{subject['brain_voxels']} brain, {subject['visual_voxels']} visual, "
                f"{subject['responsive_voxels']} responsive (subject1)",
            ),
            ("formats", ", ".join(config.formats)),
        ]
    )
    _write_json(json_path, info)


# --------------------------------------------------------------------------------------------------- prepare


@data.command()
@click.option("--layout", required=True, type=click.Choice(["wen", "arrays", "hcp", "custom"]), help="Source layout.")
@click.option("--src", required=True, type=click.Path(file_okay=False), help="The dataset root.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Prepared folder (new or empty).")
@click.option("--overwrite", is_flag=True, help="Replace --out if it holds an earlier output of this command.")
@click.option("--subject", default="1", show_default=True, help="Subject (wen/arrays): 1 → subject1.")
@click.option("--fmri-format", default="cifti", show_default=True, type=click.Choice(["cifti", "nifti"]))
@click.option("--events", default="events.tsv", show_default=True, help="custom: onset table under --src.")
@click.option("--pattern", default="**/*.dtseries.nii", show_default=True, help="hcp: run files under --src.")
@click.option("--tr", type=float, help="Repetition time in s (default 2, or dataset.json).")
@click.option("--mask", type=click.Path(dir_okay=False), help="NIfTI runs: 3-D mask (non-zero = keep).")
@click.option("--atlas", type=click.Path(dir_okay=False), help="NIfTI runs: label atlas (with --labels).")
@click.option("--labels", help="Atlas labels to keep: integers or names from <atlas>.json, e.g. 1,2,3.")
@click.option("--cifti-select", help="CIFTI grayordinates: cortex (default), all, first:N, or structure names.")
@click.option("--array-key", help="Array runs: member of .npz / dataset of .h5.")
@click.option("--trim-start", type=int, help="Volumes dropped at each run's start [0].")
@click.option("--n-volumes", type=int, help="Volumes kept per run [the stimulus length in TRs].")
@click.option("--detrend", "detrend_order", type=int, help="Polynomial detrend order, -1 off [4; arrays -1].")
@click.option("--zscore/--no-zscore", default=None, help="Per-run z-score [on; arrays off].")
@click.option("--bad-voxels", type=click.Choice(["drop", "error"]), help="NaN/constant voxels [drop, logged].")
@click.option("--lag", type=int, help="Hemodynamic lag in TRs [0, as the reference].")
@click.option("--select", type=click.Choice(["ttest", "topk", "index", "all"]), help="Voxel selection [ttest].")
@click.option("--alpha", type=float, help="ttest: Bonferroni-corrected p threshold [0.01].")
@click.option("--top-k", type=int, help="topk: voxels kept.")
@click.option("--index-file", type=click.Path(dir_okay=False), help="index: .npy or text of raw voxel indices.")
@click.option("--normalise", type=click.Choice(["scalar", "voxel", "none"]), help="Train-fitted normalisation.")
@click.option("--window", "window_size", type=int, help="TRs per sample [2].")
@click.option("--patch", "patch_size", type=int, help="Voxels padded to a multiple of this [16].")
@click.option("--fps", default=3.0, show_default=True, help="Stimulus frames per second sampled.")
@click.option("--size", default=256, show_default=True, help="Frame size (centre crop + resize).")
@click.option("--no-video", is_flag=True, help="Skip video.npy (fMRI only).")
@click.option("--bin-trs", default=1, show_default=True, help="hcp: average blocks of this many volumes.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the summary here.")
def prepare(
    layout,
    src,
    out,
    overwrite,
    subject,
    fmri_format,
    events,
    pattern,
    tr,
    mask,
    atlas,
    labels,
    cifti_select,
    array_key,
    fps,
    size,
    no_video,
    bin_trs,
    json_path,
    **preprocess,
) -> None:
    """Turn a raw dataset into model-ready windows + the fitted transform (OUT/data_transform).

    Stages: trim → drop NaN/constant voxels → detrend + z-score per run → reproducibility between repeats →
    average repeats → voxel selection → train-fitted normalisation → wrap-padding → sliding windows.
    SRC/dataset.json (if present) supplies defaults for --tr / --mask / --atlas / --labels / --cifti-select.

    \b
    Example:
      mindvideo data prepare --layout wen --src wen2018/ --out prepared/ --subject 1 --select ttest --alpha 0.01
      mindvideo data prepare --layout custom --src mydata/ --out prepared/ --mask mydata/visual_mask.nii.gz
    """
    from mindvideo.data.prepare import PrepareConfig, preprocess_defaults, resolve_loading
    from mindvideo.data.prepare import prepare as run

    config = PrepareConfig(
        layout=layout,
        subject=subject,
        fmri_format=fmri_format,
        events=events,
        pattern=pattern,
        fps=fps,
        size=size,
        video=not no_video,
        bin_trs=bin_trs,
    )
    loading = resolve_loading(
        Path(src), config, tr=tr, mask=mask, atlas=atlas, labels=labels, cifti_select=cifti_select, array_key=array_key
    )
    summary = run(
        src,
        out,
        config=config,
        preprocess=preprocess_defaults(layout, **preprocess),
        loading=loading,
        progress=True,
        overwrite=overwrite,
    )
    click.echo(f"prepared dataset written to {out}")
    _print_prepare_summary(summary)
    _write_json(json_path, summary)


def _print_prepare_summary(summary: dict[str, Any]) -> None:
    voxels, rep = summary["voxels"], summary.get("reproducibility", {})
    rows = [
        ("windows", ", ".join(f"{k} {v}" for k, v in summary["counts"].items())),
        (
            "voxels",
            f"{voxels['raw']} raw, {voxels['bad']} dropped (NaN/constant), {voxels['selected']} selected "
            f"({rep.get('method', 'all')}), {voxels['model']} model input",
        ),
        ("window", f"{summary['window_size']} TRs, lag {summary.get('lag', 0)}"),
    ]
    if "mean_z_selected" in rep:
        z = f"mean Fisher z {rep['mean_z_all']:.3f} all, {rep['mean_z_selected']:.3f} selected"
        rows.append(("reproducibility", f"{z} over {rep['segments']} segments"))
    _table(rows)


# --------------------------------------------------------------------------------------------------- inspect


@data.command()
@click.argument("path", type=click.Path(exists=True))
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="PNG to write [PATH/inspect.png].")
@click.option("--no-plot", is_flag=True, help="Only print the summary.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the description here.")
def inspect(path, plot_path, no_plot, json_path) -> None:
    """Shapes, voxel counts and reproducibility of a prepared folder (plus a PNG plot of a few voxel time series
    and the reproducibility histogram), or shape/TR/value range of one run file.

    \b
    Example:
      mindvideo data inspect prepared/
      mindvideo data inspect sim/subject1/fmri/seg1/cifti/seg1_1_Atlas.dtseries.nii
    """
    from mindvideo.data.inspect import describe, plot_prepared

    info = describe(path)
    if info["kind"] == "run":
        _table(
            [
                ("shape", f"{info['shape']} (T, V)"),
                ("TR", f"{info['tr']} s"),
                ("non-finite values", info["nonfinite_values"]),
                ("constant voxels", info["constant_voxels"]),
                ("range", f"{info['min']} … {info['max']}"),
            ]
        )
    else:
        voxels = info["voxels"]
        _table(
            [
                ("layout", info["layout"]),
                ("source", info["source"]),
                *[(name, shape) for name, shape in info["shapes"].items()],
                ("voxels", f"{voxels['raw']} raw → {voxels['selected']} selected → {voxels['model']} model"),
            ]
        )
        if not no_plot:
            png = plot_prepared(path, plot_path or Path(path) / "inspect.png")
            click.echo(f"plot written to {png}")
    _write_json(json_path, info)
