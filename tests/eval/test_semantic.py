"""The n-way top-k protocol: equal to a direct implementation, chance levels, identical inputs, label mode."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mindvideo.errors import MindVideoError
from mindvideo.eval import chance_level, frame_level, n_way_accuracy, n_way_top_k, true_classes, video_level


def protocol_directly(pred_probs, gt_probs, n_way, num_trials, top_k, seed):
    """The n-way protocol written out, one sample and trial at a time, with numpy's global RNG: true classes =
    top-3 of the ground-truth scores; per trial draw n−1 other classes; success if the reconstruction's probability
    of some true class ranks within the top k among that class and the drawn ones (a stable ascending sort, so a
    tie ranks the true class lower)."""
    np.random.seed(seed)
    accuracies, stds = [], []
    for pred, gt in zip(torch.as_tensor(pred_probs), torch.as_tensor(gt_probs)):
        true = gt.argsort(stable=True)[-3:].tolist()
        others = [c for c in range(len(pred)) if c not in true]
        hits = 0
        for _ in range(num_trials):
            drawn = np.random.choice(others, n_way - 1, replace=False)
            for t in true:
                ranked = torch.cat([pred[t : t + 1], pred[drawn]]).argsort(stable=True)[-top_k:]
                if 0 in ranked:
                    hits += 1
                    break
        accuracies.append(hits / num_trials)
        stds.append(math.sqrt(accuracies[-1] * (1 - accuracies[-1]) / num_trials))
    return np.array(accuracies), np.array(stds)


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize(("n_way", "top_k"), [(2, 1), (50, 1), (10, 3)])
def test_equals_a_direct_implementation_with_a_fixed_seed(n_way, top_k):
    rng = np.random.default_rng(1)
    gt = softmax(rng.normal(size=(12, 100)) * 2)
    pred = softmax(np.log(gt) + rng.normal(size=gt.shape) * 3.0)  # correlated with the ground truth
    expected_acc, expected_std = protocol_directly(pred, gt, n_way, 100, top_k, seed=7)
    acc, std = n_way_accuracy(pred, true_classes(gt), n_way, num_trials=100, top_k=top_k, rng=7)
    np.testing.assert_array_equal(acc, expected_acc)
    np.testing.assert_allclose(std, expected_std, rtol=1e-12)
    assert 0.0 < acc.mean() < 1.0


def test_ties_count_against_the_reconstruction_like_the_direct_implementation():
    gt = softmax(np.random.default_rng(2).normal(size=(6, 20)))
    pred = np.round(softmax(np.random.default_rng(3).normal(size=(6, 20))), 2)  # many exact ties
    pred[:, :4] = 0.05
    expected, _ = protocol_directly(pred, gt, 5, 50, 1, seed=0)
    np.testing.assert_array_equal(n_way_accuracy(pred, true_classes(gt), 5, num_trials=50, rng=0)[0], expected)
    flat = np.full(20, 0.05)  # a uniform reconstruction never wins
    assert n_way_top_k(flat, [0, 1, 2], 2, rng=0) == (0.0, 0.0)


def test_chance_level_formula_matches_simulation():
    assert chance_level(2) == pytest.approx(3 / 4) and chance_level(50) == pytest.approx(3 / 52)
    assert chance_level(50, n_true=1) == pytest.approx(1 / 50)
    rng = np.random.default_rng(0)
    values = rng.random((200_000, 5 - 1 + 3))  # 4 drawn, 3 true, top-2
    simulated = np.mean((values[:, :4] > values[:, 4:].max(1, keepdims=True)).sum(1) < 2)
    assert chance_level(5, n_true=3, top_k=2) == pytest.approx(simulated, abs=0.005)


@pytest.mark.parametrize("n_way", [2, 50])
def test_random_predictions_score_chance(n_way):
    rng = np.random.default_rng(n_way)
    gt, pred = rng.random((300, 100)), rng.random((300, 100))  # unrelated scores
    top3 = n_way_accuracy(pred, true_classes(gt), n_way, rng=0)[0].mean()
    assert top3 == pytest.approx(3 / (n_way + 2), abs=0.03)  # the reference protocol's chance level
    labels = rng.integers(0, 100, 300)  # one known class per sample: chance is 1/n
    assert n_way_accuracy(pred, labels, n_way, rng=0)[0].mean() == pytest.approx(1 / n_way, abs=0.03)


def test_identical_inputs_score_one():
    probs = softmax(np.random.default_rng(4).normal(size=(5, 3, 64)) * 3)  # (N, F, C)
    frames = frame_level(probs, true_classes(probs.reshape(15, 64)).reshape(5, 3, 3), seed=1)
    assert frames["2"]["mean"] == 1.0 and frames["50"]["mean"] == 1.0 and frames["50"]["std"] == 0.0
    assert [p["mean"] for p in frames["2"]["per_frame"]] == [1.0, 1.0, 1.0]
    videos = video_level(probs[:, 0], true_classes(probs[:, 0]))
    assert videos["2"]["mean"] == videos["50"]["mean"] == 1.0
    assert videos["50"]["chance"] == pytest.approx(3 / 52)


def test_frame_level_runs_positions_in_order_from_one_seed():
    rng = np.random.default_rng(5)
    gt, pred = softmax(rng.normal(size=(8, 2, 60))), softmax(rng.normal(size=(8, 2, 60)))
    result = frame_level(pred, true_classes(gt.reshape(16, 60)).reshape(8, 2, 3), [10], seed=3)["10"]
    state = np.random.RandomState(3)
    first = n_way_accuracy(pred[:, 0], true_classes(gt[:, 0]), 10, rng=state)[0].mean()
    second = n_way_accuracy(pred[:, 1], true_classes(gt[:, 1]), 10, rng=state)[0].mean()
    assert [p["mean"] for p in result["per_frame"]] == [first, second]
    assert result["mean"] == pytest.approx((first + second) / 2)


def test_infeasible_n_is_skipped_or_refused():
    probs = softmax(np.random.default_rng(6).normal(size=(4, 10)))
    result = video_level(probs, true_classes(probs), [2, 50])
    assert "mean" in result["2"] and "10" in result["50"]["skipped"]
    with pytest.raises(MindVideoError, match="50-way needs"):
        n_way_top_k(probs[0], [0, 1, 2], 50)
