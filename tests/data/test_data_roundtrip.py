"""simulate → prepare round trips: windows line up with the stimulus, voxel selection finds the responsive voxels,
every layout of the same data gives the same windows, and the saved transform reproduces them."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from click.testing import CliRunner

from mindvideo.cli import main
from mindvideo.data import (
    FMRITransform,
    HCPStream,
    LayoutDataset,
    LoadConfig,
    PrepareConfig,
    PreparedDataset,
    SimConfig,
    prepare,
    preprocess_defaults,
    simulate,
)
from mindvideo.data.io import read_video
from mindvideo.data.layouts import wen_segments

CHANCE = 1 / SimConfig.tiny().classes


def _labels(sim_root, dataset: PreparedDataset) -> np.ndarray:
    truth = json.loads((sim_root / "truth" / "labels.json").read_text())
    return np.array([truth[dataset.segments[s]][t] for s, t in dataset.index])


def _nearest_centroid_accuracy(train: PreparedDataset, test: PreparedDataset, y: np.ndarray, yt: np.ndarray) -> float:
    """Correlation to class-mean training windows: a minimal decoder of the stimulus class from fMRI windows."""
    x, xt = np.asarray(train.fmri).reshape(len(train), -1), np.asarray(test.fmri).reshape(len(test), -1)
    centroids = np.stack([x[y == c].mean(0) for c in np.unique(y)])

    def unit(a):
        a = a - a.mean(1, keepdims=True)
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    return float(((unit(xt) @ unit(centroids).T).argmax(1) == np.unique(y)[yt]).mean())


def test_windows_line_up_with_stimulus_class_and_hrf_lag(sim_root, tmp_path, metrics):
    accuracy = {}
    for lag in range(5):
        out = tmp_path / f"lag{lag}"
        prepare(
            sim_root,
            out,
            config=PrepareConfig(layout="wen", video=False),
            preprocess=preprocess_defaults("wen", lag=lag),
        )
        train, test = PreparedDataset(out, "train", video=False), PreparedDataset(out, "test", video=False)
        accuracy[lag] = _nearest_centroid_accuracy(train, test, _labels(sim_root, train), _labels(sim_root, test))
    best = max(accuracy, key=accuracy.get)
    metrics("class recovery (10-way, test windows) by lag in TRs", {k: round(v, 3) for k, v in accuracy.items()})
    metrics("recovered HRF lag", f"{best} TRs (simulated HRF peak 5 s = 2.5 TRs; chance accuracy {CHANCE:.2f})")
    assert best in (2, 3)
    assert accuracy[best] >= 3.5 * CHANCE
    assert accuracy[0] < accuracy[best]  # lag 0 (the reference default) pairs frames with pre-peak BOLD


def test_voxel_selection_keeps_responsive_voxels(prepared_wen, sim_root, metrics):
    responsive = np.load(sim_root / "truth" / "subject1.npz")["responsive"]
    keep = FMRITransform.load(prepared_wen / "data_transform").keep
    hits = int(responsive[keep].sum())
    precision, recall = hits / len(keep), hits / int(responsive.sum())
    metrics(
        "voxel selection (t-test, Bonferroni p<0.01)",
        f"kept {len(keep)} of {responsive.size}: precision {precision:.3f}, recall {recall:.3f} "
        f"({int(responsive.sum())} responsive)",
    )
    assert precision >= 0.9 and recall >= 0.2
    summary = json.loads((prepared_wen / "summary.json").read_text())
    assert summary["voxels"]["selected"] == len(keep) and summary["reproducibility"]["segments"] == 10


def test_prepared_frames_and_captions_are_the_stimulus_of_each_tr(prepared_wen, sim_root):
    test = PreparedDataset(prepared_wen, "test")
    item = test[45]  # segment test2, TR 15
    segment, tr = item["index"]
    assert test.segments[segment] == "test2" and tr == 15
    frames = read_video(sim_root / "stimuli" / "test2.mp4", n_trs=16, tr=2.0, fps=3.0, size=32)[15]
    np.testing.assert_array_equal(item["video"], frames)
    assert item["caption"] == (sim_root / "stimuli" / "captions" / "test2.txt").read_text().splitlines()[15]
    assert item["fmri"].shape == item["negative_fmri"].shape == (2, test.fmri.shape[2])
    np.testing.assert_allclose(item["negative_fmri"], np.asarray(test.fmri).mean(0), atol=1e-5)


def test_same_windows_from_cifti_nifti_arrays_and_custom_layouts(sim_root, prepared_wen, tmp_path):
    index_file = tmp_path / "keep.npy"
    np.save(index_file, FMRITransform.load(prepared_wen / "data_transform").keep)
    select = preprocess_defaults("wen", select="index", index_file=str(index_file))
    mask = LoadConfig(mask=str(sim_root / "subject1" / "anat" / "visual_mask.nii.gz"))
    runs = {
        "nifti": (sim_root, PrepareConfig(layout="wen", fmri_format="nifti", size=32), select, mask),
        "arrays": (
            sim_root / "arrays",
            PrepareConfig(layout="arrays", size=32),
            preprocess_defaults("arrays", select="index", index_file=str(index_file)),
            LoadConfig(),
        ),
        "custom": (sim_root / "subject1", PrepareConfig(layout="custom", size=32), select, mask),
    }
    reference = {split: PreparedDataset(prepared_wen, split) for split in ("train", "test")}
    for name, (src, config, preprocess, loading) in runs.items():
        prepare(src, tmp_path / name, config=config, preprocess=preprocess, loading=loading)
        for split, ref in reference.items():
            other = PreparedDataset(tmp_path / name, split)
            np.testing.assert_allclose(other.fmri, ref.fmri, atol=1e-5, err_msg=f"{name} {split}")
            np.testing.assert_array_equal(other.video, ref.video, err_msg=name)
            np.testing.assert_array_equal(other.index, ref.index)
            assert other.captions == ref.captions


def test_saved_transform_reproduces_windows_of_a_new_scan(prepared_wen, sim_root):
    transform = FMRITransform.load(prepared_wen / "data_transform")
    runs = sorted((sim_root / "subject1" / "fmri" / "test1" / "cifti").glob("*.dtseries.nii"))
    x = np.mean([transform.apply(transform.load_run(p)[:30]) for p in runs], axis=0)  # projection is linear
    windows = transform.windows(x)
    assert windows.shape == (30, 2, transform.num_voxels) and transform.num_voxels % 16 == 0
    np.testing.assert_allclose(windows, PreparedDataset(prepared_wen, "test").fmri[:30], atol=1e-5)
    assert transform.negative_fmri.shape == (2, transform.num_voxels)
    layout = LayoutDataset(wen_segments(sim_root), transform, split="test", size=32)
    np.testing.assert_allclose(layout[31]["fmri"], PreparedDataset(prepared_wen, "test")[31]["fmri"], atol=1e-5)
    np.testing.assert_array_equal(layout[31]["video"], PreparedDataset(prepared_wen, "test")[31]["video"])


def test_hcp_layout_streams_windows(sim_root, tmp_path):
    out = tmp_path / "hcp"
    summary = prepare(sim_root, out, config=PrepareConfig(layout="hcp", pattern="subject1/fmri/seg*/cifti/*.nii"))
    assert summary["runs"] == 20 and summary["counts"]["train"] == 20 * 35
    stream = HCPStream.prepared(out, buffer=64, seed=1)
    items = list(stream)
    assert len(items) == 700 and items[0]["fmri"].shape == (2, summary["voxels"]["model"])
    assert items[0]["negative_fmri"].shape == (2, summary["voxels"]["model"])
    first_epoch = [i["fmri"] for i in items[:5]]
    assert not all(np.array_equal(a, b["fmri"]) for a, b in zip(first_epoch, list(stream)[:5]))  # reshuffled


def test_cli_simulate_prepare_inspect(tmp_path):
    runner = CliRunner()
    sim, out = tmp_path / "sim", tmp_path / "prepared"
    result = runner.invoke(
        main, ["data", "simulate", "--out", str(sim), "--tiny", "--minutes", "2", "--formats", "cifti", "--seed", "3"]
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (sim / "stimuli").glob("*.mp4")) == ["seg1.mp4", "seg2.mp4", "test1.mp4"]
    result = runner.invoke(
        main,
        [
            "data",
            "prepare",
            "--layout",
            "wen",
            "--src",
            str(sim),
            "--out",
            str(out),
            "--select",
            "all",
            "--size",
            "32",
            "--json",
            str(tmp_path / "s.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "windows" in result.output and json.loads((tmp_path / "s.json").read_text())["counts"]["test"] == 30
    plot = importlib.util.find_spec("matplotlib") is not None  # the plot needs matplotlib; the table does not
    result = runner.invoke(main, ["data", "inspect", str(out), *([] if plot else ["--no-plot"])])
    assert result.exit_code == 0, result.output
    assert "train/fmri" in result.output and "[60, 2, 144]" in result.output
    if plot:
        assert (out / "inspect.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("seed, same", [(0, True), (1, False)])
def test_simulation_is_deterministic_by_seed(tmp_path, seed, same):
    config = SimConfig.tiny(train_segments=2, test_segments=1, formats=("cifti",))
    simulate(tmp_path / "a", config)
    simulate(tmp_path / "b", config.replace(seed=seed))
    run = "subject1/fmri/seg1/cifti/seg1_1_Atlas.dtseries.nii"
    assert ((tmp_path / "a" / run).read_bytes() == (tmp_path / "b" / run).read_bytes()) is same
    video = "stimuli/seg2.mp4"
    assert ((tmp_path / "a" / video).read_bytes() == (tmp_path / "b" / video).read_bytes()) is same


def test_custom_layout_onsets_and_array_runs(sim_root, prepared_wen, tmp_path):
    """Runs stored as .npy with 3 extra volumes before the movie, onset 6 s: the same windows as the Wen layout."""
    from mindvideo.data.io import load_cifti

    rng = np.random.default_rng(0)
    lines = ["run\tonset\tstimulus\tsplit\tcaptions"]
    for name in ("seg1", "seg2", "seg3", "seg4", "seg5", "seg6", "seg7", "seg8", "seg9", "seg10", "test1", "test2"):
        split = "test" if name.startswith("test") else "train"
        for path in sorted((sim_root / "subject1" / "fmri" / name / "cifti").glob("*.nii")):
            run = load_cifti(path).data
            np.save(tmp_path / f"{path.name}.npy", np.concatenate([rng.normal(1000, 5, (3, run.shape[1])), run]))
            lines.append(
                f"{path.name}.npy\t6\t{sim_root}/stimuli/{name}.mp4\t{split}\t{sim_root}/stimuli/captions/{name}.txt"
            )
    (tmp_path / "events.tsv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "prepared"
    prepare(tmp_path, out, config=PrepareConfig(layout="custom", size=32))
    for split in ("train", "test"):
        ours, ref = PreparedDataset(out, split), PreparedDataset(prepared_wen, split)
        np.testing.assert_allclose(ours.fmri, ref.fmri, atol=1e-5)
        np.testing.assert_array_equal(ours.video, ref.video)
    keep = FMRITransform.load(out / "data_transform").keep
    np.testing.assert_array_equal(keep, FMRITransform.load(prepared_wen / "data_transform").keep)


def test_hcp_stream_from_raw_runs_matches_the_prepared_runs(sim_root, tmp_path):
    out = tmp_path / "hcp"
    prepare(sim_root, out, config=PrepareConfig(layout="hcp", pattern="subject1/fmri/seg1/cifti/*.nii"))
    transform = FMRITransform.load(out / "data_transform")
    raw = sorted((sim_root / "subject1" / "fmri" / "seg1" / "cifti").glob("*.nii"))
    streamed = [item["fmri"] for item in HCPStream(raw, transform, shuffle=False)]
    prepared = [item["fmri"] for item in HCPStream.prepared(out, shuffle=False)]
    assert len(streamed) == len(prepared) == 70
    np.testing.assert_allclose(np.stack(streamed), np.stack(prepared), atol=1e-5)
