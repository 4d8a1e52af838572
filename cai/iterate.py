"""`cai iterate`: rounds of RLAIF. The policy a round trains writes the next round's answers.

Round k: the round k-1 checkpoint (round 1: the run config's policy) answers the run's prompts in
an ordinary run directory (`round-k/run`); the feedback model, the same in every round, ranks the
answers under the constitution; the trainer named in the config trains the round's checkpoint
(`round-k/checkpoint`) on them; the evals named in the config compare it with round 0 (the path
of training) and with round k-1 (did this round gain anything, beyond noise?). The loop stops at
`rounds`, or when a round brings no significant gain on the named measure.

Everything a round makes is in its folder and every phase is resumable: the run resumes as any
run does, a trainer whose checkpoint has no summary trains again (the same data and seed give the
same weights), and an eval whose result is missing runs again. `iterate.json` is the lineage:
which policy each round answered with and which checkpoint it made. Rounds name their
checkpoints by paths inside the iterate folder (the command works from inside it), so a record's
id says which round's policy wrote it wherever the folder lives.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from rich.console import Console

from cai.core.errors import UserError
from cai.core.files import read_structured, validate_model
from cai.core.identity import Source

STATE = "iterate.json"
# Measure → whether a lower value is the better one (a gain is a significant move that way).
MEASURES = {"harmful_compliance": True, "over_refusal": True, "helpfulness": False}


class RewardStep(BaseModel):
    model_config = ConfigDict(extra="forbid")

    config: Annotated[str, Source()] = Field(description="A reward-model training config (relative to this file).")
    set: list[str] = Field(default_factory=list, description="key=value overrides, as `cai train --set`.")


class TrainStep(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["dpo", "sft", "rl"] = Field(
        "dpo",
        description="dpo: on the round's AI-ranked pairs (soft labels); rl: RLOO/GRPO on the round's prompts, "
        "rewarded by a reward model trained on its pairs (reward:) or the config's judge; its guardrails apply.",
    )
    config: Annotated[str, Source()] = Field(description="A training config (relative to this file).")
    set: list[str] = Field(default_factory=list, description="key=value overrides, as `cai train --set`.")
    reward: RewardStep | None = Field(
        None, description="rl only: train a reward model on the round's pairs first, and reward with it."
    )

    @model_validator(mode="after")
    def _reward_for_rl(self) -> TrainStep:
        if self.reward is not None and self.kind != "rl":
            raise ValueError("reward: only a kind: rl step trains a reward model")
        return self


class FrontierEval(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["frontier"] = "frontier"
    limit: int = Field(8, ge=1, description="Red-team prompts (the round's held-out prompts) and benign prompts.")
    principles: int = Field(1, ge=1)
    max_new_tokens: int = Field(48, ge=1)
    helpful_constitution: str = "hhh"


class BehaviourEval(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["behaviour"] = "behaviour"
    suite: str = Field(description="A shipped suite name (sycophancy, even-handedness, evasiveness) or a suite file.")
    limit: int | None = Field(None, ge=1, description="The suite's first items only.")
    max_new_tokens: int = Field(64, ge=1)
    samples: int = Field(1, ge=1)
    temperature: float = Field(0.0, ge=0)


Eval = Annotated[FrontierEval | BehaviourEval, Field(discriminator="kind")]


class StopRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    measure: Literal["harmful_compliance", "over_refusal", "helpfulness"] = Field(
        "harmful_compliance", description="Stop when a round's checkpoint does not improve on the last one here."
    )


class IterateConfig(BaseModel):
    """What `cai iterate` runs each round: the run, the trainer, the evals, and when to stop."""

    model_config = ConfigDict(extra="forbid")

    run: Annotated[str, Source()] = Field(description="A run config (relative to this file); its policy is round 0.")
    rounds: int = Field(2, ge=1, description="At most this many rounds.")
    limit: int | None = Field(None, ge=1, description="Queries per round, as `cai run --limit`.")
    train: TrainStep
    evals: list[Eval] = Field(default_factory=lambda: [FrontierEval()])
    stop: StopRule | None = Field(None, description="Stop early when a round gains nothing significant.")


def load_iterate_config(path: Path) -> IterateConfig:
    data, node = read_structured(path)
    cfg = validate_model(IterateConfig, data, node, str(path))
    base = path.parent.resolve()
    reward = cfg.train.reward
    if reward is not None:
        reward = reward.model_copy(update={"config": str(base / reward.config)})
    train = cfg.train.model_copy(update={"config": str(base / cfg.train.config), "reward": reward})
    evals = [
        e.model_copy(update={"suite": str(base / e.suite)})
        if isinstance(e, BehaviourEval) and (base / e.suite).is_file()
        else e
        for e in cfg.evals
    ]
    if cfg.stop is not None and not any(isinstance(e, FrontierEval) for e in evals):
        raise UserError(f"{path}: stop: measures a frontier eval, and evals: names none")
    return cfg.model_copy(update={"run": str(base / cfg.run), "train": train, "evals": evals})


@contextlib.contextmanager
def inside(folder: Path) -> Iterator[None]:
    """Work from inside the iterate folder, so rounds name checkpoints by their place in it."""
    old = Path.cwd()
    folder.mkdir(parents=True, exist_ok=True)
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(old)


def _state() -> dict:
    path = Path(STATE)
    if not path.is_file():
        return {"rounds": []}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path.resolve()}:{e.lineno}: corrupt ({e.msg}); delete it and rerun: it is rebuilt") from None


def _save(state: dict) -> None:
    tmp = Path(STATE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2), encoding="utf-8")
    os.replace(tmp, STATE)


def _round_entry(state: dict, k: int, policy: str) -> dict:
    rounds = state["rounds"]
    while len(rounds) < k:
        rounds.append({})
    entry = rounds[k - 1]
    entry.update({"round": k, "policy": policy, "run": f"round-{k}/run", "checkpoint": f"round-{k}/checkpoint"})
    return entry


def iterate(cfg: IterateConfig, out: Path, console: Console, rounds: int | None = None) -> dict:
    """Run the rounds into `out` (resuming what is there); returns the lineage."""
    from cai.config import load_config

    base = load_config(cfg.run)  # paths resolved before the folder changes
    total = rounds or cfg.rounds
    with inside(out):
        state = _state()
        state["base_policy"] = base.policy.model
        for k in range(1, total + 1):
            policy = base.policy.model if k == 1 else f"round-{k - 1}/checkpoint"
            entry = _round_entry(state, k, policy)
            _save(state)
            console.rule(f"round {k}: {policy} answers")
            _run(base, k, policy, cfg.limit, console)
            entry["phase"] = "training"
            _save(state)
            entry["train"] = _train(cfg.train, k, policy)
            entry["phase"] = "evals"
            _save(state)
            entry["evals"] = _evals(cfg, base, k, policy, console)
            entry["phase"] = "done"
            _save(state)
            if cfg.stop is not None and k > 1 and not _gained(entry, cfg.stop.measure):
                state["stopped"] = f"round {k} brought no significant gain in {cfg.stop.measure}"
                console.print(state["stopped"])
                _save(state)
                break
        return state


def _run(base, k: int, policy: str, limit: int | None, console: Console) -> None:
    from cai.export import export_run
    from cai.pipeline import Pipeline
    from cai.tables import summary_table

    cfg = base.model_copy(
        update={
            "policy": base.policy.model_copy(update={"model": policy}),
            "feedback": base.feedback_backend,  # the same judge in every round
        }
    )
    out = Path(f"round-{k}/run")
    pipe = Pipeline(cfg, out, limit=limit, console=console)
    try:
        stats = pipe.run()
    finally:
        pipe.close()
    console.print(summary_table(stats))
    export_run(out)


def _trained(out: Path, train) -> dict:
    """A trainer's summary, without its log: from disk where it finished already (a killed
    training has no summary and trains again), else by training."""
    summary = out / "summary.json"
    result = json.loads(summary.read_text()) if summary.is_file() else train()
    return {k: v for k, v in result.items() if k != "log"}


def _train(step: TrainStep, k: int, policy: str) -> dict:
    from cai.training.config import load_train_config
    from cai.training.run import train_dpo, train_reward, train_rl, train_sft

    out = Path(f"round-{k}/checkpoint")
    data = f"round-{k}/run/datasets"
    sets = [*step.set, f"model={policy}", f"dataset={data}", f"trl.output_dir={out}"]
    if step.kind != "rl":
        cfg = load_train_config(step.config, sets)
        return _trained(out, lambda: (train_dpo if step.kind == "dpo" else train_sft)(cfg, resume=True))
    reward = None
    if step.reward is not None:  # the round's own reward model, trained on its pairs
        rm = Path(f"round-{k}/reward-model")
        rm_cfg = load_train_config(step.reward.config, [*step.reward.set, f"dataset={data}", f"trl.output_dir={rm}"])
        reward = _trained(rm, lambda: train_reward(rm_cfg, resume=True))
        sets = [*sets, f"reward_model={rm}", "judge=null"]
    cfg = load_train_config(step.config, sets)
    result = _trained(out, lambda: train_rl(cfg, resume=True))
    return result | ({"reward_model": reward} if reward is not None else {})


def _evals(cfg: IterateConfig, base, k: int, policy: str, console: Console) -> dict:
    """The round's checkpoint against round 0 (the path) and against round k-1 (the gain)."""
    from cai.constitution import load_constitution
    from cai.evaluation.frontier import evaluate_frontier, helpful_principles
    from cai.evaluation.policy import benign_chats

    out: dict = {}
    new = f"round-{k}/checkpoint"
    against = {"round0": [base.policy.model, new]}
    if k > 1:
        against["previous"] = [policy, new]
    for n, ev in enumerate(cfg.evals):
        if isinstance(ev, BehaviourEval):
            out |= _behaviour(ev, n, base, k, against, console)
            continue
        c = load_constitution(f"round-{k}/run/constitution.yaml")
        helpful = helpful_principles(load_constitution(ev.helpful_constitution), "helpful")
        red = _prompts(Path(f"round-{k}/run"), ev.limit)
        benign = benign_chats()[: ev.limit]
        for name, models in against.items():
            path = Path(f"round-{k}/eval-frontier-{n}-{name}.json")
            if not path.is_file():
                console.print(f"eval frontier: {' vs '.join(models)}")
                result = evaluate_frontier(
                    [base.policy.model_copy(update={"model": m}) for m in models],
                    red,
                    benign,
                    c,
                    helpful,
                    base.feedback_backend,
                    principles=ev.principles,
                    max_new_tokens=ev.max_new_tokens,
                    seed=base.seed,
                )
                _write(path, result)
            out[f"frontier-{n}-{name}"] = str(path)
    return out


def _write(path: Path, result: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, path)


def _behaviour(ev: BehaviourEval, n: int, base, k: int, against: dict, console: Console) -> dict:
    """A behaviour suite on the round's checkpoint against round 0 and the round before, read by
    the same feedback model as the rounds' labels."""
    from cai.evaluation.behaviour import evaluate_behaviour, load_suite

    suite, _ = load_suite(ev.suite)
    out = {}
    for name, models in against.items():
        path = Path(f"round-{k}/eval-behaviour-{n}-{name}.json")
        if not path.is_file():
            console.print(f"eval behaviour {suite.name}: {' vs '.join(models)}")
            result = evaluate_behaviour(
                [base.policy.model_copy(update={"model": m}) for m in models],
                suite=suite,
                feedback=base.feedback_backend,
                max_new_tokens=ev.max_new_tokens,
                samples=ev.samples,
                temperature=ev.temperature,
                seed=base.seed,
                limit=ev.limit,
            )
            _write(path, result)
        out[f"behaviour-{n}-{name}"] = str(path)
    return out


def _prompts(run: Path, limit: int) -> list[list[dict]]:
    """The round's held-out prompts, or its training prompts where a small run held none out."""
    from cai.evaluation.frontier import red_team_prompts
    from cai.training.data import load_split

    try:
        return red_team_prompts(run, limit=limit)
    except UserError:
        return [list(r["prompt"]) for r in load_split(str(run / "datasets"), "prompts", "train")][:limit]


def _frontier(entry: dict, against: str) -> str | None:
    """The round's first frontier result against round 0 or the round before, if it has one."""
    evals = (entry.get("evals") or {}).items()
    return next((v for k, v in evals if k.startswith("frontier-") and k.endswith(f"-{against}")), None)


def _gained(entry: dict, measure: str) -> bool:
    """Whether the round's checkpoint moved the measure the good way beyond noise, against the last one."""
    path = _frontier(entry, "previous")
    if path is None:
        return True
    rows = json.loads(Path(path).read_text())["models"]
    versus = (rows[-1].get("vs_reference") or {}).get(measure) or {}
    if versus.get("diff") is None:
        return False
    better = versus["diff"] < 0 if MEASURES[measure] else versus["diff"] > 0
    entry["gain"] = {"measure": measure, **versus}
    return bool(versus.get("significant")) and better


def _rate(rate: dict | None) -> str:
    if not rate or rate.get("value") is None:
        return "-"
    low, high = rate.get("ci95") or (None, None)
    bounds = f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
    return f"{rate['value']:.3f}{bounds} n={rate.get('n', '?')}"


def write_iterate_report(folder: Path, out: Path | None = None) -> Path:
    """The path of the rounds on the harmless–helpful frontier, and each round's rates and gain."""
    import jinja2

    from .report import frontier_plot

    state = json.loads((folder / STATE).read_text(encoding="utf-8"))
    rows, points = [], []
    for entry in state["rounds"]:
        path = folder / (_frontier(entry, "round0") or "-")
        result = json.loads(path.read_text()) if path.is_file() else None
        mine = result["models"][-1] if result else {}
        if result and not points:
            points.append(result["models"][0] | {"model": "round 0"})
        if mine:
            points.append(mine | {"model": f"round {entry['round']}"})
        rates = mine.get("rates") or {}
        gain = entry.get("gain") or {}
        training = entry.get("train") or {}
        alarms = (training.get("guardrails") or {}).get("alarms") or []
        rows.append(
            {
                "round": entry["round"],
                "alarms": [f"{a['alarm']} at step {a['step']}: {a['message']}" for a in alarms],
                "stopped": training.get("stopped"),
                "policy": entry["policy"],
                "checkpoint": entry["checkpoint"],
                "training": f"{training.get('steps', '-')} steps, loss {training.get('train_loss', float('nan')):.3f}"
                if training
                else "-",
                "harmful": _rate(rates.get("harmful_compliance")),
                "refusal": _rate(rates.get("over_refusal")),
                "helpful": _rate(rates.get("helpfulness")),
                "gain": f"{gain['measure']} {gain['diff']:+.3f} (p={gain['p']:.3g})" if gain else "-",
            }
        )
    behaviour = _behaviour_rows(folder, state["rounds"])
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("cai", "templates"), autoescape=True, undefined=jinja2.StrictUndefined
    )
    html = env.get_template("iterate.html.jinja").render(
        folder=str(folder),
        base=state.get("base_policy", "?"),
        stopped=state.get("stopped"),
        rounds=rows,
        behaviour=behaviour,
        plot=frontier_plot(points, "round 0") if len(points) > 1 else None,
    )
    path = out or folder / "report.html"
    path.write_text(html, encoding="utf-8")
    return path


def _behaviour_rows(folder: Path, rounds: list[dict]) -> list[dict]:
    """Per behaviour suite, each measure's rate at round 0 and after each round, with the paired
    test of each round against round 0."""
    tables: dict[str, dict] = {}
    for entry in rounds:
        for key, rel in (entry.get("evals") or {}).items():
            if not (key.startswith("behaviour-") and key.endswith("-round0")):
                continue
            path = folder / rel
            if not path.is_file():
                continue
            result = json.loads(path.read_text())
            table = tables.setdefault(key, {"suite": result["suite"], "measures": result["measures"], "rows": []})
            first, mine = result["models"][0], result["models"][-1]
            if not table["rows"]:
                rates = {m: _rate(first["rates"].get(m)) for m in table["measures"]}
                table["rows"].append({"round": 0, "rates": rates})
            vs = mine.get("vs_first") or {}
            table["rows"].append(
                {
                    "round": entry["round"],
                    "rates": {
                        m: _rate(mine["rates"].get(m)) + (" *" if (vs.get(m) or {}).get("significant") else "")
                        for m in table["measures"]
                    },
                }
            )
    return list(tables.values())
