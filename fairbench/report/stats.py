"""Bootstrap intervals, paired comparisons and tied ranks from per-example outcomes.

Pure numpy: this module knows nothing about runs, files or tables. Its input, for one group of
rows under one threat, is the pool of test images every run was evaluated on (each image's class)
and, per run, which of those images it got wrong; each row is a list of runs (its seeds).

**The statistics.** A run's *class error* is its fraction of wrong images in the class; its
*average error* is its fraction of wrong images overall (count-weighted, as in metrics.json); its
*worst-class error* is its largest class error (classes without images are left out). A row's value
of each is the mean over its seeds of its runs' values: the worst-class error of a row is the mean
of each seed's worst-class error, not the worst class of the mean.

**The bootstrap** (two levels, crossed, percentile). Each of ``n_resamples`` replicates draws

- per class, as many image positions as the class has, with replacement, from that class's images
  (so class sizes stay as evaluated); the *same* positions for every run, since every run was
  tested on the same images;
- per row of S seeds, S seed positions with replacement from the row's runs, in the order given
  (callers pass them sorted by seed); rows with the same number of seeds get the *same* positions,
  so a comparison of two rows with matching seeds is paired over seeds as well as images.

A run's statistics are recomputed on the drawn images, and a row's value in the replicate is the
mean over its drawn seeds. The interval at level L is the (1-L)/2 and (1+L)/2 quantiles of the
replicates (numpy's default linear interpolation), widened to hold the estimate where it does not.
Resampling both seeds and images of a crossed design counts the seed-image interaction twice, so the
intervals lean slightly wide (Owen 2007, "The pigeonhole bootstrap"); with one seed only the test
images are resampled, and with few seeds the seed level has few distinct draws (3 seeds: 10), so the
seed part of the width is rough.
Measured on synthetic outcomes where runs differ image by image (tests/test_stats.py's model):
a row's interval covers its true error about 95% of the time with 1 or 5 seeds; with 2 to 5 seeds
a difference's interval is about 1.5 times as wide as the difference's true spread (so it claims
a difference less often than it could), and with one seed it is about right.

**The floor for small samples.** A percentile bootstrap of a few images per class can have no
width at all (5 images of a class, all wrong: every replicate is 100%). So every interval of an
error is at least the Wilson score interval (`wilson`) of the wrong images it counts, pooled over
the row's seeds: the interval reported is the hull of the two. For a class, k wrong of n images
times S seeds; for the average error, all the images; for the worst-class error, each seed's worst
class (its wrong images of its images). With hundreds of images per class the bootstrap is the
wider one and the floor changes nothing. A difference whose bootstrap interval has no width (no
image was decided differently) gets ``value ± u`` instead, u the Wilson upper bound for 0 of n
images differing, n the smaller of the two rows' counts of the statistic (`zero_width_delta`).

**A paired comparison** of a row with the baseline row is the replicate-by-replicate difference
(row minus baseline) of the statistic, both computed on the same drawn images (and seed positions
when the seed counts match); it is *significant* where the interval excludes 0 and both rows have
more than one seed. With one seed on either side the replicates resample test images only, so the
interval leaves out how much training seeds move the statistic (``Delta.one_seed``): it compares
two trained models, and is never marked as a difference between methods.

The replicates are drawn from ``numpy.random.default_rng(seed)`` in a fixed order and the image
counts are summed exactly (integers in float32 below 2**24), so the same inputs and seed give the
same bytes on any machine and with any BLAS thread count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from statistics import NormalDist
from typing import Sequence

import numpy as np

N_RESAMPLES = 2000
LEVEL = 0.95
ZERO = 1e-9  # an interval bound closer to 0 than this is 0 (`Delta.significant`)
# Replicates drawn per block: bounds the memory of one class's draws (block x class size int64).
_DRAWS_PER_BLOCK = 1 << 22


@dataclass(frozen=True)
class Interval:
    """A point estimate (from the data as observed) and its bootstrap interval [lo, hi]."""

    value: float
    lo: float
    hi: float


@dataclass(frozen=True)
class Delta(Interval):
    """A row's statistic minus the baseline's, with its paired bootstrap interval.

    ``one_seed``: the row or the baseline has a single seed, so the interval resamples test images
    only and says nothing of how much training seeds move the statistic (`bootstrap_threat`); such
    a difference is between two trained models, not shown to be one between two methods."""

    one_seed: bool = False

    @property
    def significant(self) -> bool:
        """The interval excludes 0 and both rows have more than one seed: the row differs from the
        baseline at the interval's level. Never for a ``one_seed`` difference.

        A bound within `ZERO` of 0 counts as 0: a difference of two error rates computed in
        floating point can land at -1e-17 where it is 0 exactly (an AutoAttack Δ of FAAL's row was
        marked for that), while a real difference is at least one image in all the test images of
        all the seeds (over 1e-6)."""
        return not self.one_seed and (self.lo > ZERO or self.hi < -ZERO)


@dataclass(frozen=True)
class RowStats:
    """One row's errors (fractions) under one threat, with intervals and the baseline comparison.

    ``avg_delta``/``worst_delta`` are None when no baseline was given; the baseline's own are 0.
    A class without images in the pool has NaN in ``per_class``.
    """

    n_seeds: int
    avg: Interval
    worst: Interval
    per_class: tuple[Interval, ...]
    avg_delta: Delta | None = None
    worst_delta: Delta | None = None


def _class_errors(
    labels: np.ndarray, wrong: np.ndarray, n_classes: int, n_resamples: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Class errors of every run: as observed (runs, classes) and per replicate (B, runs, classes)."""
    n_runs = wrong.shape[0]
    observed = np.full((n_runs, n_classes), np.nan)
    replicates = np.full((n_resamples, n_runs, n_classes), np.nan)
    for c in range(n_classes):
        pos = np.flatnonzero(labels == c)
        n = len(pos)
        if n == 0:
            continue
        x = wrong[:, pos].T.astype(np.float32)  # (n, runs)
        observed[:, c] = x.sum(0, dtype=np.float64) / n
        block = max(1, _DRAWS_PER_BLOCK // n)
        for start in range(0, n_resamples, block):
            b = min(block, n_resamples - start)
            draws = rng.integers(0, n, size=(b, n)) + (np.arange(b) * n)[:, None]
            counts = np.bincount(draws.ravel(), minlength=b * n).reshape(b, n).astype(np.float32)
            replicates[start : start + b, :, c] = counts @ x  # exact integers
        replicates[:, :, c] /= n
    return observed, replicates


def _run_stats(class_err: np.ndarray, n_per_class: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(average error, worst-class error) over the last axis, classes with images only."""
    present = n_per_class > 0
    err = class_err[..., present]
    avg = (err * n_per_class[present]).sum(-1) / n_per_class[present].sum()
    return avg, err.max(-1)


def wilson(k: float, n: float, level: float = LEVEL) -> tuple[float, float]:
    """The Wilson score interval of a proportion, k successes of n trials (never of zero width
    for n >= 1); (nan, nan) for n = 0."""
    if n <= 0:
        return math.nan, math.nan
    z = NormalDist().inv_cdf((1 + level) / 2)
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(max(p * (1 - p) / n + z2 / (4 * n * n), 0.0))
    return (0.0 if k <= 0 else max(0.0, centre - half)), (1.0 if k >= n else min(1.0, centre + half))


def _floored(value: float, lo: float, hi: float, k: float, n: float, level: float) -> Interval:
    """The bootstrap interval [lo, hi] widened to hold the Wilson interval of k of n."""
    if math.isnan(value):
        return Interval(value, lo, hi)
    w_lo, w_hi = wilson(k, n, level)
    return Interval(value, min(lo, w_lo), max(hi, w_hi))


def zero_width_delta(delta: Delta, n: float, level: float = LEVEL) -> Delta:
    """``delta`` itself, or, when its interval has no width, ``value ± u``: u the Wilson upper bound
    of 0 of ``n`` (no image was decided differently, so the true difference is within that)."""
    if math.isnan(delta.value) or delta.hi - delta.lo > ZERO or n <= 0:
        return delta
    u = wilson(0, n, level)[1]
    return Delta(delta.value, delta.value - u, delta.value + u)


def _interval(value: float, replicates: np.ndarray, level: float) -> tuple[float, float, float]:
    if math.isnan(value):
        return value, math.nan, math.nan
    lo, hi = np.quantile(replicates, [(1 - level) / 2, (1 + level) / 2])
    # the percentile interval of a maximum (the worst class) can miss the estimate on a few images
    # (most replicates find some class at 100%): the interval always holds it
    return float(value), float(min(lo, value)), float(max(hi, value))


def bootstrap_threat(
    labels: np.ndarray,
    wrong: np.ndarray,
    rows: Sequence[Sequence[int]],
    *,
    n_classes: int,
    baseline: int | None = None,
    n_resamples: int = N_RESAMPLES,
    seed: int | Sequence[int] = 0,
    level: float = LEVEL,
) -> list[RowStats]:
    """Intervals for every row, and each row against ``baseline``, under one threat.

    ``labels``: the class of each image in the pool, shape (images,). ``wrong``: shape (runs,
    images), true where that run got that image wrong. ``rows``: per row, the positions in
    ``wrong`` of its runs, in seed order (non-empty). ``baseline``: a position in ``rows``.
    ``seed``: anything `numpy.random.default_rng` takes; pass one that names the group and threat
    so each is reproducible on its own.
    """
    labels = np.asarray(labels)
    wrong = np.asarray(wrong, dtype=bool)
    if wrong.ndim != 2 or wrong.shape[1] != labels.shape[0]:
        raise ValueError(f"wrong has shape {wrong.shape}; expected (runs, {labels.shape[0]})")
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError("every row needs at least one run")
    if n_resamples < 1 or not 0 < level < 1:
        raise ValueError("n_resamples must be >= 1 and level in (0, 1)")
    rng = np.random.default_rng(seed)
    unit = rng.random((n_resamples, max(len(r) for r in rows)))  # seed draws, shared by equal counts
    n_per_class = np.bincount(labels, minlength=n_classes)[:n_classes]
    observed, replicates = _class_errors(labels, wrong, n_classes, n_resamples, rng)
    run_avg, run_worst = _run_stats(observed, n_per_class)
    rep_avg, rep_worst = _run_stats(replicates, n_per_class)

    wrong_count = np.rint(np.nan_to_num(observed) * n_per_class)  # (runs, classes), exact integers
    worst_of_run = np.where(n_per_class > 0, np.nan_to_num(observed, nan=-1.0), -1.0).argmax(1)
    points, draws, counts = [], [], []
    for row in rows:
        runs = np.asarray(row)
        picked = runs[(unit[:, : len(runs)] * len(runs)).astype(np.intp)]  # (B, S) run positions
        rep_class = replicates[np.arange(n_resamples)[:, None], picked].mean(1)  # (B, classes)
        draws.append(
            (
                np.take_along_axis(rep_avg, picked, 1).mean(1),
                np.take_along_axis(rep_worst, picked, 1).mean(1),
                rep_class,
            )
        )
        points.append((run_avg[runs].mean(), run_worst[runs].mean(), observed[runs].mean(0)))
        worst = worst_of_run[runs]
        counts.append(
            (
                (wrong_count[runs].sum(), n_per_class.sum() * len(runs)),  # (k, n): average
                (wrong_count[runs, worst].sum(), n_per_class[worst].sum()),  # worst class
                (wrong_count[runs].sum(0), n_per_class * len(runs)),
            )
        )  # per class

    stats = []
    for i, (row, (avg, worst, per_class), (d_avg, d_worst, d_class), (c_avg, c_worst, c_class)) in enumerate(
        zip(rows, points, draws, counts)
    ):
        classes = tuple(
            _floored(*_interval(per_class[c], d_class[:, c], level), c_class[0][c], c_class[1][c], level)
            for c in range(n_classes)
        )
        deltas: list[Delta | None] = [None, None]
        if baseline is not None:
            b_points, b_draws, b_counts = points[baseline], draws[baseline], counts[baseline]
            measured = [
                Delta(*_interval(float(p - b_points[j]), d - b_draws[j], level))
                for j, (p, d) in enumerate([(avg, d_avg), (worst, d_worst)])
            ]
            if i != baseline:  # the baseline against itself is exactly 0
                measured = [
                    zero_width_delta(d, min(c[1], b[1]), level) for d, c, b in zip(measured, (c_avg, c_worst), b_counts)
                ]
                if min(len(row), len(rows[baseline])) < 2:  # no seed variation to resample
                    measured = [replace(d, one_seed=True) for d in measured]
            deltas = [*measured]
        stats.append(
            RowStats(
                len(row),
                _floored(*_interval(avg, d_avg, level), *c_avg, level),
                _floored(*_interval(worst, d_worst, level), *c_worst, level),
                classes,
                *deltas,
            )
        )
    return stats


def tied_ranks(
    values: Sequence[float | None], lo: Sequence[float | None] | None = None, hi: Sequence[float | None] | None = None
) -> list[int | None]:
    """Competition ranks (1 is best, lower value is better) in which overlapping intervals tie.

    Rows are taken in order of value (equal values in input order). The best row not yet ranked
    leads a tier: it, and every row not yet ranked whose interval [lo, hi] overlaps the leader's
    (shares at least one point with it), get rank 1 + the number of rows ranked before the tier.
    This repeats until every row is ranked. So the best row and every row whose interval overlaps
    the best one's share rank 1; e.g. values 10, 11, 12, 20 where 11 and 12 overlap 10's interval
    and 20 overlaps none rank 1, 1, 1, 4. A row without an interval (lo or hi None or NaN) counts as
    the single point [value, value]; a row without a value gets None.
    """
    n = len(values)
    lo = lo if lo is not None else [None] * n
    hi = hi if hi is not None else [None] * n

    def num(v: float | None) -> float:
        return math.nan if v is None else float(v)

    span = []
    for v, a, b in zip(map(num, values), map(num, lo), map(num, hi)):
        span.append((v, v) if math.isnan(a) or math.isnan(b) else (a, b))
    order = sorted((i for i in range(n) if not math.isnan(num(values[i]))), key=lambda i: num(values[i]))
    ranks: list[int | None] = [None] * n
    done = 0
    for leader in order:
        if ranks[leader] is not None:
            continue
        tier = [
            i for i in order if ranks[i] is None and span[i][0] <= span[leader][1] and span[leader][0] <= span[i][1]
        ]
        for i in tier:
            ranks[i] = done + 1
        done += len(tier)
    return ranks
