"""The report's bootstrap on synthetic outcomes whose true errors are known.

Outcomes follow a crossed design like real runs: every test image has one difficulty shared by all
runs (hard images are hard for every model), and each run (seed) adds its own noise, so runs of
the same method differ and different methods agree on most images.
"""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from fairbench.report.stats import N_RESAMPLES, Delta, bootstrap_threat, tied_ranks, wilson
from fairbench.schema import summarize

K = 10
# True class errors: class 9 is clearly the worst, so the worst-class error has a known value.
TRUE_ERR = np.r_[np.linspace(0.10, 0.30, K - 1), 0.55]


def simulate(
    rng: np.random.Generator, n_per_class: int, methods: list[tuple[np.ndarray, int]], seed_noise: float = 0.1
) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
    """Outcomes of several methods (true class errors, number of seeds) on one shared test set.

    Image i is wrong for a run when ``d_i + seed_noise * e < q``: d ~ U(0, 1) per image (shared),
    e ~ N(0, 1) per run and image; q is set so that the probability is the true class error.
    """
    labels = np.repeat(np.arange(K), n_per_class)
    difficulty = rng.random(len(labels))
    wrong, rows = [], []
    for err, seeds in methods:
        q = _threshold(err, seed_noise)[labels]
        rows.append(list(range(len(wrong), len(wrong) + seeds)))
        wrong += [difficulty + seed_noise * rng.standard_normal(len(labels)) < q for _ in range(seeds)]
    return labels, np.array(wrong), rows


def _threshold(err: np.ndarray, s: float) -> np.ndarray:
    """q with P(U + s*N < q) = err, by bisection (U uniform, N standard normal)."""
    grid = np.linspace(-6, 6, 4001)
    weights = np.exp(-(grid**2) / 2)
    weights /= weights.sum()
    lo, hi = np.full_like(err, -1.0), np.full_like(err, 2.0)
    for _ in range(50):
        mid = (lo + hi) / 2
        p = (np.clip(mid[:, None] - s * grid[None, :], 0, 1) * weights).sum(1)
        lo, hi = np.where(p < err, mid, lo), np.where(p < err, hi, mid)
    return (lo + hi) / 2


def test_default_resamples() -> None:
    assert N_RESAMPLES >= 2000


@pytest.mark.parametrize("seeds", [1, 5])
def test_intervals_cover_the_true_errors_about_95_percent(seeds: int) -> None:
    rng = np.random.default_rng(seeds)
    draws, hits = 200, np.zeros(4)
    for k in range(draws):
        labels, wrong, rows = simulate(rng, 100, [(TRUE_ERR, seeds)])
        (row,) = bootstrap_threat(labels, wrong, rows, n_classes=K, n_resamples=1000, seed=k)
        hits += [
            row.avg.lo <= TRUE_ERR.mean() <= row.avg.hi,
            row.worst.lo <= TRUE_ERR[-1] <= row.worst.hi,
            row.per_class[0].lo <= TRUE_ERR[0] <= row.per_class[0].hi,
            row.per_class[5].lo <= TRUE_ERR[5] <= row.per_class[5].hi,
        ]
    coverage = hits / draws
    assert ((coverage >= 0.91) & (coverage <= 0.99)).all(), coverage  # 200 draws: +-1.5 points SE


def test_a_3_point_shift_at_1000_images_per_class_is_detected() -> None:
    labels, wrong, rows = simulate(np.random.default_rng(0), 1000, [(TRUE_ERR, 3), (TRUE_ERR - 0.03, 3), (TRUE_ERR, 3)])
    base, better, same = bootstrap_threat(labels, wrong, rows, n_classes=K, baseline=0, seed=1)
    for delta in (better.avg_delta, better.worst_delta):
        assert delta.significant and delta.hi < 0
        assert delta.lo < -0.03 < delta.hi or abs(delta.value + 0.03) < 0.01
    assert abs(better.avg_delta.value - (better.avg.value - base.avg.value)) < 1e-12
    assert abs(better.worst_delta.value - (better.worst.value - base.worst.value)) < 1e-12
    assert base.avg_delta == Delta(0.0, 0.0, 0.0) and not base.avg_delta.significant
    assert not same.avg_delta.significant and not same.worst_delta.significant
    # Pairing is what detects the worst class: the two rows' own intervals overlap.
    assert better.worst.hi > base.worst.lo


def test_a_one_seed_difference_is_never_marked() -> None:
    """A row or baseline with one seed: the replicates resample test images only, so even a shift the
    images alone show is not marked as a difference between methods (seeds were not resampled)."""
    labels, wrong, rows = simulate(np.random.default_rng(0), 1000, [(TRUE_ERR, 3), (TRUE_ERR - 0.05, 1)])
    base, one = bootstrap_threat(labels, wrong, rows, n_classes=K, baseline=0, seed=1)
    for delta in (one.avg_delta, one.worst_delta):
        assert delta.one_seed and delta.hi < 0 and not delta.significant
    assert not base.avg_delta.one_seed  # the baseline against itself
    labels, wrong, rows = simulate(np.random.default_rng(0), 1000, [(TRUE_ERR, 1), (TRUE_ERR - 0.05, 2)])
    _, two = bootstrap_threat(labels, wrong, rows, n_classes=K, baseline=0, seed=1)
    assert two.avg_delta.one_seed and not two.avg_delta.significant  # a one-seed baseline, too
    labels, wrong, rows = simulate(np.random.default_rng(0), 1000, [(TRUE_ERR, 2), (TRUE_ERR - 0.05, 2)])
    _, both = bootstrap_threat(labels, wrong, rows, n_classes=K, baseline=0, seed=1)
    assert not both.avg_delta.one_seed and both.avg_delta.significant


def test_a_bound_that_is_0_up_to_rounding_is_not_significant() -> None:
    """Float noise in a difference of error rates (a bound at -1e-17 where it is 0) is no evidence;
    one image of difference in 3 seeds x 10,000 images is."""
    assert not Delta(-0.028, -0.0567, -1e-17).significant
    assert not Delta(0.028, 1e-17, 0.0567).significant
    assert Delta(-0.028, -0.0567, -1 / 30000).significant and Delta(0.028, 1 / 30000, 0.0567).significant


def test_identical_methods_are_not_flagged() -> None:
    labels, wrong, rows = simulate(np.random.default_rng(2), 200, [(TRUE_ERR, 3)])
    doubled = np.concatenate([wrong, wrong])
    _, copy = bootstrap_threat(labels, doubled, [[0, 1, 2], [3, 4, 5]], n_classes=K, baseline=0)
    # no image decided differently: 0 with the Wilson bound for 0 of n images differing, not [0, 0]
    u_avg, u_worst = wilson(0, 3 * 200 * K)[1], wilson(0, 3 * 200)[1]
    assert copy.avg_delta == Delta(0.0, -u_avg, u_avg) and copy.worst_delta == Delta(0.0, -u_worst, u_worst)
    assert not copy.avg_delta.significant and not copy.worst_delta.significant
    # Two methods with the same true errors (independent seeds): flagged about 5% of the time.
    rng, draws, flagged = np.random.default_rng(3), 150, np.zeros(2)
    for k in range(draws):
        labels, wrong, rows = simulate(rng, 100, [(TRUE_ERR, 2), (TRUE_ERR, 2)])
        _, other = bootstrap_threat(labels, wrong, rows, n_classes=K, baseline=0, n_resamples=1000, seed=k)
        flagged += [other.avg_delta.significant, other.worst_delta.significant]
    assert (flagged / draws <= 0.09).all(), flagged / draws


def test_same_seed_same_bytes_other_seed_other_draws() -> None:
    labels, wrong, rows = simulate(np.random.default_rng(4), 50, [(TRUE_ERR, 2), (TRUE_ERR - 0.05, 3)])
    run = lambda seed: bootstrap_threat(labels, wrong, rows, n_classes=K, baseline=1, seed=seed)  # noqa: E731
    assert pickle.dumps(run([7, 1])) == pickle.dumps(run([7, 1]))
    assert run([7, 1])[0].avg.lo != run([7, 2])[0].avg.lo
    assert run([7, 1])[0].avg.value == run([7, 2])[0].avg.value


def test_point_values_are_the_evaluators_numbers_averaged_over_seeds() -> None:
    """avg: count-weighted error; worst: the mean of each seed's worst class; an empty class is NaN."""
    rng = np.random.default_rng(5)
    labels = np.repeat([0, 1, 2, 4], [30, 10, 25, 40])  # class 3 has no images
    wrong = rng.random((3, len(labels))) < 0.4
    classes = [f"c{i}" for i in range(5)]
    (row,) = bootstrap_threat(labels, wrong, [[2, 0, 1]], n_classes=5, n_resamples=200)
    ms = [summarize(~w, labels, classes) for w in wrong]
    assert row.n_seeds == 3 and row.avg_delta is None
    assert row.avg.value == pytest.approx(np.mean([1 - m.avg for m in ms]), abs=1e-6)
    assert row.worst.value == pytest.approx(np.mean([1 - m.worst for m in ms]), abs=1e-6)
    for c in (0, 1, 2, 4):
        assert row.per_class[c].value == pytest.approx(np.mean([1 - m.per_class[c] for m in ms]), abs=1e-6)
        assert row.per_class[c].lo <= row.per_class[c].value <= row.per_class[c].hi
    assert all(math.isnan(v) for v in (row.per_class[3].value, row.per_class[3].lo, row.per_class[3].hi))
    assert row.avg.lo < row.avg.value < row.avg.hi and row.worst.lo <= row.worst.value <= row.worst.hi


def test_a_run_that_gets_everything_right_has_the_wilson_interval_not_zero_width() -> None:
    labels = np.repeat(np.arange(3), 20)
    (row,) = bootstrap_threat(labels, np.zeros((1, 60), bool), [[0]], n_classes=3, n_resamples=100)
    assert (row.avg.value, row.avg.lo) == (0.0, 0.0) and row.avg.hi == pytest.approx(wilson(0, 60)[1])
    assert row.per_class[1].hi == pytest.approx(wilson(0, 20)[1]) and row.per_class[1].hi > row.avg.hi > 0.05


def test_no_zero_width_interval_with_5_images_per_class() -> None:
    """Issue 27: a model at chance that predicts one class (right on every image of class 9 only),
    5 images per class: 90% average and 100% worst-class error, each with a real interval; its
    difference from an identical model has one too."""
    labels = np.repeat(np.arange(K), 5)
    wrong = np.array([labels != 9, labels != 9])
    a, b = bootstrap_threat(labels, wrong, [[0], [1]], n_classes=K, baseline=0, n_resamples=200)
    assert b.avg.value == pytest.approx(0.9) and b.worst.value == 1.0
    for iv in (b.avg, b.worst, b.per_class[0], b.per_class[9], b.avg_delta, b.worst_delta):
        assert iv.hi - iv.lo > 0.02, iv
        assert iv.lo <= iv.value <= iv.hi
    assert b.avg.lo == pytest.approx(wilson(45, 50)[0]) and b.worst.lo == pytest.approx(wilson(5, 5)[0])
    assert not b.avg_delta.significant and b.avg_delta.hi == pytest.approx(wilson(0, 50)[1])
    assert a.avg_delta == Delta(0.0, 0.0, 0.0)  # the baseline against itself


def test_wilson_interval() -> None:
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-3)  # the textbook value, 95%
    lo, hi = wilson(50, 100)
    assert (lo, hi) == (pytest.approx(0.4038, abs=1e-3), pytest.approx(0.5962, abs=1e-3))
    assert all(math.isnan(v) for v in wilson(0, 0))


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="shape"):
        bootstrap_threat(np.zeros(4, int), np.zeros((2, 5), bool), [[0]], n_classes=1)
    with pytest.raises(ValueError, match="at least one run"):
        bootstrap_threat(np.zeros(4, int), np.zeros((2, 4), bool), [[]], n_classes=1)


def test_ranks_tie_rows_whose_interval_overlaps_the_leaders() -> None:
    # 10 [9, 12] leads; 11 and 12 overlap it; 20 does not: 1, 1, 1, 4.
    assert tied_ranks([12, 10, 20, 11], [11.5, 9, 19, 8], [13, 12, 21, 13]) == [1, 1, 4, 1]
    # Disjoint intervals: plain ranks, whatever the input order.
    assert tied_ranks([3, 1, 2], [2.9, 0.9, 1.9], [3.1, 1.1, 2.1]) == [3, 1, 2]
    # A later tier is led by the best row left: 5 [4.5, 6] ties 6 [5.5, 7] but not 8 [7.5, 9].
    assert tied_ranks([1, 5, 6, 8], [0, 4.5, 5.5, 7.5], [2, 6, 7, 9]) == [1, 2, 2, 4]
    # No interval: the point itself; no value: no rank.
    assert tied_ranks([1.0, 1.5, None, 3.0], [0.0, None, None, math.nan], [2.0, None, None, 4]) == [1, 1, None, 3]
    assert tied_ranks([2.0, 1.0]) == [2, 1]
    assert tied_ranks([]) == []


def test_an_interval_holds_its_estimate_even_for_a_worst_class_on_few_images() -> None:
    """10 images per class: one run wrong on all, the other on 8 of each class's 10. Most replicates
    find some class at 100% for the second run too, so the percentile interval of the difference
    of worst classes alone is [0, +10] around +20; the reported one holds +20."""
    labels = np.repeat(np.arange(K), 10)
    wrong = np.array([np.ones(K * 10, bool), np.arange(K * 10) % 10 < 8])
    _, all_wrong = bootstrap_threat(labels, wrong, [[1], [0]], n_classes=K, baseline=0, n_resamples=500)
    d = all_wrong.worst_delta
    assert d.value == pytest.approx(0.2) and d.lo <= d.value <= d.hi
