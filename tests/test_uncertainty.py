"""Uncertainty on a synthetic MLflow store with known per-question scores: every interval, p-value,
winner, "n/a" ratio and borderline mark in the report is recomputed here independently (the
Student t interval written out with `statistics`, an explicit enumeration of sign patterns), and
`steerlab.stats` is checked against direct scipy calls and the intervals' properties."""

from __future__ import annotations

import itertools
import math
import random
import statistics

import numpy as np
import pytest
from scipy import stats as sps

from conftest import t_interval as boot
from steerlab import records, stats, tracking
from steerlab.records import Trial
from steerlab.report.cli import main

MIN = 70.0
SEARCH_Q = [f"Search question {i}?" for i in range(4)]
HELD_Q = [f"Held-out question {i}?" for i in range(8)]
BASE_SEARCH = [10.0, 20.0, 30.0, 40.0]
BASE_HELD = [20.0, 30.0, 25.0, 35.0, 40.0, 22.0, 28.0, 33.0]

# per held-out question: steered trait minus the unsteered trait
EVIL_INST = [3.0, -4.0, 2.0, -1.0, 5.0, -6.0, 1.0, 0.0]  # mean 0: CI includes 0
EVIL_NAT = [18.0, 22.0, 15.0, 25.0, 20.0, 17.0, 23.0, 19.0]  # clearly above instruction's
EVIL_NAT_PROBE = [d - 2.0 for d in EVIL_NAT]  # 2 below mean_diff on every question
SYC_INST = [10.0, 12.0, 9.0, 11.0, 10.0, 13.0, 8.0, 11.0]  # CI above 0: a ratio is allowed
SYC_NAT = [30.0, -5.0, 25.0, -2.0, 28.0, -4.0, 20.0, 0.0]  # mean 11.5, but noisy
HAL_INST = [4.0, 6.0, 5.0, 7.0, 3.0, 6.0, 5.0, 4.0]


def perm_p(diffs):
    """Two-sided sign-flip p-value by enumerating every sign pattern."""
    observed = abs(sum(diffs) / len(diffs))
    hits = total = 0
    for signs in itertools.product((1, -1), repeat=len(diffs)):
        total += 1
        hits += abs(sum(s * d for s, d in zip(signs, diffs, strict=True)) / len(diffs)) >= (
            observed - 1e-9
        )
    return hits / total


def ci(lo_hi, sign="+"):
    lo, hi = lo_hi
    return f"[{lo:{sign}.1f}, {hi:{sign}.1f}]"


def p_text(p):
    return "p<0.001" if p < 0.001 else f"p={p:.3f}" if p < 0.1 else f"p={p:.2f}"


def paired_text(a, b):
    d = [x - y for x, y in zip(a, b, strict=True)]
    return f"{statistics.fmean(d):+.1f} {ci(boot(d))}, {p_text(perm_p(d))}, n={len(d)}"


def _params(trait, source, position, method):
    return {
        "trait": {"name": trait},
        "model": {"name": "tiny", "steering": "tiny-instruct"},
        "judge": {"backend": "offline"},
        "extraction": {"source": source, "method": method, "max_pairs": 80},
        "resolved": {
            "position": position,
            "source": source,
            "method": method,
            "component": "residual",
        },
        "search": {"sampler": "tpe", "coherence_min": MIN},
        "steering": {"component": "residual", "n_questions": 4},
        "confirm": {"n_questions": 8, "rollouts": 1},
    }


def _rows(questions, traits, coherence):
    return [
        {"question": q, "answer": "…", "trait": t, "coherence": c, "note": ""}
        for q, t, c in zip(questions, traits, coherence, strict=True)
    ]


def _sweep(root, exp, params, search, held=None, *, coherence=None, tags=None):
    """A sweep whose one trial steered `search` (per search question: steered minus unsteered
    trait) and was confirmed with `held` (the same per held-out question), logged the way the
    sweeper logs it; CIs computed here."""
    coh = coherence or [85.0] * len(search)
    trait = [b + d for b, d in zip(BASE_SEARCH, search, strict=True)]
    cis = {}
    for name, xs in (("trait", trait), ("coherence", coh), ("delta", search)):
        cis[f"{name}_lo"], cis[f"{name}_hi"] = boot(xs)
    scores = (statistics.fmean(trait), statistics.fmean(coh), statistics.fmean(search))
    t = Trial.of(0, 5, 0.2, (), scores, MIN, cis)
    with tracking.run(
        root, exp, "sweep", params, tags={records.KIND: "sweep", **(tags or {})}
    ) as m:
        m.log_metrics({"baseline_trait": statistics.fmean(BASE_SEARCH)})
        tracking.log_sweep(m, [t], [0], MIN)
        if held is not None:
            rows = _rows(HELD_Q, [b + d for b, d in zip(BASE_HELD, held, strict=True)], [85.0] * 8)
            base = _rows(HELD_Q, BASE_HELD, [90.0] * 8)
            conf = stats.Confirmation.of(0, rows, base, MIN)
            tracking.log_confirmation(m, conf, rows, base)
        return m.active_run().info.run_id


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    md = "model_diff"
    flat = [4.0, 6.0, 5.0, 7.0]
    _sweep(root, md, _params("evil", "instruction", "response[:]", "mean_diff"), flat, EVIL_INST)
    _sweep(root, md, _params("evil", "natural", "response[:10]", "mean_diff"), flat, EVIL_NAT)
    _sweep(root, md, _params("evil", "natural", "response[:10]", "probe"), flat, EVIL_NAT_PROBE)
    # valid on the search questions (mean 72.5), but its coherence CI straddles 70
    _sweep(
        root,
        md,
        _params("evil", "natural", "response[:5]", "mean_diff"),
        [1.0, 2.0, 1.0, 2.0],
        coherence=[60.0, 80.0, 65.0, 85.0],
    )
    syc = ("sycophancy", "response[:]", "mean_diff")
    _sweep(root, md, _params(syc[0], "instruction", *syc[1:]), flat, SYC_INST)
    _sweep(root, md, _params(syc[0], "natural", "response[:10]", "mean_diff"), flat, SYC_NAT)
    _sweep(root, md, _params("hallucination", "instruction", *syc[1:]), flat, HAL_INST)
    _sweep(root, md, _params("hallucination", "natural", "response[:10]", "mean_diff"), flat)
    combo = _params("evil", "natural", "response[:10]", "mean_diff")
    jitter = [1.0, -1.0, 2.0, -2.0, 0.5, -0.5, 1.5, -1.5]
    combined = [d + j for d, j in zip(EVIL_NAT, jitter, strict=True)]
    _sweep(root, "combinations", combo, flat, EVIL_NAT, tags={records.STRATEGY: "best_single"})
    strategy = {records.STRATEGY: "combined@natural_layer"}
    _sweep(root, "combinations", combo, flat, combined, tags=strategy)
    out = tmp_path_factory.mktemp("report")
    assert main(["--root", str(root), "--out", str(out), "--no-log"]) == 0
    return out, (out / "report.md").read_text(), root


def _row(md, section, first):
    body = md[md.index(section) :]
    return next(line for line in body.splitlines() if line.startswith(first))


def test_stats_match_independent_computation():
    x = [3.0, 7.0, 1.0, 9.0, 4.0, 4.5, 8.0, 2.0]
    assert stats.mean_ci(x) == pytest.approx(boot(x), abs=1e-12)
    direct = sps.ttest_1samp(x, 0.0).confidence_interval(0.95)
    assert stats.mean_ci(x) == pytest.approx((direct.low, direct.high), abs=1e-12)
    assert stats.mean_ci(x, level=0.8) == pytest.approx(boot(x, level=0.8), abs=1e-12)
    assert stats.mean_ci([5.0]) == (5.0, 5.0) and stats.mean_ci([]) is None
    assert stats.mean_ci([2.5] * 6) == (2.5, 2.5)  # all equal: no spread
    assert stats.mean_ci([1.0, float("nan"), None, 3.0]) == pytest.approx(boot([1.0, 3.0]))
    for d in ([1.0, 2.0, 3.0, 4.0], [2.0, -1.0, 0.5, 3.0, -0.2], EVIL_NAT, SYC_NAT, [7.0]):
        assert stats.sign_flip_p(d) == pytest.approx(perm_p(d), abs=1e-12)
    assert stats.sign_flip_p([1.0, 2.0, 3.0, 4.0]) == 2 / 16  # only all-+ and all-− reach it
    assert stats.sign_flip_p([]) == 1.0 and stats.sign_flip_p([0.0, 0.0, 0.0]) == 1.0
    # rollouts of a question are averaged before questions are resampled
    # the t interval is wide enough on its own: these 8 differences once had a percentile
    # bootstrap CI below 0 while the permutation test said p > 0.05; now neither calls them
    d = [-40.0, -35.0, -30.0, -25.0, 5.0, 3.0, -1.0, 2.0]
    p = stats.paired(dict(enumerate(d)), dict.fromkeys(range(8), 0.0))
    assert p.ci == pytest.approx(boot(d)) and boot(d)[0] < 0 < boot(d)[1]
    assert perm_p(d) > 0.05 and not p.detected
    d = [a - b for a, b in zip(EVIL_NAT, EVIL_INST, strict=True)]
    p = stats.paired(dict(enumerate(EVIL_NAT)), dict(enumerate(EVIL_INST)))
    assert (p.diff, p.n) == (statistics.fmean(d), 8) and p.detected and boot(d)[0] > 0
    assert p.p == pytest.approx(perm_p(d))
    rows = [{"question": "a", "trait": 10}, {"question": "a", "trait": 30}, {"question": "b"}]
    assert stats.per_question(rows, "trait") == {"a": 20.0}


def test_interval_properties():
    rng = random.Random(0)
    for n in (2, 3, 4, 8, 14, 20):
        x = [rng.uniform(0, 100) for _ in range(n)]
        lo, hi = stats.mean_ci(x)
        assert lo < statistics.fmean(x) < hi
        assert hi - statistics.fmean(x) == pytest.approx(statistics.fmean(x) - lo)  # symmetric
        narrower = stats.mean_ci(x, level=0.9)
        assert lo < narrower[0] < narrower[1] < hi
    # the same spread over more questions: narrower (t quantile and sqrt(n) both shrink)
    base = [10.0, 40.0, 25.0, 70.0]
    widths = [(lambda c: c[1] - c[0])(stats.mean_ci(base * k)) for k in (1, 2, 4, 8)]
    assert widths == sorted(widths, reverse=True) and len(set(widths)) == 4
    # two values: the t interval with one degree of freedom (12.7 standard errors each side)
    lo, hi = stats.mean_ci([1.0, 2.0])
    assert (hi - lo) / 2 == pytest.approx(sps.t.ppf(0.975, 1) * 0.5)


def test_sign_flip_p_is_exact_enumeration_then_seeded_sampling():
    rng = np.random.default_rng(1)
    for n in (2, 3, 6, 10):
        d = list(rng.normal(1.0, 3.0, n))
        assert stats.sign_flip_p(d) == pytest.approx(perm_p(d), abs=1e-12)
        assert stats.sign_flip_p(d, seed=5) == stats.sign_flip_p(d)  # exact: no draws
    # ties count: flipping a 0 keeps |mean| (4 of 8 patterns); so does a pattern equal to the
    # observed one only up to rounding (|0.1 + 0.2 - 0.3 - 0.4| is 2.8e-17 below |sum(d)|)
    assert stats.sign_flip_p([0.0, 1.0, 2.0]) == perm_p([0.0, 1.0, 2.0]) == 4 / 8
    d = [0.1, 0.2, -0.3, 0.4]
    assert stats.sign_flip_p(d) == pytest.approx(perm_p(d), abs=1e-12) and perm_p(d) > 2 / 16
    # above EXACT_MAX questions: n_perm seeded random patterns, (hits + 1) / (n_perm + 1)
    d = list(rng.normal(0.6, 3.0, stats.EXACT_MAX + 1))
    p = stats.sign_flip_p(d)
    assert p == stats.sign_flip_p(d, seed=0) and p != stats.sign_flip_p(d, seed=1)
    assert math.isclose(p * (stats.N_PERM + 1), round(p * (stats.N_PERM + 1)), abs_tol=1e-6)
    assert p == pytest.approx(perm_p(d), abs=0.02)  # 10,000 draws: sd ~0.005 around the exact p


def test_trial_intervals_come_from_per_question_scores():
    rows = _rows(SEARCH_Q, [20.0, 22.0, 35.0, 45.0], [60.0, 80.0, 65.0, 85.0])
    base = _rows(SEARCH_Q, BASE_SEARCH, [90.0] * 4)
    got = stats.intervals_of(stats.score_intervals(rows, base))
    assert got[0] == pytest.approx(boot([20.0, 22.0, 35.0, 45.0]))
    assert got[1] == pytest.approx(boot([60.0, 80.0, 65.0, 85.0]))
    assert got[2] == pytest.approx(boot([10.0, 2.0, 5.0, 5.0]))  # paired with the baseline
    t = Trial.of(0, 1, 0.1, (), (30.5, 72.5, 5.5), MIN, stats.score_intervals(rows, base))
    assert t.valid and t.borderline and t.validity() == "borderline (yes)"
    assert Trial.of(0, 1, 0.1, (), (30.5, 72.5, 5.5), 50.0, t.row()).validity() == "yes"


def test_winner_only_when_the_paired_ci_excludes_zero(report):
    _, md, _ = report
    evil = _row(md, "## 1.", "| evil |")
    assert f"| {paired_text(EVIL_NAT, EVIL_INST)} | natural |" in evil
    assert boot([a - b for a, b in zip(EVIL_NAT, EVIL_INST, strict=True)])[0] > 0
    syc = _row(md, "## 1.", "| sycophancy |")
    assert boot([a - b for a, b in zip(SYC_NAT, SYC_INST, strict=True)])[0] < 0
    assert f"| {paired_text(SYC_NAT, SYC_INST)} | no difference detected (n=8) |" in syc
    hal = _row(md, "## 1.", "| hallucination |")
    assert "| — | untested (no held-out confirmation of both) |" in hal
    # the cells are the held-out numbers, the search score beside them
    held = f"{statistics.fmean(EVIL_NAT):+.1f} {ci(boot(EVIL_NAT))} (search +5.5; L5, c0.2"
    assert held in evil


def test_natural_percent_only_over_an_instruction_delta_above_zero(report):
    _, md, _ = report
    evil = _row(md, "## 1.", "| evil |")
    assert boot(EVIL_INST)[0] < 0 < boot(EVIL_INST)[1]
    assert f"| n/a: instruction Δ CI {ci(boot(EVIL_INST))} includes 0 |" in evil
    syc = _row(md, "## 1.", "| sycophancy |")
    assert boot(SYC_INST)[0] > 0
    pct = round(100 * statistics.fmean(SYC_NAT) / statistics.fmean(SYC_INST))
    assert f"| {pct}% |" in syc
    hal = _row(md, "## 1.", "| hallucination |")  # a held-out Δ over a search score: no ratio
    assert "| n/a: only one Δ is held-out |" in hal


def test_method_position_and_combination_comparisons(report):
    _, md, _ = report
    methods = _row(md, "## 3.", "| evil | natural | response[:10] |")
    assert f"| {paired_text(EVIL_NAT, EVIL_NAT_PROBE)} | mean_diff |" in methods
    assert perm_p([2.0] * 8) == 2 / 256
    positions = _row(md, "### evil", "| response[:5] |")
    assert "untested (no held-out confirmation of both)" in positions  # :5 was not confirmed
    combo = _row(md, "### Combination strategies — evil", "| combined@natural_layer |")
    jitter = [1.0, -1.0, 2.0, -2.0, 0.5, -0.5, 1.5, -1.5]
    combined = [d + j for d, j in zip(EVIL_NAT, jitter, strict=True)]
    assert f"| {paired_text(combined, EVIL_NAT)}: no difference detected (n=8) |" in combo


def test_borderline_validity_and_search_intervals(report):
    _, md, _ = report
    row = _row(md, "## 5.", "| nat5_md |")
    assert f"| 72.5 {ci(boot([60.0, 80.0, 65.0, 85.0]), '')} |" in row
    assert f"| +1.5 {ci(boot([1.0, 2.0, 1.0, 2.0]))} | — |" in row
    assert "| borderline (yes) |" in row
    inst = _row(md, "## 5.", "| inst_md |")
    assert f"| {statistics.fmean(EVIL_INST):+.1f} {ci(boot(EVIL_INST))} |" in inst


def test_summary_opens_the_report_with_the_setting(report):
    out, md, _ = report
    head = md[: md.index("## About this report")]
    assert "model `tiny` (steered: `tiny-instruct`), judge `offline`" in head
    assert "held-out questions `8` x `1` rollout(s)" in head
    assert "a winner is named for 1 of 3 trait(s)" in head
    assert "**evil**: natural steers more, by +" in head
    assert "**sycophancy**: no difference detected between natural and instruction" in head
    assert "**hallucination**: natural +5.5 [" in head and "not compared" in head
    held = [EVIL_INST, EVIL_NAT, EVIL_NAT_PROBE, SYC_INST, SYC_NAT, HAL_INST]  # confirmed keys
    moves = [statistics.fmean(h) - 5.5 for h in held]  # every search Δ was +5.5
    assert (
        f"the 6 keys' best configurations moved by {statistics.fmean(moves):+.1f} Δ points on "
        f"average (median {statistics.median(moves):+.1f}; 2 fell, 4 rose)"
    ) in head
    assert f"| 25.0 (n=2); held-out {statistics.fmean(BASE_HELD):.1f} |" in md
    for fig in ("cross_trait.png", "positions.png"):
        assert (out / fig).stat().st_size > 0


def test_parent_runs_carry_the_best_trials_intervals_and_confirmation(report):
    _, _, root = report
    client = tracking.client(root)
    [evil_inst] = [
        s
        for s in tracking.read_sweeps(client, "model_diff")
        if s.trait == "evil" and s.source == "instruction"
    ]
    m = evil_inst.metrics
    lo, hi = boot([4.0, 6.0, 5.0, 7.0])  # the search deltas
    assert (m["best_delta_lo"], m["best_delta_hi"]) == (round(lo, 2), round(hi, 2))
    lo, hi = boot(EVIL_INST)
    assert (m["confirm_delta_lo"], m["confirm_delta_hi"]) == (round(lo, 2), round(hi, 2))
    assert (m["confirm_n"], m["confirm_trial"], m["confirm_delta"]) == (8, 0, 0.0)
