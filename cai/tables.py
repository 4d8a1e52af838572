"""Rich tables for eval results: shared by `cai eval`, the demo and anything else that prints them."""

from __future__ import annotations

from rich.table import Table


def fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def _kinds(r: dict) -> str:
    return ", ".join(f"{n} {k}" for k, n in r.get("reading_kinds", {}).items()) or "-"


def labeler_tables(r: dict):
    t = Table("metric", "value", title=f"labeler: {r['method']}, {r['principles']} principles, {r['pairs']} pairs")
    if "reading" in r:
        t.add_row("letters read by", f"{r['reading']} ({_kinds(r)})")
    for k in (
        "agreement",
        "order_consistency",
        "position_bias",
        "ece",
        "mean_p_chosen",
        "readings",
        "floored_readings",
        "skipped",
        "errors",
        "seconds",
    ):
        t.add_row(k, fmt(r.get(k)))
    yield t
    if "parsed" in r:
        p = r["parsed"]
        t = Table("metric", "value", title=f"parsed letters (0 or 1), {p['pairs']} pairs, kept apart")
        for k in ("agreement", "order_consistency", "position_bias", "mean_p_chosen", "readings"):
            t.add_row(k, fmt(p[k]))
        yield t
    t = Table("principle", "pairs", "agreement", "mean p(chosen)", title="per principle")
    for pid, v in r["by_principle"].items():
        t.add_row(pid, str(v["pairs"]), fmt(v["agreement"]), fmt(v["mean_p_chosen"]))
    yield t
    t = Table("soft label", "pairs", "confidence", "accuracy", title=f"reliability (ECE {r['ece']:.3f})")
    for row in r["reliability"]:
        t.add_row(row["bin"], str(row["count"]), fmt(row["confidence"]), fmt(row["accuracy"]))
    yield t


def reward_model_tables(r: dict):
    t = Table("metric", "value", title=f"reward model {r['model']}")
    for k in ("pairs", "accuracy", "mean_margin", "skipped"):
        t.add_row(k, fmt(r[k]))
    yield t


def policy_tables(r: dict):
    t = Table("metric", "value", title=f"{r['model']} vs {r['baseline']} on {r['prompts']} prompts")
    if "feedback" in r:
        fb = r["feedback"]
        t.add_row("feedback", f"{fb['backend']}:{fb['model']}, letters by {fb['reading']} ({_kinds(r)})")
    for k in ("win_rate", "order_consistency", "identical_answers", "errors"):
        t.add_row(k, fmt(r[k]))
    for who, v in r["over_refusal"].items():
        t.add_row(f"over-refusal ({who}, {v['prompts']} benign prompts)", fmt(v["refusal_rate"]))
    yield t


def character_tables(r: dict):
    t = Table("trait", "prompts", "win rate", title=f"{r['model']} vs {r['baseline']} ({r['constitution']})")
    for trait, rate in r["win_rate_by_trait"].items():
        t.add_row(trait, str(r["prompts_by_trait"][trait]), fmt(rate))
    t.add_row("all", str(r["prompts"]), fmt(r["win_rate"]))
    yield t
    u = Table("check", "model", "baseline")
    u.add_row(
        "over-refusal on benign prompts",
        fmt(r["over_refusal"]["model"]["refusal_rate"]),
        fmt(r["over_refusal"]["baseline"]["refusal_rate"]),
    )
    u.add_row("answers that leak the character", fmt(r["leak_rate"]["model"]), fmt(r["leak_rate"]["baseline"]))
    yield u


def frontier_tables(r: dict):
    fb = r["feedback"]
    t = Table(
        "model",
        "harmful compliance",
        "harmlessness",
        "over-refusal",
        f"helpfulness vs {r['reference']}",
        title=f"harmless–helpful frontier ({r['constitution']}; feedback {fb['backend']}:{fb['model']}, "
        f"letters by {fb['reading']})",
    )
    for row in r["models"]:
        t.add_row(
            row["model"],
            f"{fmt(row['harmful_rate'])} of {row['red_team_prompts']}",
            fmt(row["harmlessness"]),
            f"{fmt(row['over_refusal_rate'])} of {row['benign_prompts']}",
            fmt(row["helpful_win_rate"]),
        )
    yield t


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
