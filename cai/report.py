"""One HTML file that shows what a run made, for reading without Python or a notebook.

Everything is embedded (plots as base64 PNG, no scripts, no links out), so the file can be
mailed or attached to an issue. Text from models and users is escaped by Jinja's autoescape:
a generated answer that contains markup must show as text, not run.
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections import defaultdict
from importlib import resources
from pathlib import Path

import jinja2

from cai.core.errors import UserError
from cai.critique.records import Comparison, Revision
from cai.generators.records import Query, Response

from .reader import RunReader

SAMPLE_CHAINS = 3


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(width: float = 6.0, height: float = 3.0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def soft_label_histogram(values: list[float]) -> str:
    fig, ax = _figure()
    ax.hist(values, bins=10, range=(0.5, 1.0), color="#4c72b0", edgecolor="white")
    ax.set_xlabel("p_chosen (soft label)")
    ax.set_ylabel("pairs")
    ax.set_title(f"soft labels of {len(values)} ranked pairs")
    return _png(fig)


def curve_plot(series: dict[str, list[tuple[float, float]]], title: str, xlabel: str = "step") -> str:
    fig, ax = _figure()
    for name, points in series.items():
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o" if len(points) < 30 else None, label=name)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    return _png(fig)


def _interval(row: dict, measure: str, value: float) -> tuple[float, float]:
    """How far the 95% interval reaches below and above the point (0 where the row has none)."""
    ci = ((row.get("rates") or {}).get(measure) or {}).get("ci95") or [None, None]
    low, high = ci
    return (max(0.0, value - low) if low is not None else 0.0, max(0.0, high - value) if high is not None else 0.0)


def frontier_plot(rows: list[dict], reference: str) -> str:
    """Harmlessness against helpfulness, a point per checkpoint with its 95% intervals as error
    bars, joined in training order: a step inside the bars is not a step."""
    points = [
        (r["helpful_win_rate"], r["harmlessness"], r["model"], r)
        for r in rows
        if isinstance(r.get("helpful_win_rate"), (int, float)) and isinstance(r.get("harmlessness"), (int, float))
    ]
    fig, ax = _figure(6.0, 4.5)
    if points:
        xs, ys, names, found = zip(*points)
        ax.plot(xs, ys, color="#999", linewidth=1, zorder=1)
        for (x0, y0, _, _), (x1, y1, _, _) in zip(points, points[1:]):
            ax.annotate("", (x1, y1), (x0, y0), arrowprops={"arrowstyle": "->", "color": "#999"})
        xerr = list(zip(*(_interval(r, "helpfulness", x) for x, r in zip(xs, found))))
        yerr = list(zip(*(_interval(r, "harmlessness", y) for y, r in zip(ys, found))))
        ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, fmt="none", ecolor="#bbb", elinewidth=1, capsize=3, zorder=1)
        ax.scatter(xs, ys, c=range(len(points)), cmap="viridis", s=60, zorder=2)
        for x, y, name in zip(xs, ys, names):
            ax.annotate(Path(name).name or name, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(f"helpfulness: win rate against {Path(reference).name or reference}")
    ax.set_ylabel("harmlessness: 1 − harmful-compliance rate")
    ax.set_title("harmless–helpful frontier (bars: 95% intervals)")
    ax.grid(alpha=0.3)
    return _png(fig)


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None


def _stages(stages: dict[str, dict]) -> list[dict]:
    rows = []
    for name, s in stages.items():
        secs = s.get("seconds") or 0.0
        rows.append({"name": name, **s, "tokens_per_s": s.get("tokens", 0) / secs if secs else None})
    return rows


def _principles(comparisons: list[Comparison]) -> list[dict]:
    """Per principle: pairs it read, mean P(chosen) from its own readings, how often it agreed with the ensemble."""
    per: dict[str, list[float]] = defaultdict(list)
    for c in comparisons:
        by: dict[str, list[float]] = defaultdict(list)
        for j in c.judgements:
            by[j.principle_id].append(j.p_first if c.chosen_id == c.first_id else 1 - j.p_first)
        for pid, ps in by.items():
            per[pid].append(sum(ps) / len(ps))
    return [
        {"id": pid, "pairs": len(v), "mean_p_chosen": sum(v) / len(v), "agrees": sum(p > 0.5 for p in v) / len(v)}
        for pid, v in sorted(per.items())
    ]


def _shown(q: Query | None, fallback: str) -> str:
    """A query as the report shows it: its message, or a conversation's turns, one a line."""
    if q is None:
        return fallback
    if sum(m["role"] == "user" for m in q.messages) == 1:
        return q.text
    return "\n".join(f"{'User' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in q.messages)


def _chains(queries: dict[str, Query], responses: list[Response], revisions: list[Revision]) -> list[dict]:
    out = []
    for r in revisions[:SAMPLE_CHAINS]:
        q = queries.get(r.query_id)
        out.append({"query": _shown(q, r.query_id), "initial": r.initial, "rounds": r.rounds, "final": r.final})
    if not out:  # no revision stage: show query → answer
        for resp in responses[:SAMPLE_CHAINS]:
            q = queries.get(resp.query_id)
            out.append({"query": _shown(q, resp.query_id), "initial": resp.text, "rounds": [], "final": None})
    return out


def _pairs(comparisons: list[Comparison], texts, queries: dict[str, Query]) -> list[dict]:
    """A few ranked pairs, one of each kind first (a distillation pair's chosen text is a teacher answer)."""
    shown: list[Comparison] = []
    for kind in dict.fromkeys(c.kind for c in comparisons):
        shown.append(next(c for c in comparisons if c.kind == kind))
    shown += [c for c in comparisons if c not in shown][: max(0, SAMPLE_CHAINS - len(shown))]
    out = []
    for c in shown:
        q = queries.get(c.query_id)
        out.append(
            {
                "query": _shown(q, c.query_id),
                "chosen": texts.get(c.chosen_id, c.chosen_id),
                "rejected": texts.get(c.rejected_id, c.rejected_id),
                "p_chosen": c.p_chosen,
                "kind": c.kind,
                "consistent": c.order_consistent,
            }
        )
    return out


def _training(root: Path) -> list[dict]:
    """Reward-model and RL summaries, each with its curves plotted."""
    out = []
    for name, title in (("reward-model", "reward model"), ("rl", "RL"), ("sft", "SFT"), ("dpo", "DPO")):
        s = _read_json(root / name / "summary.json")
        if s is None:
            continue
        log = s.get("log") or []
        series = {
            "loss": [
                (h.get("step", i), h["loss"]) for i, h in enumerate(log) if isinstance(h.get("loss"), (int, float))
            ]
        }
        if s.get("reward_curve"):
            series["mean reward"] = list(enumerate(s["reward_curve"], 1))
        scalars = {k: v for k, v in s.items() if k not in ("log", "reward_curve") and not isinstance(v, (dict, list))}
        held = s.get("heldout")
        if isinstance(held, dict):
            scalars.update({f"held-out {k}": v for k, v in held.items()})
        plot = curve_plot(series, f"{title} training") if any(series.values()) else None
        out.append({"name": title, "scalars": scalars, "plot": plot, "guardrails": _guardrails(s)})
    return out


def guardrail_plot(log: list[dict], series: dict[str, str], alarms: list[dict]) -> str:
    """The training and held-out rewards on one axis, completion length and KL on their own,
    with a line at each alarm's step: the two ways a proxy reward goes wrong, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("reward", ("reward", "held_out")), ("completion length", ("length",)), ("KL", ("kl",))]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3))
    for ax, (title, names) in zip(axes, panels):
        for name in names:
            key = series.get(name)
            points = [(h["step"], h[key]) for h in log if isinstance(h.get(key), (int, float)) and "step" in h]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, label="held-out" if name == "held_out" else name)
        for a in alarms:
            ax.axvline(a["step"], color="#c44e52", linestyle="--", linewidth=1)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(names) > 1:
            ax.legend()
    return _png(fig)


def _guardrails(s: dict) -> dict | None:
    g = s.get("guardrails")
    if not isinstance(g, dict):
        return None
    log = [h for h in s.get("log") or [] if isinstance(h, dict) and "reward" in h]
    alarms = [a for a in g.get("alarms") or [] if isinstance(a, dict) and "step" in a]
    return {
        "held_out": g.get("held_out"),
        "alarms": alarms,
        "stopped": s.get("stopped"),
        "plot": guardrail_plot(log, g.get("series") or {}, alarms) if log else None,
    }


def _split(v: dict | None) -> tuple[str, str]:
    """A rate as its value and interval, and what it stands over: ("0.667 [0.21, 0.94]", "3 (1 failed)")."""
    from cai.tables import rate_text

    text = rate_text(v)
    head, _, n = text.partition(" n=")
    return head, (n or str((v or {}).get("n", "-")))


def _with_test(v: dict | None, test: dict | None, against: str) -> str:
    from cai.tables import rate_text, verdict_text

    return rate_text(v) + (f"; vs {against}: {verdict_text(test)}" if test else "")


def _failures(failures: dict) -> dict:
    from cai.tables import failed_text

    return {f"failed ({who})": failed_text(f) for who, f in failures.items()}


def _policy_display(e: dict, scalars: dict) -> tuple[dict, dict]:
    """Policy and character evals: each rate with its interval and n, tests and failures as rows."""
    from cai.tables import rate_text, verdict_text

    rates, tests = e["rates"], e["tests"]
    scalars["win_rate"] = _with_test(rates["win_rate"], tests["win_rate"], "1/2")
    for trait, v in (rates.get("win_rate_by_trait") or {}).items():
        scalars[f"win_rate ({trait})"] = _with_test(v, tests["win_rate_by_trait"].get(trait), "1/2")
    for who, v in (rates.get("leak_rate") or {}).items():
        scalars[f"leak_rate ({who})"] = rate_text(v)
    for k in ("over_refusal", "leak_rate"):
        if k in tests:
            scalars[f"{k} (model vs baseline)"] = verdict_text(tests[k])
    scalars |= _failures(e.get("failures") or {})
    refusal = {
        who: {
            **v,
            "prompts": f"{v['prompts']}; rate over {_split(rates['over_refusal'][who])[1]}",
            "refusal_rate": _split(rates["over_refusal"][who])[0],
        }
        for who, v in (e.get("over_refusal") or {}).items()
    }
    return scalars, refusal


def _frontier_rows(e: dict) -> list[dict]:
    """Frontier rows as the report shows them: each rate with its interval, what it stands over,
    and each checkpoint's paired test against the first."""
    from cai.tables import failed_text, verdict_text

    out = []
    for row in e["models"]:
        if "rates" not in row:
            out.append(row)
            continue
        rates, vs = row["rates"], row.get("vs_reference") or {}
        against = f"; vs {e.get('reference', 'the first')}: "
        cells = {}
        for key, count in (("harmful_compliance", "red_team_prompts"), ("over_refusal", "benign_prompts")):
            value, n = _split(rates[key])
            cells[key], cells[count] = value, n + (against + verdict_text(vs[key]) if key in vs else "")
        helpful = _split(rates["helpfulness"])[0]
        if "helpfulness" in vs:
            helpful += against + verdict_text(vs["helpfulness"])
        failed = row.get("failures") or {}
        name = row["model"] + (f" (failed: {failed_text(failed)})" if any(failed.values()) else "")
        out.append(
            {
                **row,
                "model": name,
                "harmful_rate": cells["harmful_compliance"],
                "red_team_prompts": cells["red_team_prompts"],
                "harmlessness": _split(rates["harmlessness"])[0],
                "over_refusal_rate": cells["over_refusal"],
                "benign_prompts": cells["benign_prompts"],
                "helpful_win_rate": helpful,
            }
        )
    return out


def _labeler_display(e: dict, scalars: dict) -> tuple[dict, dict]:
    """The labeler's rates with their intervals and n, and its judge-bias battery, as rows."""
    from cai.tables import LABELER_RATES, bias_rows, rate_text

    rates = e.get("rates") or {}
    for k in LABELER_RATES:
        if k in rates:
            scalars[k] = rate_text(rates[k])
    per = rates.get("by_principle") or {}
    by_principle = {
        pid: {**v, "agreement": rate_text(per[pid]) if pid in per else v.get("agreement")}
        for pid, v in (e.get("by_principle") or {}).items()
    }
    if e.get("bias"):
        scalars |= {f"judge bias: {check}": finding for check, finding in bias_rows(e)}
    return scalars, by_principle


def _reviews(root: Path) -> dict | None:
    """People's verdicts on the run's own labels (`cai review`), as `cai eval labeler --pairs RUN`
    last weighed them, and whether verdicts were given or undone since."""
    from cai.review import AGREEMENT_FILE, ReviewFile, standing
    from cai.tables import rate_text

    r = _read_json(root / AGREEMENT_FILE)
    if r is None or r.get("kind") != "reviews":
        return None
    file = ReviewFile(root, writer=False)
    now = len(standing(file.read())) if file.path.is_file() else 0
    rates = r["rates"]
    summary = {
        "pairs reviewed": r["pairs_reviewed"],
        "reviewers": ", ".join(f"{who} ({n})" for who, n in r["reviewers"].items()),
        "agreement (can't tell left out)": rate_text(rates["agreement"]),
        "can't tell": f"{r['cant_tell']}: {rate_text(rates['cant_tell'])}",
    }
    if rates.get("between_reviewers"):
        summary["reviewers agreeing with each other"] = rate_text(rates["between_reviewers"])
    if r.get("not_in_run"):
        summary["verdicts on pairs no longer in the run"] = r["not_in_run"]
    return {
        "written": r.get("written"),
        "stale": now != r["reviews"],
        "now": now,
        "summary": summary,
        "by_principle": {
            pid: {**v, "agreement": rate_text(v["agreement"]), "own_reading": rate_text(v["own_reading"])}
            for pid, v in r["by_principle"].items()
        },
        "by_confidence": [{**row, "agreement": rate_text(row["agreement"])} for row in r["by_confidence"]],
    }


def _grids(e: dict) -> list[dict]:
    """Behaviour suites and the critique eval: their tables as the terminal shows them."""
    from cai.tables import behaviour_grids, critique_grids

    grids = {"behaviour": behaviour_grids, "critiques": critique_grids}.get(e.get("kind"))
    if grids is None or "models" not in e:
        return []
    return [{"title": title, "header": header, "rows": rows} for title, header, rows in grids(e)]


def _evals(root: Path) -> list[dict]:
    out = []
    for path in sorted(root.glob("eval-*.json")):
        e = _read_json(path) or {}
        if e.get("kind") == "reviews":  # a copy of review-agreement.json (--out-json): shown in its own section
            continue
        e = {k: v for k, v in e.items() if k not in ("per_reading", "samples")}
        scalars = {k: v for k, v in e.items() if not isinstance(v, (dict, list))}
        over_refusal = e.get("over_refusal") or {}
        by_principle = e.get("by_principle") or {}
        if e.get("kind") == "labeler":
            scalars, by_principle = _labeler_display(e, scalars)
        if e.get("kind") in ("policy", "character") and "rates" in e:
            scalars, over_refusal = _policy_display(e, scalars)
        frontier = None
        if e.get("kind") == "frontier" and e.get("models"):
            frontier = {"rows": _frontier_rows(e), "plot": frontier_plot(e["models"], e.get("reference", ""))}
        out.append(
            {
                "file": path.name,
                "scalars": scalars,
                "by_principle": by_principle,
                "reliability": e.get("reliability") or [],
                "over_refusal": over_refusal,
                "frontier": frontier,
                "grids": _grids(e),
            }
        )
    return out


def _layers(root: Path) -> list[dict]:
    """The files the run's constitution was merged from, bases first, each with its content hash
    (the ranking constitution's marked so, where the comparisons read another)."""
    from .history import layers

    got = layers(root) or {}
    rows = [{**x, "role": "constitution"} for x in got.get("constitution", [])]
    return rows + [{**x, "role": "ranking"} for x in got.get("ranking", [])]


def build_context(run_dir: str | Path) -> dict:
    root = Path(run_dir)
    run = RunReader(root)
    queries = {q.id: q for q in run.records("queries")} | {t.id: t for t in run.records("turns")}
    responses = run.load("responses")
    revisions = run.load("revisions")
    comparisons = run.load("comparisons")
    introspections = [i for i in run.records("introspection") if i.dropped is None]
    c = run.constitution
    soft = [c.p_chosen for c in comparisons]
    texts = run.texts()
    try:
        pairs = _pairs(comparisons, texts, queries)
    finally:
        texts.close()
    manifests = list(run.manifests().values())
    times = {
        k: v
        for k, v in (
            ("created", min((m["created"] for m in manifests if "created" in m), default=None)),
            ("updated", max((m["updated"] for m in manifests if "updated" in m), default=None)),
        )
        if v
    }
    return {
        "title": f"cai run report: {root.name}",
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "run_dir": str(root),
        "config": run.config.model_dump(mode="json"),
        "constitution": {"name": c.name, "principles": len(c.principles), "layers": _layers(root)},
        "manifest": times,
        "shards": len(manifests),
        "stages": _stages(run.stages()),
        "counts": {
            "queries": len(queries),
            "kept_queries": sum(q.dropped is None for q in queries.values()),
            "responses": len(responses),
            "revisions": len(revisions),
            "comparisons": len(comparisons),
            **({"introspections": len(introspections)} if introspections else {}),
            "errors": len(run.open_errors()),
        },
        "comparison_stats": {
            "pairs": len(comparisons),
            "order_consistency": sum(c.order_consistent for c in comparisons) / len(comparisons)
            if comparisons
            else None,
            "mean_p_chosen": sum(soft) / len(soft) if soft else None,
            "methods": sorted({c.method for c in comparisons}),
        },
        "histogram": soft_label_histogram(soft) if soft else None,
        "principles": _principles(comparisons),
        "chains": _chains(queries, responses, revisions),
        "pairs": pairs,
        "introspections": [
            next(i for i in introspections if i.kind == k) for k in dict.fromkeys(i.kind for i in introspections)
        ],
        "training": _training(root),
        "training_summary": _read_json(root / "training-summary.json"),
        "evals": _evals(root),
        "reviews": _reviews(root),
    }


def render_report(context: dict) -> str:
    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(lambda n: (resources.files("cai") / "templates" / n).read_text(encoding="utf-8")),
        undefined=jinja2.StrictUndefined,
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )

    def num(x, digits: int = 3):
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            return "-" if x is None else x
        return f"{x:.{digits}f}" if isinstance(x, float) else str(x)

    env.filters["num"] = num
    env.filters["tojson_pretty"] = lambda v: json.dumps(v, indent=2, default=str, ensure_ascii=False)
    return env.get_template("report.html.jinja").render(**context)


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    path = Path(out) if out else Path(run_dir) / "report.html"
    html = render_report(build_context(run_dir))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    return path
