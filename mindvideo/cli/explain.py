"""``mindvideo explain``: the fMRI encoder's attention, projected onto the brain."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from mindvideo.errors import MindVideoError
from mindvideo.fsutil import atomic_folder, check_output_folder

COMMAND = "explain"


@click.command()
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path), help="Checkpoint with data_transform/.")
@click.option("--data", type=click.Path(path_type=Path), help="A prepared dataset (mindvideo data prepare).")
@click.option("--split", default="test", show_default=True, help="Which split of --data to explain.")
@click.option(
    "--fmri",
    "fmri_path",
    type=click.Path(path_type=Path),
    help="Or windows .npy/.npz (N, window, voxels), e.g. the demo's test_set.npz.",
)
@click.option(
    "--template",
    type=click.Path(path_type=Path),
    help="A CIFTI run of the subject: only for transforms saved without their grayordinates (older versions).",
)
@click.option("--max-windows", default=256, show_default=True, help="Windows averaged (the first N).")
@click.option("--truth", type=click.Path(path_type=Path), help="Simulated data only: truth/subjectN.npz to score.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder (new or empty).")
@click.option("--overwrite", is_flag=True, help="Replace --out if it holds an earlier explain output.")
def explain(checkpoint, data, split, fmri_path, template, max_windows, truth, out, overwrite):
    """Write per-block spatial and temporal attention of the fMRI encoder as brain maps.

    NIfTI volumes (one volume per encoder block) where the voxels have a place in a volume, CIFTI dscalars on the
    grayordinates of CIFTI-read data, and PNG slices of the first, middle and last blocks.

    \b
    Example:
      mindvideo explain --checkpoint CKPT --data prepared/ --out explain/
      mindvideo explain --checkpoint mindvideo/assets/demo/checkpoint \\
          --fmri mindvideo/assets/demo/test_set.npz --out explain/
    """
    from mindvideo.checkpoint import load_fmri_encoder
    from mindvideo.cli.core import print_table
    from mindvideo.data import FMRITransform
    from mindvideo.eval import explain as ex
    from mindvideo.media import read_fmri_array

    if (data is None) == (fmri_path is None):
        raise MindVideoError("expected exactly one of --data or --fmri", "both or neither", "pass one")
    check_output_folder(out, COMMAND, overwrite=overwrite)
    transform = FMRITransform.load(Path(checkpoint) / "data_transform")
    encoder = load_fmri_encoder(Path(checkpoint) / "fmri_encoder").eval()
    if data is not None:
        path = Path(data) / split / "fmri.npy"
        if not path.is_file():
            raise MindVideoError(
                f"expected a prepared dataset with {split}/fmri.npy", f"none in {data}", "check --data"
            )
        windows = np.load(path, mmap_mode="r")[:max_windows]
    else:
        windows = read_fmri_array(fmri_path)[:max_windows]
    space = ex.brain_space(transform, template)
    truth_raw = None if truth is None else ex.truth_on_raw_voxels(Path(truth), space)
    maps = ex.explain(encoder, transform, np.asarray(windows))
    with atomic_folder(out, COMMAND, overwrite=overwrite) as tmp:
        written = ex.write_explanation(maps, space, tmp)
    rows = [("windows", str(len(windows))), ("blocks", str(maps.layers)), ("files", str(len(written)))]
    if truth_raw is not None:
        for kind, values in maps.voxels.items():
            hit, chance = ex.top_overlap(values.mean(0), truth_raw)
            rows.append((f"{kind}: top-10% voxels responsive", f"{hit:.2f} (chance {chance:.2f})"))
        if chance > 0.99:
            rows.append(("note", "every voxel the transform kept responds: prepare with --select all to test this"))
    print_table(rows, title=f"mindvideo explain → {out}")
