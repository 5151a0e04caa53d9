"""Reading clips from .npy arrays and folders of .npy/.gif/.mp4 files; scene-cut filtering as in the reference."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest

from mindvideo.errors import MindVideoError
from mindvideo.eval import evaluate, load_pair, load_scene_ids, load_videos, scene_mask
from mindvideo.eval.videos import natural_key


def test_npy_array_and_single_clip(tmp_path, clips):
    np.save(tmp_path / "all.npy", clips)
    videos, names = load_videos(tmp_path / "all.npy")
    np.testing.assert_array_equal(videos, clips)
    assert names[:2] == ["all[0]", "all[1]"]
    np.save(tmp_path / "one.npy", clips[0])
    assert load_videos(tmp_path / "one.npy")[0].shape == (1, *clips.shape[1:])


def test_folder_of_mixed_files_in_natural_order(tmp_path, clips):
    folder = tmp_path / "clips"
    folder.mkdir()
    np.save(folder / "test10.npy", clips[2])
    iio.imwrite(folder / "test2.gif", clips[1], duration=333, loop=0)
    iio.imwrite(folder / "test1.mp4", clips[0], plugin="pyav", codec="libx264", fps=3)
    (folder / "notes.txt").write_text("ignored")
    videos, names = load_videos(folder)
    assert names == ["test1", "test2", "test10"] and videos.shape == (3, *clips.shape[1:])
    np.testing.assert_array_equal(videos[2], clips[2])
    assert np.abs(videos[:2].astype(int) - clips[:2]).mean() < 12  # lossy codecs, same content
    assert sorted(["b10", "b9", "a"], key=natural_key) == ["a", "b9", "b10"]


def test_glob_patterns_select_clip_files(tmp_path, clips):
    for i in (10, 2):
        iio.imwrite(tmp_path / f"clip_{i}.gif", clips[i % 7], duration=333, loop=0)
    np.save(tmp_path / "fmri.npy", np.zeros((2, 128), np.float32))  # not a clip: left out by the pattern
    videos, names = load_videos(tmp_path / "clip_*.gif")
    assert names == ["clip_2", "clip_10"] and videos.shape == (2, *clips.shape[1:])
    with pytest.raises(MindVideoError, match="matching"):
        load_videos(tmp_path / "nothing_*.gif")
    with pytest.raises(MindVideoError, match="to hold \\(F, H, W, 3\\) uint8 frames"):
        load_videos(tmp_path)  # the folder holds fmri.npy too


def test_mismatched_counts_and_shapes_are_refused(tmp_path, clips):
    np.save(tmp_path / "pred.npy", clips[:3])
    np.save(tmp_path / "gt.npy", clips)
    with pytest.raises(MindVideoError, match="as many reconstructed clips"):
        load_pair(tmp_path / "pred.npy", tmp_path / "gt.npy")
    folder = tmp_path / "ragged"
    folder.mkdir()
    np.save(folder / "a.npy", clips[0])
    np.save(folder / "b.npy", clips[0, :2])
    with pytest.raises(MindVideoError, match="same \\(F, H, W, 3\\) shape"):
        load_videos(folder)
    with pytest.raises(MindVideoError, match="no such file"):
        load_videos(tmp_path / "missing")


def test_scene_mask_follows_the_reference():
    ids = ["1", "1", "1-2", "2", "2", "2-3", "3"]
    assert scene_mask(ids).tolist() == [True, True, False, True, True, False, True]
    assert scene_mask(ids, one_per_scene=True).tolist() == [True, False, False, True, False, False, True]
    assert scene_mask(ids, drop_cuts=False).all()


def test_scene_ids_from_files_and_evaluate_drops_cut_clips(tmp_path, clips):
    ids = np.array(["1", "1-2", "2", "2", "3", "3-4", "4"])
    np.save(tmp_path / "seg.npy", ids.reshape(1, 7))  # the reference's (videos, clips) layout
    assert load_scene_ids(tmp_path / "seg.npy", 7) == ids.tolist()
    (tmp_path / "seg.txt").write_text("\n".join(ids) + "\n")
    assert load_scene_ids(tmp_path / "seg.txt", 7) == ids.tolist()
    with pytest.raises(MindVideoError, match="one scene id per clip"):
        load_scene_ids(tmp_path / "seg.txt", 6)
    metrics = evaluate(clips, clips, scene_ids=ids.tolist(), names=[f"c{i}" for i in range(7)], progress=False)
    assert metrics["clips"] == {"given": 7, "evaluated": 5, "dropped_by_scene_filter": 2}
    assert metrics["per_clip"]["index"] == [0, 2, 3, 4, 6] and metrics["per_clip"]["name"][1] == "c2"
