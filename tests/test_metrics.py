import math

import numpy as np
import pytest
import torch

from backend import metrics


def _img(seed: int, h: int = 40, w: int = 48) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / 7.0
    base = 0.5 + 0.3 * np.stack([np.sin(xx), np.cos(yy), np.sin(xx + yy)], -1)
    return np.clip(base + 0.05 * rng.normal(size=(h, w, 3)), 0, 1).astype(np.float32)


def test_psnr_hand_computed():
    gt = np.zeros((4, 5, 3), np.float32)
    pred = gt.copy()
    mask = np.zeros((4, 5), bool)
    mask[1:3, 1:4] = True                       # 6 covered pixels
    pred[mask] = 0.1                            # error 0.1 everywhere covered -> mse 0.01 -> 20 dB
    pred[~mask] = 0.9                           # uncovered pixels never count
    assert metrics.psnr(pred, gt, mask) == pytest.approx(20.0, abs=1e-6)
    # One channel of one covered pixel off by 0.5: mse = (17 * 0.01 + 0.36) / 18.
    pred[1, 1, 0] = 0.6
    mse = (17 * 0.01 + 0.6 ** 2) / 18
    assert metrics.psnr(pred, gt, mask) == pytest.approx(-10 * math.log10(mse), abs=1e-5)
    # Torch inputs and no mask.
    t = metrics.psnr(torch.full((2, 2, 3), 0.25), torch.zeros(2, 2, 3))
    assert t == pytest.approx(-10 * math.log10(0.0625), abs=1e-5)
    assert metrics.psnr(gt, gt) == math.inf
    assert math.isnan(metrics.psnr(pred, gt, np.zeros((4, 5), bool)))


def test_ssim_identical_is_one_and_decreases_with_noise():
    a = _img(0)
    mask = np.zeros(a.shape[:2], bool)
    mask[5:35, 8:40] = True
    assert metrics.ssim(a, a) == pytest.approx(1.0, abs=1e-6)
    assert metrics.ssim(a, a, mask) == pytest.approx(1.0, abs=1e-6)
    rng = np.random.default_rng(3)
    n = rng.normal(size=a.shape).astype(np.float32)
    scores = [metrics.ssim(np.clip(a + s * n, 0, 1), a, mask) for s in (0.01, 0.03, 0.1, 0.3)]
    assert all(x > y for x, y in zip(scores, scores[1:])), scores
    assert scores[0] > 0.9 and scores[-1] < 0.5


def test_ssim_ignores_uncovered_pixels():
    a, b = _img(1), _img(2)
    mask = np.zeros(a.shape[:2], bool)
    mask[10:30, 10:30] = True
    b2 = b.copy()
    b2[~mask] = np.random.default_rng(0).random(((~mask).sum(), 3))
    assert metrics.ssim(a, b, mask) == pytest.approx(metrics.ssim(a, b2, mask), abs=1e-7)
    assert metrics.psnr(a, b, mask) == pytest.approx(metrics.psnr(a, b2, mask), abs=1e-7)


def _ssim_direct(x: np.ndarray, y: np.ndarray, mask: np.ndarray) -> float:
    """The SSIM formula written out in float64 with explicit windows (module docstring's definition)."""
    x = np.where(mask[..., None], x, 0).astype(np.float64)
    y = np.where(mask[..., None], y, 0).astype(np.float64)
    r = 5
    g = np.exp(-((np.arange(11) - r) ** 2) / (2 * 1.5 ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    vals = []
    for i in range(r, x.shape[0] - r):
        for j in range(r, x.shape[1] - r):
            if not mask[i, j]:
                continue
            per_channel = []
            for c in range(x.shape[2]):
                px = x[i - r:i + r + 1, j - r:j + r + 1, c]
                py = y[i - r:i + r + 1, j - r:j + r + 1, c]
                mx, my = (w * px).sum(), (w * py).sum()
                vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
                cxy = (w * (px - mx) * (py - my)).sum()
                per_channel.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
            vals.append(np.mean(per_channel))
    return float(np.mean(vals))


def test_ssim_matches_direct_float64_formula():
    a = _img(4, 19, 23)
    b = np.clip(a + 0.08 * np.random.default_rng(5).normal(size=a.shape), 0, 1).astype(np.float32)
    full = np.ones(a.shape[:2], bool)
    mask = full.copy()
    mask[:, :9] = False
    mask[15:, :] = False
    for m in (full, mask):
        ref = _ssim_direct(a, b, m)
        assert metrics.ssim(a, b, m) == pytest.approx(ref, abs=2e-5)
        assert metrics.ssim(a.astype(np.float64), b.astype(np.float64), m) == pytest.approx(ref, abs=1e-12)
    # torch tensors are accepted too
    assert metrics.ssim(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(_ssim_direct(a, b, full), abs=2e-5)


def test_ssim_rejects_tiny_images():
    with pytest.raises(ValueError):
        metrics.ssim(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)))


def test_lpips_is_offline_only():
    a = _img(6, 64, 64)
    v = metrics.lpips_or_none(a, a)
    assert v is None or (isinstance(v, float) and abs(v) < 1e-4)


# --- speckle fraction -------------------------------------------------------------------------

def _smooth(h: int = 40, w: int = 48) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([0.3 + 0.4 * xx / w, 0.5 + 0.2 * np.sin(yy / 6.0), 0.4 + 0.3 * yy / h], -1)


def test_speckle_clean_image_is_zero_and_isolated_pixels_count_one_each():
    img = _smooth()
    mask = np.ones(img.shape[:2], bool)
    mask[:, :5] = False                                         # some uncovered pixels
    assert metrics.speckle_fraction(img, mask) == 0.0
    # k isolated bright pixels (one at a corner, one next to the uncovered band) -> k / covered.
    spots = [(0, 47), (10, 5), (20, 20), (30, 33), (39, 12)]
    for j, i in spots:
        img[j, i] = 1.0
    assert metrics.speckle_fraction(img, mask) == pytest.approx(len(spots) / mask.sum(), abs=1e-12)
    # Dark isolated pixels count too; an outlier under the threshold does not.
    img[5, 40] = 0.0
    img[25, 25] += 0.12
    assert metrics.speckle_fraction(img, mask) == pytest.approx((len(spots) + 1) / mask.sum(), abs=1e-12)
    # Uncovered pixels never count, whatever they hold.
    img[:, :5] = np.random.default_rng(0).random((40, 5, 3))
    assert metrics.speckle_fraction(img, mask) == pytest.approx((len(spots) + 1) / mask.sum(), abs=1e-12)


def test_speckle_threshold_luma_weights_and_edges():
    img = np.full((9, 9, 3), 0.5)
    # Rec. 709 luma: +0.2 in green alone moves luma by 0.143 (< 0.15), in red by 0.0425.
    img[4, 4] = [0.5, 0.7, 0.5]
    assert metrics.speckle_fraction(img) == 0.0
    img[4, 4] = [0.5, 0.72, 0.5]                               # 0.1573 > 0.15
    assert metrics.speckle_fraction(img) == pytest.approx(1 / 81)
    # A straight edge between two flat regions is no speckle (the median keeps edges).
    edge = np.zeros((12, 12, 3))
    edge[:, 6:] = 1.0
    assert metrics.speckle_fraction(edge) == 0.0
    # A one-pixel line is (the 3x3 median removes it): 12 of 144 pixels.
    line = np.zeros((12, 12, 3))
    line[:, 6] = 1.0
    assert metrics.speckle_fraction(line) == pytest.approx(12 / 144)
    # Median over covered neighbours only: a pixel with a single covered neighbour is compared
    # with the mean of the two (differs by half the step).
    pair = np.zeros((3, 3, 3))
    pair[1, 1] = 0.4
    m = np.zeros((3, 3), bool)
    m[1, 1] = m[1, 2] = True
    assert metrics.speckle_fraction(pair, m) == pytest.approx(1.0)       # 0.2 > 0.15 for both
    pair[1, 1] = 0.25
    assert metrics.speckle_fraction(pair, m) == 0.0                      # 0.125 < 0.15
    assert math.isnan(metrics.speckle_fraction(pair, np.zeros((3, 3), bool)))
    # Torch inputs give the same answer.
    assert metrics.speckle_fraction(torch.from_numpy(line), torch.ones(12, 12, dtype=torch.bool)) \
        == pytest.approx(12 / 144)


def test_median3x3_matches_a_direct_computation():
    rng = np.random.default_rng(1)
    y = rng.random((7, 8))
    m = rng.random((7, 8)) > 0.3
    med = metrics.median3x3(y, m)
    for j in range(7):
        for i in range(8):
            if not m[j, i]:
                assert np.isnan(med[j, i])
                continue
            win = [y[b, a] for b in range(max(0, j - 1), min(7, j + 2)) for a in range(max(0, i - 1), min(8, i + 2))
                   if m[b, a]]
            assert med[j, i] == pytest.approx(float(np.median(win)), abs=1e-12)
