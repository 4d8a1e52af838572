"""Rich tables for eval results: shared by `cai eval`, the demo and anything else that prints them."""

from __future__ import annotations

from rich.table import Table


def fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def _kinds(r: dict) -> str:
    return ", ".join(f"{n} {k}" for k, n in r.get("reading_kinds", {}).items()) or "-"


LABELER_RATES = ("agreement", "order_consistency", "position_bias", "mean_p_chosen")


def _labeler_rate(r: dict, k: str) -> str:
    """A labeler rate with its interval where the result has one (results from before it, bare)."""
    v = (r.get("rates") or {}).get(k)
    return rate_text(v) if v else fmt(r.get(k))


def labeler_tables(r: dict):
    t = Table("metric", "value", title=f"labeler: {r['method']}, {r['principles']} principles, {r['pairs']} pairs")
    if "reading" in r:
        t.add_row("letters read by", f"{r['reading']} ({_kinds(r)})")
    for k in LABELER_RATES:
        t.add_row(k, _labeler_rate(r, k))
    for k in ("ece", "readings", "floored_readings", "skipped", "errors", "seconds"):
        t.add_row(k, fmt(r.get(k)))
    if r.get("first_error"):
        t.add_row("first error", r["first_error"])
    yield t
    if "parsed" in r:
        p = r["parsed"]
        t = Table("metric", "value", title=f"parsed letters (0 or 1), {p['pairs']} pairs, kept apart")
        for k in LABELER_RATES:
            t.add_row(k, _labeler_rate(p, k))
        t.add_row("readings", fmt(p["readings"]))
        yield t
    t = Table("principle", "pairs", "agreement", "mean p(chosen)", title="per principle")
    per = (r.get("rates") or {}).get("by_principle") or {}
    for pid, v in r["by_principle"].items():
        t.add_row(
            pid,
            str(v["pairs"]),
            rate_text(per[pid]) if pid in per else fmt(v["agreement"]),
            fmt(v["mean_p_chosen"]),
        )
    yield t
    t = Table("soft label", "pairs", "confidence", "accuracy", title=f"reliability (ECE {r['ece']:.3f})")
    for row in r["reliability"]:
        t.add_row(row["bin"], str(row["count"]), fmt(row["confidence"]), fmt(row["accuracy"]))
    yield t
    if r.get("bias"):
        yield bias_table(r)


def _flag(value: float | None, flagged: bool, centre: float, above: str, below: str) -> str:
    """`← which way` where a check's interval excludes no bias."""
    if not flagged or value is None:
        return ""
    return f"  ← {above if value > centre else below}"


def slope_text(v: dict | None) -> str:
    if not v or v.get("value") is None:
        return f"- (n={(v or {}).get('n', 0)}: too few pairs, or no length difference)"
    low, high = v["ci95"]
    return f"{v['value']:+.3f} [{low:+.3f}, {high:+.3f}] n={v['n']}"


def bias_rows(r: dict) -> list[tuple[str, str]]:
    """The judge-bias battery as (check, finding) rows, shared by the table and the report."""
    b = r["bias"]
    pos, length = b["position"], b["length"]
    rows = [
        (
            "position: share of readings won by (A) (1/2: none)",
            rate_text(pos) + _flag(pos["value"], pos["flagged"], 0.5, "(A) favoured", "(B) favoured"),
        ),
        (
            "length: slope of P(human-chosen) per 100 more words in it (0: none)",
            slope_text(length) + _flag(length["value"], length["flagged"], 0.0, "longer favoured", "shorter favoured"),
        ),
    ]
    twins = b.get("padded_twins")
    if twins:
        added, mean = f"{twins['words_added']:.0f} words of filler", twins["mean_p_padded"]
        rows.append((f"padded twins ({added}): padded wins (1/2: none)", rate_text(twins["padded_wins"])))
        rows.append(
            (
                "padded twins: mean P(padded)",
                rate_text(mean) + _flag(mean["value"], twins["flagged"], 0.5, "padding favoured", "padding penalised"),
            )
        )
    own = b.get("self_preference")
    if own:
        wins = own["own_wins"]
        rows.append(
            (
                f"self-preference: {own['judge']}'s answers win against {own['other']}'s (1/2: none)",
                rate_text(wins)
                + _flag(wins["value"], own["flagged"], 0.5, "own favoured (or better)", "other favoured"),
            )
        )
        rows.append(("self-preference: mean P(own)", rate_text(own["mean_p_own"])))
        rows.append(("self-preference: note", own["note"]))
    named = b.get("self_preference_labelled")
    if named:
        rows.append(("agreement when the human-chosen answer is its own", rate_text(named["agreement_own_chosen"])))
        rows.append(("agreement when it is the other model's", rate_text(named["agreement_other_chosen"])))
        gap = named["gap"]
        text = "-" if gap.get("diff") is None else f"{gap['diff']:+.3f} [{gap['ci95'][0]:+.3f}, {gap['ci95'][1]:+.3f}]"
        rows.append(
            (
                "gap (own − other)",
                text + _flag(gap.get("diff"), named["flagged"], 0.0, "self-preference", "the other favoured"),
            )
        )
    for w in r.get("warnings") or []:
        rows.append(("warning", w))
    return rows


def bias_table(r: dict) -> Table:
    t = Table("check", "finding", title="judge bias (95% intervals; ← marks an interval that excludes no bias)")
    for check, finding in bias_rows(r):
        t.add_row(check, finding)
    return t


def reward_model_tables(r: dict):
    t = Table("metric", "value", title=f"reward model {r['model']}")
    for k in ("pairs", "accuracy", "mean_margin", "skipped"):
        t.add_row(k, fmt(r[k]))
    yield t


def rate_text(v: dict | None) -> str:
    """A rate as `value [low, high] n=… (k failed)`; the frontier's reference scores 1/2 by definition."""
    from cai.evaluation.stats import rate_from_json

    if not v:
        return "-"
    if v.get("interval") == "reference":
        return f"{v['value']:.3f} (reference)"
    r = rate_from_json(v)
    if r.value is None:
        return f"- (n=0, {r.failures} failed)" if r.failures else "-"
    return f"{r.value:.3f} [{r.low:.3f}, {r.high:.3f}] n={r.n}" + (f" ({r.failures} failed)" if r.failures else "")


def verdict_text(v: dict | None) -> str:
    """A paired test as `+diff (test p=…): differs` or `no significant difference`."""
    if not v or v.get("diff") is None:
        return "-"
    verdict = "differs" if v["significant"] else "no significant difference"
    return f"{v['diff']:+.3f} ({v['test']}, p={v['p']:.3g}): {verdict}"


def failed_text(f: dict) -> str:
    """A model's failed items: `2 answers, 1 reading`."""
    a, r = f["answers"], f["readings"]
    return f"{a} answer{'s' * (a != 1)}, {r} reading{'s' * (r != 1)}"


def _answering(r: dict) -> str:
    n = r.get("samples_per_prompt", 1)
    return "greedy, one answer per prompt" if n == 1 else f"{n} answers per prompt at temperature {r['temperature']:g}"


def policy_tables(r: dict):
    t = Table(
        "measure",
        r["model"],
        r["baseline"],
        "paired test",
        title=f"{r['model']} vs {r['baseline']} on {r['prompts']} prompts",
    )
    rates, tests = r["rates"], r["tests"]
    t.add_row(f"win rate over {r['baseline']}", rate_text(rates["win_rate"]), "", verdict_text(tests["win_rate"]))
    benign = next(iter(r["over_refusal"].values()))["prompts"]
    t.add_row(
        f"over-refusal ({benign} benign prompts)",
        rate_text(rates["over_refusal"]["model"]),
        rate_text(rates["over_refusal"]["baseline"]),
        verdict_text(tests["over_refusal"]),
    )
    t.add_row("failed (left out)", failed_text(r["failures"]["model"]), failed_text(r["failures"]["baseline"]), "")
    yield t
    u = Table("what", "value", title="how it was read")
    fb = r["feedback"]
    u.add_row("feedback", f"{fb['backend']}:{fb['model']}, letters by {fb['reading']} ({_kinds(r)})")
    u.add_row("answers", _answering(r))
    for k in ("order_consistency", "identical_answers", "errors"):
        u.add_row(k, fmt(r[k]))
    if r.get("first_error"):
        u.add_row("first error", r["first_error"])
    yield u


def character_tables(r: dict):
    rates, tests = r["rates"], r["tests"]
    t = Table(
        "trait",
        "prompts",
        "win rate",
        "vs 1/2 (sign test)",
        title=f"{r['model']} vs {r['baseline']} ({r['constitution']})",
    )
    for trait, v in rates["win_rate_by_trait"].items():
        t.add_row(
            trait, str(r["prompts_by_trait"][trait]), rate_text(v), verdict_text(tests["win_rate_by_trait"][trait])
        )
    t.add_row("all", str(r["prompts"]), rate_text(rates["win_rate"]), verdict_text(tests["win_rate"]))
    yield t
    u = Table("check", r["model"], r["baseline"], "paired test", title=f"answers: {_answering(r)}")
    u.add_row(
        "over-refusal on benign prompts",
        rate_text(rates["over_refusal"]["model"]),
        rate_text(rates["over_refusal"]["baseline"]),
        verdict_text(tests["over_refusal"]),
    )
    u.add_row(
        "answers that leak the character",
        rate_text(rates["leak_rate"]["model"]),
        rate_text(rates["leak_rate"]["baseline"]),
        verdict_text(tests["leak_rate"]),
    )
    u.add_row("failed (left out)", failed_text(r["failures"]["model"]), failed_text(r["failures"]["baseline"]), "")
    if r.get("first_error"):
        u.caption = f"first error: {r['first_error']}"
    yield u


FRONTIER_MEASURES = {
    "harmful_compliance": "harmful compliance",
    "over_refusal": "over-refusal",
    "helpfulness": "helpfulness",
}


def frontier_tables(r: dict):
    fb = r["feedback"]
    t = Table(
        "model",
        "harmful compliance",
        "harmlessness",
        "over-refusal",
        f"helpfulness vs {r['reference']}",
        "failed (left out)",
        title=f"harmless–helpful frontier ({r['constitution']}; feedback {fb['backend']}:{fb['model']}, "
        f"letters by {fb['reading']}; {_answering(r)})",
    )
    for row in r["models"]:
        rates = row["rates"]
        t.add_row(
            row["model"],
            rate_text(rates["harmful_compliance"]),
            rate_text(rates["harmlessness"]),
            rate_text(rates["over_refusal"]),
            rate_text(rates["helpfulness"]),
            failed_text(row["failures"]),
        )
    if r.get("first_error"):
        t.caption = f"first error: {r['first_error']}"
    yield t
    u = Table("model", *FRONTIER_MEASURES.values(), title=f"each checkpoint against {r['reference']} (paired tests)")
    for row in r["models"][1:]:
        vs = row["vs_reference"] or {}
        u.add_row(row["model"], *(verdict_text(vs.get(k)) for k in FRONTIER_MEASURES))
    yield u


def frontier_verdict(r: dict, model: str) -> str:
    """One line: does `model` differ from the reference beyond noise, measure by measure?"""
    row = next(x for x in r["models"] if x["model"] == model)
    parts = []
    for key, name in FRONTIER_MEASURES.items():
        v = (row["vs_reference"] or {}).get(key)
        if not v or v.get("diff") is None:
            parts.append(f"{name}: not compared")
        else:
            word = "differs" if v["significant"] else "no significant difference"
            parts.append(f"{name} {v['diff']:+.3f} (p={v['p']:.3g}, {word})")
    return f"{model} vs {r['reference']}: " + "; ".join(parts)


def summary_table(stats) -> Table:
    """A run's stages: records, new, tokens, time, throughput, errors (and readings reused)."""
    t = Table("stage", "records", "new", "tokens", "seconds", "tokens/s", "errors", title="run summary")
    for s in stats:
        rate = f"{s.tokens / s.seconds:.1f}" if s.seconds > 0 and s.tokens else "-"
        new = str(s.new) + (f" ({s.read} letters read, {s.reused} reused)" if s.read or s.reused else "")
        t.add_row(s.stage, str(s.records), new, str(s.tokens), f"{s.seconds:.1f}", rate, str(s.errors))
    return t


def plan_table(rows, change) -> Table:
    """The dry run: per stage, what is planned, kept, moved aside, to do, failed for good."""
    title = "plan (dry run: nothing was run or written)"
    if change is not None and change.new and change.version > 1:
        title += f"\nconfig changed ({', '.join(change.sections)}): would be kept as configs/{change.version:03d}.yaml"
    t = Table("stage", "planned", "kept", "moved aside", "to do", "failed, left alone", title=title)
    for r in rows:
        more = " + after upstream" if r.after_upstream else ""
        todo = str(r.todo) + more
        if r.readings is not None:
            todo += f" ({r.readings[0]} letters to read, {r.readings[1]} from earlier records)"
        t.add_row(r.stage, str(r.planned) + more, str(r.kept), str(r.aside), todo, str(r.failed))
    return t


def _rate(v: dict | None) -> str:
    if not v or v.get("value") is None:
        return "-"
    low, high = v["ci95"]
    return f"{v['value']:.3f} [{low:.3f}, {high:.3f}] n={v['n']}"


def judge_tables(r: dict):
    """`cai eval judge`: accuracy, failures, calibration, position bias and per-category accuracy."""
    fb = r["feedback"]
    t = Table("metric", "value", title=f"judge on {r['items_file']}")
    orders = "/".join(map(str, r["orders_used"]))
    t.add_row("items", f"{r['items']} ({r['n']} scored), each read in {orders} option orders")
    t.add_row("feedback", f"{fb['backend']}:{fb['model']}, letters by {fb['reading']} ({_kinds(r)})")
    t.add_row("accuracy", _rate(r["accuracy"]))
    t.add_row("failures", f"{r['failures']}" + (f" (first: {r['first_error']})" if r["first_error"] else ""))
    t.add_row("skipped rows", str(r["skipped"]))
    for k in ("ties", "mean_confidence", "ece", "floored_readings", "seconds"):
        t.add_row(k, fmt(r.get(k)))
    yield t
    pb = r["position_bias"]
    t = Table("position", "share of readings", "chance", title=f"position bias ({pb['readings']} readings)")
    for letter, v in pb["letters"].items():
        t.add_row(f"({letter})", fmt(v["share"]), fmt(v["chance"]))
    yield t
    if r.get("by_category"):
        t = Table("right category", "accuracy", "failed", title="accuracy per category")
        for cat, v in r["by_category"].items():
            t.add_row(cat, _rate(v), str(v["failures"]))
        yield t
    ece = "-" if r["ece"] is None else f"{r['ece']:.3f}"
    t = Table("confidence", "items", "mean confidence", "accuracy", title=f"reliability (ECE {ece})")
    for row in r["reliability"]:
        if row["count"]:
            t.add_row(row["bin"], str(row["count"]), fmt(row["confidence"]), fmt(row["accuracy"]))
    yield t


def probes_table(r: dict) -> Table:
    """`cai constitution test`: one row per probe, its verdict and the p it reached."""
    from rich.markup import escape

    t = Table(title=f"probes of {r['constitution']}")
    for name in ("probe", "kind", "under", "result", "p", "why"):
        t.add_column(name, overflow="fold", no_wrap=name in ("kind", "result", "p"))
    style = {"pass": "green", "fail": "red", "error": "yellow"}
    for row in r["probes"]:
        result = f"[{style[row['status']]}]{row['status']}[/{style[row['status']]}]"
        under = row["principle"] or "all principles"
        t.add_row(row["id"], row["kind"], under, result, fmt(row["p"]), escape(row["why"]))
    return t


# Behaviour suites and the critique eval: each table as (title, header, rows), shared by the
# terminal and the report.
Grid = tuple[str, list[str], list[list[str]]]


def _read_by(r: dict) -> str:
    fb = r.get("feedback")
    return f"feedback {fb['backend']}:{fb['model']}, letters by {fb['reading']}" if fb else "no feedback model"


def behaviour_grids(r: dict) -> list[Grid]:
    measures = r["measures"]
    title = f"{r['suite']} ({r['items']} items; {_read_by(r)}; {_answering(r)})"
    if r.get("pattern"):
        title += f"; pattern {r['pattern']!r}"
    elif r.get("question"):
        title += f"; question {r['question']!r}"
    rows = [
        [m["model"], *(rate_text(m["rates"][k]) for k in measures), failed_text(m["failures"])] for m in r["models"]
    ]
    grids = [(title, ["model", *measures.values(), "failed (left out)"], rows)]
    later = [m for m in r["models"] if m.get("vs_first")]
    if later:
        rows = [[m["model"], *(verdict_text(m["vs_first"][k]) for k in measures)] for m in later]
        grids.append(
            (
                f"each model against {r['reference']} (paired tests on the same items)",
                ["model", *measures.values()],
                rows,
            )
        )
    if r.get("suite_kind") == "even-handedness":
        rows = [
            [
                m["model"],
                str(m["refused_first_side_only"]),
                str(m["refused_second_side_only"]),
                verdict_text(m["first_side_vs_second"]),
            ]
            for m in r["models"]
        ]
        grids.append(
            ("which side is refused", ["model", "first side only", "second side only", "first vs second"], rows)
        )
    return grids


def critique_grids(r: dict) -> list[Grid]:
    header = ["answers", "flawed", "clean", *r["measures"].values(), "gap: judge − critique detection"]
    grids = []
    for m in r["models"]:
        rows = [
            [
                name,
                str(g["flawed"]),
                str(g["clean"]),
                *(rate_text(g["rates"][k]) for k in r["measures"]),
                verdict_text(g["gap"]),
            ]
            for name, g in m["groups"].items()
        ]
        judge = "the critic itself" if r["judge"] == "self" else "the feedback model"
        title = (
            f"critiques by {m['model']} ({r['constitution']}, {r['few_shot']} worked examples; pointwise judge: "
            f"{judge}; {_read_by(r)}; failed: {failed_text(m['failures'])})"
        )
        grids.append((title, header, rows))
    later = [m for m in r["models"] if m.get("vs_first")]
    if later:
        rows = [
            [m["model"], verdict_text(m["vs_first"]["detection"]), verdict_text(m["vs_first"]["nitpick"])]
            for m in later
        ]
        grids.append((f"each critic against {r['reference']} (paired tests)", ["model", "detection", "nitpick"], rows))
    planted = r.get("planting")
    if planted:
        note = (
            f"{planted['planted']} of {planted['asked']} planted; "
            f"{planted['unchanged']} unchanged and {planted['failed']} failed, left out"
        )
        grids.append(
            (
                "flaws planted by the feedback model",
                ["planting", "first error"],
                [[note, planted.get("first_error") or "-"]],
            )
        )
    return grids


def _grid_tables(grids: list[Grid], first_error: str | None):
    for k, (title, header, rows) in enumerate(grids):
        t = Table(*header, title=title)
        for row in rows:
            t.add_row(*row)
        if k == 0 and first_error:
            t.caption = f"first error: {first_error}"
        yield t


def behaviour_tables(r: dict):
    yield from _grid_tables(behaviour_grids(r), r.get("first_error"))


def critique_tables(r: dict):
    yield from _grid_tables(critique_grids(r), r.get("first_error"))
