"""``mindvideo explain`` on a checkpoint with a fitted data transform (simulated data, CIFTI and NIfTI reads)."""

from __future__ import annotations

import json
import re
import shutil

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from mindvideo.checkpoint import build_random_checkpoint
from mindvideo.cli import main
from mindvideo.data import FMRITransform, LoadConfig, PrepareConfig, SimConfig, prepare, preprocess_defaults, simulate
from mindvideo.eval.explain import tokens_to_raw

STEPS = 150  # MBM steps of the trained-encoder check (~10 s on one core)


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


def template_run(sim):
    return sim / "sim" / "subject1" / "fmri" / "seg1" / "cifti" / "seg1_1_Atlas.dtseries.nii"


def cortex_models(sim):
    """The grayordinates a transform with the default ``cifti_select="cortex"`` reads."""
    models = nib.load(template_run(sim)).header.get_axis(1)
    return models[np.char.find(models.name, "CORTEX") >= 0]


def test_transform_keeps_the_cifti_grayordinates(sim):
    ckpt, _, _ = prepared_checkpoint(sim, "gray")
    reloaded = FMRITransform.load(ckpt / "data_transform")
    assert len(reloaded.grayordinates) == reloaded.n_raw
    assert reloaded.grayordinates.axis() == cortex_models(sim)


def test_explain_cifti_data_writes_nifti_inside_the_mask(sim, tmp_path):
    ckpt, prep, _ = prepared_checkpoint(sim, "cifti")
    out = tmp_path / "explain"
    args = [
        "explain",
        "--checkpoint",
        ckpt,
        "--data",
        prep,
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
    dscalar = nib.load(out / "temporal_attention.dscalar.nii")
    assert dscalar.shape[0] == 2 and dscalar.header.get_axis(1) == cortex_models(sim)
    assert (out / "spatial_block0.png").is_file() and "chance" in result.output


def test_explain_nifti_data_uses_the_transform_mask(sim, tmp_path):
    loading = LoadConfig(mask=str(sim / "sim" / "subject1" / "anat" / "visual_mask.nii.gz"))
    ckpt, prep, transform = prepared_checkpoint(sim, "nifti", loading, layout="custom")
    out = tmp_path / "explain"
    result = CliRunner().invoke(main, ["explain", "--checkpoint", str(ckpt), "--data", str(prep), "--out", str(out)])
    assert result.exit_code == 0, result.output
    volume = nib.load(out / "spatial_attention.nii.gz").get_fdata()
    assert not (volume != 0).any(axis=-1)[~transform.mask.array].any()


def test_explain_older_transform_takes_a_template(sim, tmp_path):
    ckpt, prep, transform = prepared_checkpoint(sim, "old")
    transform.grayordinates = None  # a transform saved before grayordinates were recorded
    transform.save(ckpt / "data_transform")
    base = ["explain", "--checkpoint", str(ckpt), "--data", str(prep)]
    no_template = CliRunner().invoke(main, [*base, "--out", str(tmp_path / "a")])
    assert no_template.exit_code == 2 and "--template" in no_template.output and not (tmp_path / "a").exists()
    with_template = CliRunner().invoke(
        main, [*base, "--template", str(template_run(sim)), "--out", str(tmp_path / "b")]
    )
    assert with_template.exit_code == 0, with_template.output
    assert (tmp_path / "b" / "spatial_attention.nii.gz").is_file()


def test_explain_errors(sim, tmp_path, tiny_ckpt):
    _, prep, _ = prepared_checkpoint(sim, "errs")
    no_transform = CliRunner().invoke(
        main, ["explain", "--checkpoint", str(tiny_ckpt), "--data", str(prep), "--out", str(tmp_path / "b")]
    )
    assert no_transform.exit_code == 2 and "data_transform" in no_transform.output


def test_trained_encoder_attends_to_the_responsive_voxels(sim, tmp_path):
    """MBM-pretrain an encoder on every visual voxel (no selection, one voxel per token): the voxels it attends to
    most are the simulation's responsive voxels far more often than chance (the share of responsive voxels)."""
    from mindvideo.train.stages import STAGES
    from mindvideo.train.trainer import train

    prep = sim / "prep_all"
    prepare(
        sim / "sim",
        prep,
        config=PrepareConfig(layout="wen", size=32, video=False),
        preprocess=preprocess_defaults("wen", select="all", patch_size=1),
    )
    overrides = {"encoder.patch_size": 1, "train.steps": STEPS, "train.threads": 1, "train.seed": 0}
    train(
        STAGES["mbm"](STAGES["mbm"].config_class.from_preset("demo").apply_overrides(overrides), prep),
        tmp_path / "mbm",
    )
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tmp_path / "mbm" / "model" / "fmri_encoder", ckpt / "fmri_encoder")
    shutil.copytree(prep / "data_transform", ckpt / "data_transform")
    args = ["explain", "--checkpoint", ckpt, "--data", prep, "--out", tmp_path / "explain"]
    result = CliRunner().invoke(main, [str(a) for a in [*args, "--truth", sim / "sim" / "truth" / "subject1.npz"]])
    assert result.exit_code == 0, result.output
    print(result.output)
    line = next(row for row in result.output.splitlines() if "spatial: top-10%" in row)
    hit, chance = (float(v) for v in re.findall(r"\d\.\d+", line))
    assert 0.3 < chance < 0.7 and hit > chance + 0.15, line


def test_explain_on_the_demo_model(tmp_path):
    """The built-in demo model (CIFTI-trained) needs no template: its transform records its grayordinates. Its maps
    lie inside the visual mask of the demo's simulated data, re-simulated from the config in recipe.json."""
    from mindvideo.demo import default_assets

    assets = default_assets()
    record = json.loads((assets / "recipe.json").read_text())
    simulate(tmp_path / "sim", SimConfig.from_dict(record["data"]["simulate"]))
    out = tmp_path / "explain"
    args = ["explain", "--checkpoint", assets / "checkpoint", "--fmri", assets / "test_set.npz", "--out", out]
    result = CliRunner().invoke(
        main, [str(a) for a in [*args, "--truth", tmp_path / "sim" / "truth" / "subject1.npz"]]
    )
    assert result.exit_code == 0, result.output
    print(result.output)
    image = nib.load(out / "spatial_attention.nii.gz")
    visual = nib.load(tmp_path / "sim" / "subject1" / "anat" / "visual_mask.nii.gz")
    assert image.shape[:3] == visual.shape and np.allclose(image.affine, visual.affine)
    nonzero = (image.get_fdata() != 0).any(axis=-1)
    assert nonzero.any() and not nonzero[visual.get_fdata() == 0].any()
    assert nib.load(out / "spatial_attention.dscalar.nii").shape == (2, 432)


def test_mixed_surface_and_volume_grayordinates_write_both_maps(tmp_path):
    """CIFTI data with surface vertices and volume voxels: the dscalar holds every grayordinate, the NIfTI the volume
    part, each value at its own voxel."""
    from types import SimpleNamespace

    from nibabel.cifti2 import BrainModelAxis

    from mindvideo.data.io import Grayordinates
    from mindvideo.eval.explain import AttentionMaps, brain_space, write_explanation

    mask = np.zeros((4, 4, 4), bool)
    mask[1, 1, 1] = mask[2, 2, 2] = mask[3, 1, 0] = True
    axis = BrainModelAxis.from_surface(np.arange(5), 10, name="CortexLeft") + BrainModelAxis.from_mask(
        mask, name="ThalamusLeft", affine=np.eye(4)
    )
    gray = Grayordinates(
        np.asarray(axis.name).astype(str),
        np.asarray(axis.vertex, np.int64),
        np.asarray(axis.voxel, np.int64),
        axis.affine,
        axis.volume_shape,
        dict(axis.nvertices),
    )
    space = brain_space(SimpleNamespace(mask=None, grayordinates=gray, n_raw=len(gray)))
    values = np.arange(1, 17, dtype=np.float32).reshape(2, 8)  # 2 blocks × (5 vertices + 3 voxels)
    write_explanation(AttentionMaps({"spatial": values[:, :1]}, {"spatial": values}), space, tmp_path)
    volume = nib.load(tmp_path / "spatial_attention.nii.gz").get_fdata()
    np.testing.assert_array_equal(volume[mask.nonzero()], values[:, 5:].T)  # C order, as the mask lists them
    assert (volume != 0).sum() == 6
    dscalar = nib.load(tmp_path / "spatial_attention.dscalar.nii")
    assert dscalar.header.get_axis(1) == axis and np.array_equal(dscalar.get_fdata(), values)
