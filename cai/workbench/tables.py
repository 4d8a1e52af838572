"""Rich tables for what `cai constitution try / compare / infer` return."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape
from rich.table import Table

from cai.tables import fmt


def ranking_table(ranking: dict) -> Table:
    t = Table("principle", "order", "shown as (A)", "P(A)", "P(revised)", title=f"readings ({ranking['reading']})")
    for r in ranking["readings"]:
        t.add_row(r["principle_id"], r["order"], r["shown_as_a"], fmt(r["p_a"]), fmt(r["p_revised"]))
    return t


def compare_tables(r: dict):
    title = f"{r['old']['name']} ({r['old']['hash']}) vs {r['new']['name']} ({r['new']['hash']}), {r['pairs']} pairs"
    t = Table("", "old", "new", title=title)
    for k in ("agreement", "order_consistency", "position_bias", "mean_p_chosen", "pairs_read", "readings", "errors"):
        t.add_row(k if k != "agreement" else "agreement with the file's labels", fmt(r["old"][k]), fmt(r["new"][k]))
    yield t
    t = Table("principle", "status", "pairs", "flips", "mean |Δp|", "agreement", "order cons.", "pos. bias")
    t.title = "per principle (old → new)"

    def pair(row: dict, key: str) -> str:
        a, b = row.get(key + "_old"), row.get(key + "_new")
        return f"{'-' if a is None else f'{a:.2f}'}→{'-' if b is None else f'{b:.2f}'}"

    changed_first = sorted(
        r["by_principle"], key=lambda row: (row["status"] == "unchanged", -(row["mean_abs_dp"] or 0))
    )
    for row in changed_first:
        ident = row["id"] or row["old_id"]
        if row["status"] == "renamed":
            ident = f"{row['old_id']} → {row['id']}"
        flips = "-" if row["flip_rate"] is None else f"{row['flips']} ({row['flip_rate']:.0%})"
        t.add_row(
            ident,
            row["status"],
            str(row["pairs"]),
            flips,
            fmt(row["mean_abs_dp"]),
            pair(row, "agreement"),
            pair(row, "order_consistency"),
            pair(row, "position_bias"),
        )
    yield t
    if r["moved"]:
        t = Table("pair", "user message", "P(chosen) old", "new", "flipped", title="the pairs that moved most")
        for m in r["moved"]:
            prompt = m["prompt"] if len(m["prompt"]) <= 70 else m["prompt"][:67] + "..."
            where = Path(m["pair"]).name
            t.add_row(where, escape(prompt), fmt(m["p_old"]), fmt(m["p_new"]), "yes" if m["flipped"] else "")
        yield t
    if "ablation" in r:
        a = r["ablation"]
        t = Table("left out", "status", "flips", "mean |Δp|", "old→new change left", "explained")
        t.title = f"leave one principle out of the {a['version']} version"
        for row in a["principles"]:
            t.add_row(
                row["id"],
                row["status"],
                fmt(row["flip_rate"]),
                fmt(row["mean_abs_dp"]),
                fmt(row["change_left"]),
                fmt(row["change_explained"]),
            )
        yield t


def infer_table(r: dict) -> Table:
    t = Table("rule", "support", "agreement", "order cons.", "pos. bias", "kept", title="candidates")
    t.title = f"candidates, tested on {r['heldout_pairs']} held-out pairs"
    for c in r["candidates"]:
        kept = "[green]yes[/green]" if c["kept"] else escape(c.get("why", ""))
        support = str(c["support"]) if c["origin"] == "proposed" else "given"
        t.add_row(
            escape(c["text"]), support, fmt(c["agreement"]), fmt(c["order_consistency"]), fmt(c["position_bias"]), kept
        )
    return t
