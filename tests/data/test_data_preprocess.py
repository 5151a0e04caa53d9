"""The pure preprocessing functions against closed forms and scipy oracles."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from mindvideo.data import preprocess as pp
from mindvideo.data.simulate import double_gamma_hrf
from mindvideo.errors import MindVideoError


def monomials(n: int, order: int) -> np.ndarray:
    """(n, order+1) columns 1, t, …, t^order on t in [-1, 1] (plain powers, not the module's Legendre basis)."""
    return np.vander(np.linspace(-1.0, 1.0, n), order + 1, increasing=True)


def test_detrend_leaves_the_signal_of_a_polynomial_plus_signal():
    rng = np.random.default_rng(0)
    basis = monomials(240, 4)
    noise = rng.normal(size=(240, 3))
    signal = noise - basis @ np.linalg.lstsq(basis, noise, rcond=None)[0]  # no part along 1, t, …, t^4
    trend = basis @ np.array([[5.0, -2.0, 0.5], [3.0, 1.0, -4.0], [-7.0, 0.0, 2.0], [2.0, 6.0, 1.0], [4.0, -3.0, 0.0]])
    out = pp.detrend(trend + signal, order=4)
    assert out.shape == signal.shape and np.abs(signal).max() > 1.0  # a real signal, which must survive
    np.testing.assert_allclose(out, signal, rtol=0, atol=1e-5)


@pytest.mark.parametrize("degree", range(5))
def test_detrend_removes_every_polynomial_up_to_its_order(degree):
    t = np.linspace(-3.0, 5.0, 200)[:, None]
    poly = sum(c * t**k for k, c in enumerate([2.5, -1.5, 0.75, -0.25, 0.125][: degree + 1]))  # degree exactly
    assert np.abs(pp.detrend(poly, order=4)).max() < 1e-10
    assert np.abs(pp.detrend(poly, order=degree)).max() < 1e-10
    if degree > 0:  # one order too low leaves the top term
        assert np.abs(pp.detrend(poly, order=degree - 1)).max() > 0.1


def test_detrend_output_is_orthogonal_to_the_polynomials():
    x = np.random.default_rng(2).normal(size=(150, 4)) + 10.0
    for order in (0, 2, 4):
        out = pp.detrend(x, order)
        basis = monomials(len(x), order)
        assert np.abs(basis.T @ out).max() < 1e-3 * np.linalg.norm(out, axis=0).min()
        assert np.linalg.norm(out, axis=0).min() > 5.0  # far from zero: ~sqrt(150) for unit noise


def test_zscore_per_voxel_and_constant_voxels_become_zero():
    x = np.stack([np.arange(10.0), np.full(10, 3.0)], axis=1)
    z = pp.zscore(x)
    np.testing.assert_allclose(z[:, 0], stats.zscore(x[:, 0]), rtol=1e-6)
    assert np.all(z[:, 1] == 0)


def test_bad_voxel_mask_flags_nan_inf_and_constant():
    x = np.random.default_rng(1).normal(size=(20, 5)).astype(np.float32)
    x[3, 1], x[5, 2], x[:, 3] = np.nan, np.inf, 7.0
    assert pp.bad_voxel_mask(x).tolist() == [False, True, True, True, False]


def test_trim_refuses_short_runs():
    run = np.zeros((30, 4))
    assert pp.trim(run, 2, 25).shape == (25, 4)
    with pytest.raises(MindVideoError, match="expected at least 33 volumes"):
        pp.trim(run, 3, 30, "seg1_1")


def test_windows_follow_the_reference_edge_rule():
    fmri = np.arange(5)[:, None] * np.ones((1, 2))  # frame t holds value t
    windows = pp.sliding_windows(fmri, window=2)
    assert windows[:, :, 0].tolist() == [[0, 1], [1, 2], [2, 3], [3, 4], [4, 4]]  # held at the segment end
    lagged = pp.sliding_windows(fmri, window=3, lag=2)
    assert lagged[:, :, 0].tolist() == [[2, 3, 4], [3, 4, 4], [4, 4, 4]]
    assert pp.sliding_windows(fmri, window=2, lag=1, count=2)[:, :, 0].tolist() == [[1, 2], [2, 3]]


def test_windows_need_enough_frames():
    with pytest.raises(MindVideoError, match="expected at least 4 fMRI frames"):
        pp.sliding_windows(np.zeros((3, 2)), window=4)
    with pytest.raises(MindVideoError):
        pp.sliding_windows(np.zeros((3, 2)), window=2, lag=3)


def test_wrap_pad_repeats_the_first_voxels():
    x = np.arange(20).reshape(1, 20)
    padded = pp.wrap_pad(x, 16)
    assert padded.shape == (1, 32) and padded[0, 20:].tolist() == list(range(12))
    assert pp.wrap_pad(np.zeros((2, 32)), 16).shape == (2, 32)


def test_reproducibility_ttest_matches_scipy():
    z = np.random.default_rng(2).normal(0.2, 0.3, size=(12, 50))
    t, p = pp.reproducibility_ttest(z)
    ref = stats.ttest_1samp(z, 0.0, axis=0, alternative="greater")
    np.testing.assert_allclose(t, ref.statistic, rtol=1e-10)
    np.testing.assert_allclose(p, ref.pvalue, rtol=1e-8)


def test_select_voxels_bonferroni_topk_index_all(tmp_path):
    rng = np.random.default_rng(3)
    z = rng.normal(0, 0.1, size=(10, 40))
    z[:, :8] += 0.8  # eight reproducible voxels
    valid = np.ones(40, bool)
    valid[0] = False  # a bad voxel is never kept
    keep, info = pp.select_voxels(z, valid, pp.PreprocessConfig())
    assert keep.tolist() == list(range(1, 8)) and info["method"] == "ttest"
    keep, _ = pp.select_voxels(z, valid, pp.PreprocessConfig(select="topk", top_k=3))
    assert len(keep) == 3 and set(keep) <= set(range(1, 8))
    np.save(tmp_path / "idx.npy", np.array([5, 0, 39, 5]))
    keep, _ = pp.select_voxels(None, valid, pp.PreprocessConfig(select="index", index_file=str(tmp_path / "idx.npy")))
    assert keep.tolist() == [5, 39]
    assert pp.select_voxels(None, valid, pp.PreprocessConfig(select="all"))[0].tolist() == list(range(1, 40))


def test_select_voxels_errors_are_explained(tmp_path):
    valid = np.ones(10, bool)
    with pytest.raises(MindVideoError, match="expected repeated runs"):
        pp.select_voxels(None, valid, pp.PreprocessConfig())
    with pytest.raises(MindVideoError, match="reproducible at Bonferroni"):
        pp.select_voxels(np.random.default_rng(0).normal(0, 1, (5, 10)), valid, pp.PreprocessConfig())
    (tmp_path / "bad.txt").write_text("3\n12\n")
    with pytest.raises(MindVideoError, match=r"voxel indices in \[0, 10\)"):
        pp.read_index_file(tmp_path / "bad.txt", 10)


def test_repeat_reliability_is_mean_pairwise_fisher_z():
    rng = np.random.default_rng(4)
    signal = rng.normal(size=(100, 1))
    runs = np.stack([signal + 0.5 * rng.normal(size=(100, 1)) for _ in range(3)])
    pairs = [np.arctanh(np.corrcoef(runs[i, :, 0], runs[j, :, 0])[0, 1]) for i, j in ((0, 1), (0, 2), (1, 2))]
    np.testing.assert_allclose(pp.repeat_reliability(runs), [np.mean(pairs)], rtol=1e-6)


def test_normaliser_scalar_and_per_voxel():
    x = np.random.default_rng(5).normal([1.0, 5.0], [2.0, 0.5], size=(1000, 2))
    mean, std = pp.fit_normaliser(x, "scalar")
    assert mean.shape == () and np.isclose(mean, x.mean()) and np.isclose(std, x.std())
    mean, std = pp.fit_normaliser(x, "voxel")
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(std, x.std(0), rtol=1e-5)


def test_config_validation_names_the_field():
    with pytest.raises(MindVideoError, match="expected select one of"):
        pp.PreprocessConfig(select="best").validate()
    with pytest.raises(MindVideoError, match="top_k"):
        pp.PreprocessConfig(select="topk").validate()


def test_double_gamma_hrf_peaks_near_five_seconds():
    hrf = double_gamma_hrf(0.1)
    assert abs(hrf.sum() - 1) < 1e-9
    assert 4.5 <= np.argmax(hrf) * 0.1 <= 5.5
    assert hrf[150:250].min() < 0  # the undershoot
