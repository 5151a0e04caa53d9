"""``mindvideo explain`` on a checkpoint with a fitted data transform (simulated data, CIFTI and NIfTI reads)."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from mindvideo.checkpoint import build_random_checkpoint
from mindvideo.cli import main
from mindvideo.data import FMRITransform, LoadConfig, PrepareConfig, SimConfig, prepare, preprocess_defaults, simulate
from mindvideo.eval.explain import tokens_to_raw


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain")
    simulate(root / "sim", SimConfig.tiny(seed=5))
    return root


def prepared_checkpoint(root, name, loading=None, layout="wen"):
    prepare(
        root / "sim" if layout == "wen" else root / "sim" / "subject1",
        root / f"prep_{name}",
        config=PrepareConfig(layout=layout, size=32, video=False),
        preprocess=preprocess_defaults(layout),
        **({"loading": loading} if loading else {}),
    )
    transform = FMRITransform.load(root / f"prep_{name}" / "data_transform")
    ckpt = build_random_checkpoint(root / f"ckpt_{name}", "tiny", num_voxels=transform.num_voxels)
    shutil.copytree(root / f"prep_{name}" / "data_transform", ckpt / "data_transform")
    return ckpt, root / f"prep_{name}", transform


def test_tokens_to_raw_follows_patches_and_wrap_padding():
    keep = np.array([5, 1, 7])  # 3 kept raw voxels, model voxels padded to 4 (patch 2) by wrapping
    tokens = np.array([[1.0, 3.0]])  # patch 0 = model voxels 0, 1; patch 1 = model voxels 2, 3 (3 is kept 0)
    raw = tokens_to_raw(tokens, keep, 8, 2)
    np.testing.assert_allclose(raw[0, [5, 1, 7]], [(1 + 3) / 2, 1.0, 3.0])
    assert raw[0, [0, 2, 3, 4, 6]].sum() == 0


def test_explain_cifti_data_writes_nifti_inside_the_mask(sim, tmp_path):
    ckpt, prep, _ = prepared_checkpoint(sim, "cifti")
    template = sim / "sim" / "subject1" / "fmri" / "seg1" / "cifti" / "seg1_1_Atlas.dtseries.nii"
    out = tmp_path / "explain"
    args = [
        "explain",
        "--checkpoint",
        ckpt,
        "--data",
        prep,
        "--template",
        template,
        "--out",
        out,
        "--truth",
        sim / "sim" / "truth" / "subject1.npz",
    ]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    print(result.output)
    volume = nib.load(out / "spatial_attention.nii.gz").get_fdata()
    visual = nib.load(sim / "sim" / "subject1" / "anat" / "visual_mask.nii.gz").get_fdata() > 0
    assert volume.shape[-1] == 2 and (volume != 0).any()
    assert not (volume != 0).any(axis=-1)[~visual].any()  # every non-zero voxel lies in the visual mask
    assert nib.load(out / "temporal_attention.dscalar.nii").shape[0] == 2
    assert (out / "spatial_block0.png").is_file() and "chance" in result.output


def test_explain_nifti_data_uses_the_transform_mask(sim, tmp_path):
    loading = LoadConfig(mask=str(sim / "sim" / "subject1" / "anat" / "visual_mask.nii.gz"))
    ckpt, prep, transform = prepared_checkpoint(sim, "nifti", loading, layout="custom")
    out = tmp_path / "explain"
    result = CliRunner().invoke(main, ["explain", "--checkpoint", str(ckpt), "--data", str(prep), "--out", str(out)])
    assert result.exit_code == 0, result.output
    volume = nib.load(out / "spatial_attention.nii.gz").get_fdata()
    assert not (volume != 0).any(axis=-1)[~transform.mask.array].any()


def test_explain_errors(sim, tmp_path, tiny_ckpt):
    ckpt, prep, _ = prepared_checkpoint(sim, "errs")
    no_template = CliRunner().invoke(
        main, ["explain", "--checkpoint", str(ckpt), "--data", str(prep), "--out", str(tmp_path / "a")]
    )
    assert no_template.exit_code == 2 and "--template" in no_template.output and not (tmp_path / "a").exists()
    no_transform = CliRunner().invoke(
        main, ["explain", "--checkpoint", str(tiny_ckpt), "--data", str(prep), "--out", str(tmp_path / "b")]
    )
    assert no_transform.exit_code == 2 and "data_transform" in no_transform.output
