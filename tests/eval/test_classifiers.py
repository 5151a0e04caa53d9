"""Classifier and CLIP loaders from local folders (tiny random models), the pixel classifier, and their errors."""

from __future__ import annotations

import numpy as np
import pytest
from eval_helpers import NUM_LABELS, simulated_clips

from mindvideo.errors import MindVideoError
from mindvideo.eval import (
    FrameAveragedVideoClassifier,
    PixelClassifier,
    adjacent_similarity,
    clip_similarity,
    evaluate,
    load_clip,
    load_frame_classifier,
    load_video_classifier,
    load_videomae_classifier,
    load_vit_classifier,
)
from mindvideo.eval.clip import embed_videos


def test_vit_classifier_returns_probabilities(models, clips):
    classifier = load_vit_classifier(models["vit"])
    probs = classifier(clips[:, 0])  # (7, 48, 48, 3): resized to the model's 32×32 by the processor
    assert probs.shape == (7, NUM_LABELS) and classifier.num_classes == NUM_LABELS
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    assert isinstance(load_frame_classifier(models["vit"]), type(classifier))


def test_videomae_classifier_follows_the_clip_length(models, clips):
    classifier = load_videomae_classifier(models["videomae"], num_frames=4)
    assert classifier(clips[:2]).shape == (2, NUM_LABELS)
    six = np.concatenate([clips[:2], clips[:2, :2]], axis=1)  # 6 frames: a new num_frames, as in the reference
    np.testing.assert_allclose(classifier(six).sum(1), 1.0, atol=1e-6)
    with pytest.raises(MindVideoError, match="tubelet"):
        classifier(clips[:1, :3])


def test_identical_inputs_score_one_with_transformers_classifiers(models, clips):
    metrics = evaluate(
        clips,
        clips,
        frame_classifier=load_vit_classifier(models["vit"]),
        video_classifier=load_video_classifier(models["videomae"], num_frames=4),
        progress=False,
    )
    for level in ("frame_nway", "video_nway"):
        assert metrics[level]["2"]["mean"] == 1.0 and metrics[level]["50"]["mean"] == 1.0


def test_clip_similarity_and_adjacent_frame_similarity(models, clips):
    embedder = load_clip(models["clip"])
    embeds = embed_videos(clips[:3], embedder)  # (3, 4, 16)
    np.testing.assert_allclose(np.linalg.norm(embeds, axis=-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(clip_similarity(embeds, embeds), 1.0, atol=1e-6)
    manual = np.mean([embeds[0, f] @ embeds[0, f + 1] for f in range(3)])
    assert adjacent_similarity(embeds)[0] == pytest.approx(manual)
    metrics = evaluate(clips, clips, clip=embedder, progress=False)
    assert metrics["clip_similarity"]["mean"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["clip_pcc"]["name"] == "CLIP-pcc (adjacent-frame CLIP similarity)"
    assert metrics["clip_pcc"]["mean"] == pytest.approx(metrics["clip_pcc_gt"]["mean"])


def test_pixel_classifier_learns_simulated_classes_and_round_trips(tmp_path):
    train, train_labels = simulated_clips(40, 8, seed=0)
    frames, frame_labels = train.reshape(-1, 32, 32, 3), np.repeat(train_labels, 4)
    classifier = PixelClassifier.fit(frames, frame_labels, size=8)
    test, test_labels = simulated_clips(16, 8, seed=5)
    assert np.mean(classifier(test[:, 0]).argmax(1) == test_labels) >= 0.9
    loaded = load_frame_classifier(classifier.save(tmp_path / "pixel"))
    np.testing.assert_array_equal(loaded(test[:, 0]), classifier(test[:, 0]))
    video = load_video_classifier(tmp_path / "pixel")
    assert isinstance(video, FrameAveragedVideoClassifier) and video(test).shape == (16, 8)


def test_known_labels_give_one_for_identical_and_about_one_over_n_for_random(tmp_path):
    train, labels = simulated_clips(36, 12, seed=0)
    classifier = PixelClassifier.fit(train.reshape(-1, 32, 32, 3), np.repeat(labels, 4), size=8)
    test, test_labels = simulated_clips(36, 12, seed=9)
    kwargs = {"labels": test_labels, "n_ways": [2, 10], "progress": False}
    same = evaluate(
        test, test, frame_classifier=classifier, video_classifier=FrameAveragedVideoClassifier(classifier), **kwargs
    )
    assert same["frame_nway"]["2"]["mean"] == 1.0 and same["video_nway"]["10"]["mean"] == 1.0
    random = np.random.default_rng(0).integers(0, 256, test.shape, dtype=np.uint8)
    chance = evaluate(random, test, frame_classifier=classifier, **kwargs)["frame_nway"]
    assert chance["2"]["mean"] == pytest.approx(0.5, abs=0.12) and chance["10"]["mean"] == pytest.approx(0.1, abs=0.08)
    assert chance["10"]["chance"] == pytest.approx(0.1)


@pytest.mark.parametrize("loader", [load_frame_classifier, load_video_classifier, load_clip])
def test_missing_or_wrong_model_folders_raise_clear_errors(loader, models, tmp_path):
    with pytest.raises(MindVideoError, match="no such folder") as info:
        loader(tmp_path / "nowhere")
    assert "--" in str(info.value)  # names the option to fix
    wrong = models["clip"] if loader is not load_clip else models["vit"]
    with pytest.raises(MindVideoError, match="expected a"):
        loader(wrong)


def test_corrupt_weights_raise_a_clear_error(models, tmp_path):
    broken = tmp_path / "vit"
    broken.mkdir()
    (broken / "config.json").write_text((models["vit"] / "config.json").read_text())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(MindVideoError, match="loadable ViTForImageClassification"):
        load_vit_classifier(broken)
