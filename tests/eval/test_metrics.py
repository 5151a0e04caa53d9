"""SSIM (both conventions) and PSNR equal scikit-image's with the same settings; summaries and input checks."""

from __future__ import annotations

import numpy as np
import pytest
from eval_helpers import noisy, sample_images
from skimage.color import rgb2gray
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from mindvideo.errors import MindVideoError
from mindvideo.eval import COLOUR_SSIM, GREY_SSIM, psnr, ssim, ssim_frames, summarise
from mindvideo.eval.metrics import check_videos


def skimage_colour(a: np.ndarray, b: np.ndarray) -> float:
    """The MinD-Video reference's call."""
    return structural_similarity(a, b, data_range=255, channel_axis=-1)


def skimage_grey(a: np.ndarray, b: np.ndarray) -> float:
    """The later papers' call (MindEye's evaluation code)."""
    return structural_similarity(rgb2gray(a), rgb2gray(b), gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, data_range=1.0)  # fmt: skip


def per_frame(fn, pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    return np.array([[fn(p, g) for p, g in zip(pc, gc)] for pc, gc in zip(pred, gt)])


def random_pair(shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    return a, noisy(a, 60, seed + 1)


@pytest.mark.parametrize("shape", [(2, 3, 32, 40, 3), (1, 2, 11, 17, 3)])
def test_ssim_equals_skimage_on_random_frames(shape):
    pred, gt = random_pair(shape)
    np.testing.assert_allclose(ssim(pred, gt, COLOUR_SSIM), per_frame(skimage_colour, pred, gt), rtol=0, atol=1e-6)
    np.testing.assert_allclose(ssim(pred, gt, "grey"), per_frame(skimage_grey, pred, gt), rtol=0, atol=1e-6)


def test_ssim_equals_skimage_on_real_looking_frames(clips):
    gt = clips  # (7, 4, 48, 48, 3) pans over photographs
    for pred in (noisy(gt, 25), np.roll(gt, 1, axis=0), gt[:, ::-1]):  # noise, other images, reversed time
        np.testing.assert_allclose(ssim(pred, gt), per_frame(skimage_colour, pred, gt), rtol=0, atol=1e-6)
        np.testing.assert_allclose(ssim(pred, gt, GREY_SSIM), per_frame(skimage_grey, pred, gt), rtol=0, atol=1e-6)


def test_ssim_full_size_photographs_and_small_batches():
    images = np.stack(sample_images(96))  # (7, 96, 96, 3)
    pred, gt = images[None, :6], images[None, 1:7]
    expected = per_frame(skimage_colour, pred, gt)
    np.testing.assert_allclose(ssim(pred, gt, batch_frames=4), expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ssim_frames(pred[0], gt[0]), expected[0], rtol=0, atol=1e-6)


def test_ssim_of_identical_frames_is_one(clips):
    np.testing.assert_allclose(ssim(clips, clips), 1.0, atol=1e-12)
    np.testing.assert_allclose(ssim(clips, clips, "grey"), 1.0, atol=1e-12)


def test_conventions_differ_and_are_named(clips):
    pred = noisy(clips, 40)
    assert abs(ssim(pred, clips).mean() - ssim(pred, clips, "grey").mean()) > 0.01
    assert "colour" in COLOUR_SSIM.label and "7×7" in COLOUR_SSIM.label
    assert "σ 1.5" in GREY_SSIM.label and "data_range 1.0" in GREY_SSIM.label


def test_psnr_equals_skimage_and_caps_identical_frames(clips):
    pred = noisy(clips, 30)
    expected = per_frame(lambda a, b: peak_signal_noise_ratio(b, a, data_range=255), pred, clips)
    np.testing.assert_allclose(psnr(pred, clips), expected, rtol=1e-12)
    assert np.all(psnr(clips, clips) == 100.0)


def test_summarise_per_frame_position():
    scores = np.array([[0.1, 0.5], [0.3, 0.7]])  # 2 clips × 2 frame positions
    summary = summarise(scores)
    assert summary["mean"] == pytest.approx(0.4)
    assert summary["std"] == pytest.approx(scores.std())
    assert summary["per_frame"][0] == pytest.approx({"mean": 0.2, "std": 0.1})
    assert summary["per_frame"][1] == pytest.approx({"mean": 0.6, "std": 0.1})
    assert summarise(np.array([[np.nan]]))["mean"] is None  # JSON-safe


@pytest.mark.parametrize(
    ("pred_shape", "gt_shape", "dtype", "message"),
    [
        ((2, 3, 16, 16, 3), (3, 3, 16, 16, 3), np.uint8, "same number of clips"),
        ((2, 3, 16, 16, 3), (2, 4, 16, 16, 3), np.uint8, "same clip shape"),
        ((2, 16, 16, 3), (2, 16, 16, 3), np.uint8, "(N, F, H, W, 3)"),
        ((2, 3, 16, 16, 3), (2, 3, 16, 16, 3), np.float32, "uint8"),
        ((1, 2, 8, 8, 3), (1, 2, 8, 8, 3), np.uint8, "11×11"),
    ],
)
def test_bad_inputs_raise_a_clear_error(pred_shape, gt_shape, dtype, message):
    with pytest.raises(MindVideoError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        check_videos(np.zeros(pred_shape, dtype), np.zeros(gt_shape, np.uint8))
    assert "found" in str(info.value)
