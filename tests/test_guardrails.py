"""RL guardrails: a held-out judge, completion length and KL beside the training reward, and alarms.

The alarms are checked twice: on curves whose behaviour is set by hand (where each must fire, and
where noise alone must not make it fire), and in real RLOO runs on the tiny Llama with rewards of
known behaviour: one that loves length, and a held-out judge that wants the opposite of the
training reward.
"""

import base64
import json
import random
import shutil

import pytest

import tests.testing_utils  # noqa: F401  (registers the scripted backend a held-out judge reads on)
from cai.core.errors import UserError
from cai.training.config import load_train_config
from cai.training.guardrails import divergence_alarm, length_alarm, noise, trend
from tests.cli import cai


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def points(rewards, held_outs=None, lengths=None):
    n = len(rewards)
    held_outs, lengths = held_outs or [None] * n, lengths or [None] * n
    return [
        {"step": i + 1, "reward": r, "held_out": h, "length": n_, "kl": None}
        for i, (r, h, n_) in enumerate(zip(rewards, held_outs, lengths))
    ]


def first_divergence(ps, steps):
    for i in range(len(ps)):
        alarm = divergence_alarm(ps[max(0, i - 5 * steps + 1) : i + 1], steps)
        if alarm is not None:
            return alarm
    return None


# ---------------------------------------------------------------------------------------------
# The alarms on curves set by hand


def test_trend_and_noise():
    assert trend([1, 2, 3, 4], [1.0, 3.0, 5.0, 7.0]) == pytest.approx((2.0, 5.0))
    assert trend([1, 2, 3, 4], [0.0, 1.0, 0.0, 1.0]) == pytest.approx((0.2, 5.0))
    assert trend([1, 2], [0.0, 1.0]) is None
    assert noise([1.0, 3.0, 5.0, 7.0]) == pytest.approx(2 / 2**0.5)  # a steady climb: each difference is 2
    rng = random.Random(1)
    climbing = [0.01 * i + rng.gauss(0, 0.1) for i in range(2000)]
    assert noise(climbing) == pytest.approx(0.1, rel=0.05)  # the climb hardly moves it


def test_length_alarm_past_a_ratio_of_the_first_step_or_a_number_of_tokens():
    ps = points([0.0] * 4, lengths=[10.0, 12.0, 15.0, 16.0])
    start = ps[0]
    assert [length_alarm(p, start, 1.5, "ratio") is not None for p in ps] == [False, False, False, True]
    alarm = length_alarm(ps[3], start, 1.5, "ratio")
    assert alarm.step == 4 and "16.0 tokens, past 15.0 (1.5 x 10.0 at step 1)" in alarm.message
    assert [length_alarm(p, start, 12, "tokens") is not None for p in ps] == [False, False, True, True]


def test_divergence_alarm_fires_on_opposite_trends_and_not_on_noise():
    rng = random.Random(0)
    flat = [rng.gauss(0.5, 0.05) for _ in range(400)]
    other = [rng.gauss(0.5, 0.05) for _ in range(400)]
    assert first_divergence(points(flat, other), 8) is None  # 400 steps of noise: no alarm
    # the training reward climbs by 0.01 a step from step 20 while the held-out one falls as fast
    up = [0.5 + 0.01 * max(0, i - 20) + rng.gauss(0, 0.02) for i in range(60)]
    down = [0.5 - 0.01 * max(0, i - 20) + rng.gauss(0, 0.02) for i in range(60)]
    alarm = first_divergence(points(up, down), 8)
    assert alarm is not None and 21 < alarm.step <= 36, alarm
    assert alarm.message.startswith(f"over steps {alarm.step - 7}-{alarm.step} the training reward rose (+")
    assert first_divergence(points(up, up), 8) is None  # both climb: the judges agree
    assert first_divergence(points(flat[:60], down), 8) is None  # the held-out falls, the training one does not rise


def test_guardrail_config_mistakes_are_one_line(tmp_path):
    with pytest.raises(UserError, match="guardrails: .*stop: no alarm to stop on"):
        load_train_config(None, ["dataset=x", "guardrails.stop=true"])
    with pytest.raises(UserError, match="length_bound: a ratio of the first step's length must be above 1"):
        load_train_config(None, ["dataset=x", "guardrails.length_bound=0.8"])
    with pytest.raises(UserError, match="guardrails.divergence_steps: .*greater than or equal to 4"):
        load_train_config(None, ["dataset=x", "guardrails.divergence_steps=2"])
    with pytest.raises(UserError, match="guardrails.reward_model: .*nope: no such model folder"):
        load_train_config(None, ["dataset=x", f"guardrails.reward_model={tmp_path / 'nope'}"])
    cfg = tmp_path / "rl.yaml"
    cfg.write_text(
        f"dataset: {tmp_path}\nreward_model: {tmp_path}\n"
        "guardrails:\n  divergence_steps: 6\n  lenght_bound: 2\n"
        f"trl: {{output_dir: {tmp_path / 'o'}}}\n"
    )
    r = cai("train", "rl", cfg)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "rl.yaml:5" in r.stderr and "guardrails.lenght_bound" in r.stderr, r.stderr


def test_alarms_that_cannot_work_are_refused_before_training(tmp_path):
    from cai.training.run import train_rl

    base = ["dataset=x", "trl.output_dir=o", "trl.max_completion_length=32"]
    with pytest.raises(UserError, match=r"guardrails.divergence_steps: needs a held-out judge"):
        train_rl(load_train_config(None, [*base, "guardrails.divergence_steps=6"]), reward=lambda **k: [])
    with pytest.raises(UserError, match="guardrails.length_bound: 40 tokens is never passed: .*is 32"):
        cfg = load_train_config(None, [*base, "guardrails.length_bound=40", "guardrails.length_unit=tokens"])
        train_rl(cfg, reward=lambda **k: [])


# ---------------------------------------------------------------------------------------------
# Real RLOO runs on the tiny Llama


def tokens(prompts, completions, completion_ids, **kwargs):
    """Loves length: the reward is the number of tokens."""
    return [float(len(c)) for c in completion_ids]


def share_of_e(prompts, completions, **kwargs):
    return [c[-1]["content"].count("e") / max(1, len(c[-1]["content"])) for c in completions]


def against_e(prompts, completions, **kwargs):
    """A held-out judge that disagrees: it wants exactly what the training reward does not."""
    return [-r for r in share_of_e(prompts, completions)]


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prompts")
    rows = [{"prompt": [{"role": "user", "content": f"Say something about number {i}."}]} for i in range(16)]
    write_jsonl(folder / "train_prompts.jsonl", rows)
    return folder


@pytest.fixture(scope="module")
def brief_model(tmp_path_factory, tiny_model):
    """The tiny Llama taught to answer in one to six words: untrained, it never stops before the
    length cap, and a length-loving reward would have nothing to push on."""
    from cai.training.run import train_sft

    folder = tmp_path_factory.mktemp("brief")
    rng = random.Random(0)
    words = ["yes", "no", "maybe", "sure", "fine", "good", "ok", "thanks", "right", "well"]
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Say something about number {i}."},
                {"role": "assistant", "content": " ".join(rng.choice(words) for _ in range(rng.randint(1, 6)))},
            ]
        }
        for i in range(64)
    ]
    write_jsonl(folder / "train_sft.jsonl", rows)
    sets = [f"model={tiny_model}", f"dataset={folder}", f"trl.output_dir={folder / 'model'}"]
    sets += ["trl.max_steps=30", "trl.learning_rate=1e-2", "trl.per_device_train_batch_size=16", "trl.save_strategy=no"]
    train_sft(load_train_config(None, sets))
    return folder / "model"


def rl_config(model, prompts, out, *extra):
    return load_train_config(
        None,
        [
            f"model={model}",
            f"dataset={prompts}",
            f"trl.output_dir={out}",
            "trl.num_generations=4",
            "trl.per_device_train_batch_size=16",
            "trl.save_strategy=no",
            "trl.temperature=1.0",
            *extra,
        ],
    )


def alarm_lines(text):
    return [line for line in text.splitlines() if line.startswith("guardrail: ")]


@pytest.mark.slow
def test_a_reward_that_loves_length_trips_the_length_alarm_and_stops(
    brief_model, tiny_model, prompts, tmp_path, capsys
):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from cai.training.run import train_rl

    # a second reward model as the held-out judge (untrained: it is here to be scored and logged)
    held = tmp_path / "held-out-rm"
    AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1).save_pretrained(held)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(held)
    cfg = rl_config(
        brief_model,
        prompts,
        tmp_path / "rl",
        "trl.max_steps=8",
        "trl.max_completion_length=24",
        "trl.learning_rate=5e-2",
        "trl.beta=0.05",
        f"guardrails.reward_model={held}",
        "guardrails.length_bound=1.5",
        "guardrails.stop=true",
    )
    summary = train_rl(cfg, reward=tokens)
    [line] = alarm_lines(capsys.readouterr().out)
    guard = summary["guardrails"]
    [alarm] = guard["alarms"]
    assert alarm["alarm"] == "length" and alarm["step"] <= 4, guard
    assert line == f"guardrail: length alarm at step {alarm['step']}: {alarm['message']}"
    # it stopped at the alarm, and says so
    assert guard["stopped"] == alarm and summary["steps"] == alarm["step"] < 8
    assert summary["stopped"].startswith(f"guardrail length alarm at step {alarm['step']}: mean completion length")
    written = json.loads((tmp_path / "rl" / "summary.json").read_text())
    assert written["guardrails"] == guard and written["stopped"] == summary["stopped"]
    # each step logs the length, the KL to the reference and the held-out reward beside the training one
    series = guard["series"]
    log = [h for h in summary["log"] if "reward" in h]
    assert len(log) == alarm["step"]
    assert log[-1][series["length"]] > 1.5 * log[0][series["length"]] == 1.5 * guard["start_length"]
    assert all(h[series["reward"]] == h[series["length"]] for h in log)  # the reward is the length
    assert all(isinstance(h[series["kl"]], float) for h in log) and log[-1][series["kl"]] != 0
    assert all(isinstance(h[series["held_out"]], float) for h in log)
    assert guard["held_out"] == f"reward model: {held}"


@pytest.fixture(scope="module")
def diverging(tiny_model, prompts, tmp_path_factory):
    """A run whose held-out judge wants the opposite of its training reward, without stop."""
    from cai.training.run import train_rl

    out = tmp_path_factory.mktemp("diverging") / "rl"
    cfg = rl_config(
        tiny_model,
        prompts,
        out,
        "trl.max_steps=20",
        "trl.max_completion_length=12",
        "trl.learning_rate=5e-2",
        "trl.beta=0.0",
        "guardrails.divergence_steps=6",
    )
    return out, train_rl(cfg, reward=share_of_e, held_out=against_e)


@pytest.mark.slow
def test_a_held_out_judge_that_disagrees_trips_the_divergence_alarm(diverging):
    out, summary = diverging
    guard = summary["guardrails"]
    [alarm] = guard["alarms"]
    assert alarm["alarm"] == "divergence" and guard["stopped"] is None and "stopped" not in summary
    assert summary["steps"] == 20  # no stop: training went on
    series = guard["series"]
    log = {h["step"]: h for h in summary["log"] if "reward" in h}
    window = [log[s] for s in range(alarm["step"] - 5, alarm["step"] + 1)]
    assert window[-1][series["reward"]] > window[0][series["reward"]]
    assert window[-1][series["held_out"]] < window[0][series["held_out"]]
    assert guard["held_out"] == "function: against_e"


@pytest.mark.slow
def test_without_guardrails_nothing_changes_and_a_held_out_judge_only_watches(tiny_model, prompts, tmp_path, capsys):
    from cai.training.run import train_rl

    steps = ["trl.max_steps=3", "trl.max_completion_length=8", "trl.learning_rate=5e-2", "trl.beta=0.0"]
    plain = train_rl(rl_config(tiny_model, prompts, tmp_path / "plain", *steps), reward=share_of_e)
    judge = '{"constitution": "harmless", "principles": 1, "backend": {"backend": "scripted"}}'
    watched = train_rl(
        rl_config(tiny_model, prompts, tmp_path / "watched", *steps, f"guardrails.judge={judge}"), reward=share_of_e
    )
    assert alarm_lines(capsys.readouterr().out) == []
    assert "guardrails" not in plain and "stopped" not in plain
    assert not any(k.startswith("rewards/held_out") for h in plain["log"] for k in h)
    # the held-out judge is scored and logged, and the training is the same step for step
    assert watched["guardrails"]["alarms"] == [] and watched["guardrails"]["held_out"].startswith("judge: harmless")
    assert all(0 < h["rewards/held_out/mean"] < 1 for h in watched["log"] if "reward" in h)
    assert watched["reward_curve"] == plain["reward_curve"]
    assert [h.get("loss") for h in watched["log"]] == [h.get("loss") for h in plain["log"]]


@pytest.mark.slow
def test_the_report_shows_the_guardrail_curves_and_alarms(diverging, tmp_path):
    from cai.report import write_report

    out, summary = diverging
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("constitution: harmless\npolicy: {backend: transformers, model: default}\n")
    constitution = "name: harmless\nprinciples:\n  - id: kind\n    comparison: Which is kinder?\n"
    (run / "constitution.yaml").write_text(constitution)
    (run / "manifest.json").write_text(json.dumps({"stages": {}}))
    (run / "rl").mkdir()
    shutil.copy(out / "summary.json", run / "rl" / "summary.json")
    html = write_report(run).read_text()
    alarm = summary["guardrails"]["alarms"][0]
    assert f"divergence alarm at step {alarm['step']}" in html
    img = html.split('alt="RL guardrails"')[1].split('src="data:image/png;base64,')[1].split('"')[0]
    assert base64.b64decode(img).startswith(b"\x89PNG")
