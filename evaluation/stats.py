"""Rates with their n and a 95% interval, and paired tests: what lets an eval decide anything.

A rate without an interval cannot say whether training changed a model, and one computed with
failed items scored as answers means nothing; so every rate here carries the number of items it
stands over, the items left out because they failed, and an interval:

- Wilson's score interval for a proportion of independent yes/no items (it keeps its coverage
  near 95% at small n and near 0 or 1, where the normal approximation does not);
- a percentile bootstrap over prompts where a prompt holds several sampled answers, or where an
  item scores 1/2 (a tie): prompts are resampled whole, so answers to one prompt, which are not
  independent, never count as independent evidence.

Two models answering the same prompts are compared with paired tests: McNemar's exact test for a
yes/no outcome per prompt (refused or not), the sign test for wins against losses, and a paired
bootstrap of the per-prompt difference where answers are sampled. A difference is called
significant at p < 0.05, and the p-value is always shown beside it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

Z95 = 1.959963984540054
BOOTSTRAP = 2000


@dataclass(frozen=True)
class Rate:
    """A rate over `n` items, its 95% interval, and the items left out because they failed."""

    value: float | None
    n: int
    low: float | None
    high: float | None
    failures: int = 0
    method: str = "wilson"

    def to_json(self) -> dict:
        return {
            "value": self.value,
            "n": self.n,
            "ci95": [self.low, self.high],
            "failures": self.failures,
            "interval": self.method,
        }

    def __str__(self) -> str:
        if self.value is None:
            return f"- (n=0{self._failed()})"
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}] n={self.n}{self._failed()}"

    def _failed(self) -> str:
        return f", {self.failures} failed" if self.failures else ""


def wilson(successes: float, n: int, failures: int = 0, z: float = Z95) -> Rate:
    """The share `successes / n` with Wilson's score interval."""
    if n <= 0:
        return Rate(None, 0, None, None, failures)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Rate(p, n, max(0.0, centre - half), min(1.0, centre + half), failures)


def proportion(outcomes: Sequence[bool | None]) -> Rate:
    """Yes/no items, `None` for an item that failed (left out and counted)."""
    done = [o for o in outcomes if o is not None]
    return wilson(sum(done), len(done), failures=len(outcomes) - len(done))


def _quantile(sorted_values: list[float], q: float) -> float:
    k = (len(sorted_values) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def _means(groups: list[list[float]]) -> float:
    values = [v for g in groups for v in g]
    return sum(values) / len(values)


def bootstrap(groups: Sequence[Sequence[float | None]], seed: int = 0, draws: int = BOOTSTRAP) -> Rate:
    """The mean of per-item scores (0-1), items grouped by prompt (a group per prompt, a score per
    sampled answer; `None` for an answer that failed), with a percentile bootstrap over prompts."""
    failures = sum(v is None for g in groups for v in g)
    kept = [[v for v in g if v is not None] for g in groups]
    kept = [g for g in kept if g]
    n = sum(len(g) for g in kept)
    if not kept:
        return Rate(None, 0, None, None, failures, "bootstrap")
    rng = random.Random(seed)
    means = sorted(_means([kept[rng.randrange(len(kept))] for _ in kept]) for _ in range(draws))
    return Rate(_means(kept), n, _quantile(means, 0.025), _quantile(means, 0.975), failures, "bootstrap")


def rate(groups: Sequence[Sequence[float | None]], seed: int = 0) -> Rate:
    """Wilson where every prompt has one yes/no item; else the bootstrap over prompts."""
    binary = all(len(g) <= 1 for g in groups) and all(v in (0, 1, 0.0, 1.0, None) for g in groups for v in g)
    if binary:
        return proportion([g[0] if g else None for g in groups])
    return bootstrap(groups, seed)


# ---------------------------------------------------------------------------------------------
# Paired tests


def _binom_two_sided(k: int, n: int) -> float:
    """Exact two-sided p-value of k successes in n fair coin flips."""
    if n == 0:
        return 1.0
    k = min(k, n - k)
    log_half = n * math.log(0.5)
    tail = sum(
        math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + log_half) for i in range(k + 1)
    )
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class Comparison:
    """Model A against model B on the same prompts: the difference and whether it is beyond noise."""

    test: str
    diff: float | None  # A's rate minus B's (or A's win rate minus 1/2)
    p: float
    n: int  # prompts compared (both answered)
    low: float | None = None
    high: float | None = None

    @property
    def significant(self) -> bool:
        return self.p < 0.05

    def to_json(self) -> dict:
        return {
            "test": self.test,
            "diff": self.diff,
            "p": self.p,
            "n": self.n,
            "ci95": [self.low, self.high],
            "significant": self.significant,
        }

    def __str__(self) -> str:
        if self.diff is None:
            return "-"
        verdict = "differs" if self.significant else "no significant difference"
        return f"{self.diff:+.3f} (p={self.p:.3g}, {verdict})"


def mcnemar(a: Sequence[bool | None], b: Sequence[bool | None]) -> Comparison:
    """A yes/no outcome per prompt for two models (None: failed, the prompt is left out): McNemar's
    exact test on the prompts where they disagree."""
    both = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
    if not both:
        return Comparison("mcnemar", None, 1.0, 0)
    only_a = sum(1 for x, y in both if x and not y)
    only_b = sum(1 for x, y in both if y and not x)
    diff = (only_a - only_b) / len(both)
    return Comparison("mcnemar", diff, _binom_two_sided(only_a, only_a + only_b), len(both))


def sign_test(credits: Sequence[float | None]) -> Comparison:
    """Per prompt 1 (A won), 0 (A lost), 1/2 (a tie), None (failed): the sign test of wins against
    losses, ties left out, and the win rate's distance from 1/2."""
    done = [c for c in credits if c is not None]
    wins, losses = sum(c > 0.5 for c in done), sum(c < 0.5 for c in done)
    if not done:
        return Comparison("sign", None, 1.0, 0)
    return Comparison("sign", sum(done) / len(done) - 0.5, _binom_two_sided(wins, wins + losses), len(done))


def paired_bootstrap(
    a: Sequence[Sequence[float | None]], b: Sequence[Sequence[float | None]], seed: int = 0, draws: int = BOOTSTRAP
) -> Comparison:
    """Per prompt, A's and B's scores over their sampled answers: the bootstrap over prompts of the
    mean difference; p is twice the share of resampled differences on the far side of 0."""
    diffs = []
    for ga, gb in zip(a, b):
        xa, xb = [v for v in ga if v is not None], [v for v in gb if v is not None]
        if xa and xb:
            diffs.append(sum(xa) / len(xa) - sum(xb) / len(xb))
    if not diffs:
        return Comparison("paired bootstrap", None, 1.0, 0)
    rng = random.Random(seed)
    means = sorted(sum(diffs[rng.randrange(len(diffs))] for _ in diffs) / len(diffs) for _ in range(draws))
    observed = sum(diffs) / len(diffs)
    below = sum(m <= 0 for m in means) / draws
    above = sum(m >= 0 for m in means) / draws
    p = min(1.0, 2 * min(below, above)) if observed != 0 else 1.0
    low, high = _quantile(means, 0.025), _quantile(means, 0.975)
    return Comparison("paired bootstrap", observed, p, len(diffs), low, high)


def compare_outcomes(
    a: Sequence[Sequence[float | None]], b: Sequence[Sequence[float | None]], seed: int = 0
) -> Comparison:
    """McNemar where each prompt has one yes/no outcome per model, else the paired bootstrap."""
    single = all(len(g) <= 1 for g in (*a, *b))
    if single and all(v in (0, 1, None) for g in (*a, *b) for v in g):
        return mcnemar([g[0] if g else None for g in a], [g[0] if g else None for g in b])
    return paired_bootstrap(a, b, seed)


# ---------------------------------------------------------------------------------------------
# A slope with its interval


@dataclass(frozen=True)
class Slope:
    """The least-squares slope of y on x, with a bootstrap interval over the (x, y) items."""

    value: float | None
    n: int
    low: float | None
    high: float | None

    def to_json(self) -> dict:
        return {"value": self.value, "n": self.n, "ci95": [self.low, self.high]}

    def __str__(self) -> str:
        if self.value is None:
            return "- (n=0)"
        return f"{self.value:+.4f} [{self.low:+.4f}, {self.high:+.4f}] n={self.n}"


def _ols(points: list[tuple[float, float]]) -> float | None:
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return None if sxx == 0 else sum((x - mx) * (y - my) for x, y in points) / sxx


def slope(x: Sequence[float], y: Sequence[float], seed: int = 0, draws: int = BOOTSTRAP) -> Slope:
    points = list(zip(x, y))
    if len(points) < 3 or _ols(points) is None:
        return Slope(None, len(points), None, None)
    rng = random.Random(seed)
    fits = []
    for _ in range(draws):
        fit = _ols([points[rng.randrange(len(points))] for _ in points])
        if fit is not None:
            fits.append(fit)
    fits.sort()
    return Slope(_ols(points), len(points), _quantile(fits, 0.025), _quantile(fits, 0.975))


# ---------------------------------------------------------------------------------------------
# What the policy, character and frontier evals read their rates and tests through


def complement(r: Rate) -> Rate:
    """One minus a rate (harmlessness from harmful compliance), its interval turned over."""
    if r.value is None:
        return r
    return Rate(1.0 - r.value, r.n, 1.0 - r.high, 1.0 - r.low, r.failures, r.method)


def failed_share(r: Rate) -> float:
    """The share of a rate's items left out because they failed (0 for a rate with no items)."""
    total = r.n + r.failures
    return r.failures / total if total else 0.0


def prompt_means(groups: Sequence[Sequence[float | None]]) -> list[float | None]:
    """Per prompt, the mean score of its answers that did not fail (None where all failed): the
    unit a sign test counts, since a prompt's sampled answers are not independent."""
    out: list[float | None] = []
    for g in groups:
        done = [v for v in g if v is not None]
        out.append(sum(done) / len(done) if done else None)
    return out


def rate_from_json(d: dict) -> Rate:
    low, high = d.get("ci95") or (None, None)
    return Rate(d.get("value"), d.get("n", 0), low, high, d.get("failures", 0), d.get("interval", "wilson"))


def comparison_from_json(d: dict) -> Comparison:
    low, high = d.get("ci95") or (None, None)
    return Comparison(d["test"], d.get("diff"), d.get("p", 1.0), d.get("n", 0), low, high)


EXACT_UP_TO = 12  # prompts whose every sign flip is enumerated (4,096); past it, random flips


def permutation_test(
    a: Sequence[Sequence[float | None]], b: Sequence[Sequence[float | None]], seed: int = 0, draws: int = BOOTSTRAP
) -> Comparison:
    """Per prompt, A's and B's mean scores over their sampled answers: the paired permutation test
    of the mean difference (under no difference, each prompt's difference is as likely negated),
    with the paired bootstrap's interval. Unlike the bootstrap's own p, it stays valid on a handful
    of prompts: two prompts that both favour A give p = 1/2, not 0."""
    diffs = [x - y for x, y in zip(prompt_means(a), prompt_means(b)) if x is not None and y is not None]
    boot = paired_bootstrap(a, b, seed, draws)
    if not diffs:
        return Comparison("paired permutation", None, 1.0, 0)
    observed = abs(sum(diffs)) - 1e-12
    if len(diffs) <= EXACT_UP_TO:
        flips = range(2 ** len(diffs))
        extreme = sum(abs(sum(d if k >> i & 1 else -d for i, d in enumerate(diffs))) >= observed for k in flips)
        p = extreme / 2 ** len(diffs)
    else:
        rng = random.Random(seed)
        extreme = sum(abs(sum(d if rng.random() < 0.5 else -d for d in diffs)) >= observed for _ in range(draws))
        p = (1 + extreme) / (1 + draws)
    return Comparison("paired permutation", boot.diff, min(1.0, p), len(diffs), boot.low, boot.high)


def compare_paired(
    a: Sequence[Sequence[float | None]], b: Sequence[Sequence[float | None]], seed: int = 0
) -> Comparison:
    """McNemar where each prompt has one yes/no outcome per model, else the paired permutation test."""
    single = all(len(g) <= 1 for g in (*a, *b))
    if single and all(v in (0, 1, None) for g in (*a, *b) for v in g):
        return mcnemar([g[0] if g else None for g in a], [g[0] if g else None for g in b])
    return permutation_test(a, b, seed)


# ---------------------------------------------------------------------------------------------
# Two independent groups, and a slope within groups


def unpaired_bootstrap(
    a: Sequence[float | None], b: Sequence[float | None], seed: int = 0, draws: int = BOOTSTRAP
) -> Comparison:
    """A's mean score minus B's over two separate sets of items (`None`: failed, left out): each
    set resampled on its own; p is twice the share of resampled differences on the far side of 0."""
    xa, xb = [v for v in a if v is not None], [v for v in b if v is not None]
    if not xa or not xb:
        return Comparison("bootstrap difference", None, 1.0, len(xa) + len(xb))
    rng = random.Random(seed)

    def mean_of(xs: list[float]) -> float:
        return sum(xs[rng.randrange(len(xs))] for _ in xs) / len(xs)

    diffs = sorted(mean_of(xa) - mean_of(xb) for _ in range(draws))
    observed = sum(xa) / len(xa) - sum(xb) / len(xb)
    below, above = sum(d <= 0 for d in diffs) / draws, sum(d >= 0 for d in diffs) / draws
    p = min(1.0, 2 * min(below, above)) if observed != 0 else 1.0
    low, high = _quantile(diffs, 0.025), _quantile(diffs, 0.975)
    return Comparison("bootstrap difference", observed, p, len(xa) + len(xb), low, high)


BOOTSTRAP_UP_TO = 2_000  # items past which a slope's interval is the robust normal one (a bootstrap costs draws × n)


def _centred(x, y, g):
    """x and y less their group's mean (numpy arrays; `g` holds group numbers 0..k-1)."""
    import numpy as np

    with np.errstate(invalid="ignore", divide="ignore"):  # a group a resample left out has no mean
        n = np.bincount(g).astype(float)
        return x - (np.bincount(g, x) / n)[g], y - (np.bincount(g, y) / n)[g]


def slope_within(
    x: Sequence[float], y: Sequence[float], groups: Sequence[str], seed: int = 0, draws: int = BOOTSTRAP
) -> Slope:
    """The least-squares slope of y on x with an intercept of its own per group (items of different
    kinds may sit at different levels for reasons of their own). The interval is a bootstrap over
    the items up to `BOOTSTRAP_UP_TO` of them, past it the heteroskedasticity-robust (HC1) normal
    interval, which at that size agrees with it and costs one pass."""
    import numpy as np

    names: dict[str, int] = {}
    g = np.array([names.setdefault(k, len(names)) for k in groups], dtype=np.int64)
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = len(xs)
    if n < 3:
        return Slope(None, n, None, None)
    dx, dy = _centred(xs, ys, g)
    sxx = float(dx @ dx)
    if sxx <= 1e-12 * n * max(1.0, float(np.abs(xs).max())) ** 2:  # x is constant in every group
        return Slope(None, n, None, None)
    fit = float(dx @ dy) / sxx
    if n > BOOTSTRAP_UP_TO:
        resid = dy - fit * dx
        dof = max(1, n - len(names) - 1)
        se = math.sqrt(float((dx * dx) @ (resid * resid)) * n / dof) / sxx
        return Slope(fit, n, fit - Z95 * se, fit + Z95 * se)
    rng = np.random.default_rng(seed)
    fits = []
    for _ in range(draws):
        idx = rng.integers(0, n, n)
        bx, by = _centred(xs[idx], ys[idx], g[idx])
        bxx = float(bx @ bx)
        if bxx > 0:
            fits.append(float(bx @ by) / bxx)
    fits.sort()
    return Slope(fit, n, _quantile(fits, 0.025), _quantile(fits, 0.975))
