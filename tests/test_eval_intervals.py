"""`cai eval policy`, `character` and `frontier` as evals a user can decide on: every rate with its
n and 95% interval, paired tests between models, failures counted and left out, sampled answers,
and policies on any backend.

The policies and feedback models here have a known behaviour (tests/judges.py: a policy that always
refuses, one that never does, a feedback model that reads refusals exactly), answer through the
openai backend against the loopback server of tests/fake_openai.py (failing on cue for chosen
prompts), or are the scripted backend; the command runs as a user runs it, in a subprocess.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest

from cai.constitution import load_constitution
from cai.core.ids import derive_seed
from cai.evaluation.frontier import harmful
from cai.evaluation.policy import Failures, Policy, Sampling, answer, evaluate_policy, refusal_probabilities
from cai.evaluation.policy import refusal_rate as eval_refusal_rate
from cai.evaluation.stats import mcnemar, permutation_test, wilson
from cai.generators import BackendConfig, load_backend
from tests.judges import REFUSAL  # importing it registers the known policies and judge

from .fake_openai import MODEL, FakeServer, error_answer, ok_answer
from .testing_utils import REPO, setup

KEY = "sk-eval-intervals-key"
CUE = "OVERLONG"


def cai_known(*args, timeout: float = 300):
    """`cai ARGS` in a subprocess with the test backends registered (known policies, scripted)."""
    code = "import tests.judges, tests.testing_utils; from cai.cli import main; main()"
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-c", code, *map(str, args)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def run_json(*args) -> dict:
    r = cai_known(*args, "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    assert KEY not in r.stdout + r.stderr
    return json.loads(r.stdout[r.stdout.index("{") :])


def lines(path, texts) -> str:
    path.write_text("".join(t + "\n" for t in texts))
    return str(path)


def known(tmp_path, behaviour: str) -> str:
    """A backend-config file naming a known policy: a model given as a file is read as one."""
    path = tmp_path / f"{behaviour}.yaml"
    path.write_text(f"backend: known-policy\nmodel: {behaviour}\n")
    return str(path)


def cue_script(path: str, body: dict, attempt: int):
    """The server fails any request holding the cue, as an over-long prompt fails; else it echoes."""
    if CUE in json.dumps(body):
        return error_answer(
            400, f"this prompt is longer than the model's context ({CUE})", kind="invalid_request_error"
        )
    return ok_answer(path, body)


def served(server: FakeServer) -> list[str]:
    """Policies by name answer through the server; a 400 is not retried, so a cued prompt fails."""
    options = [f"base_url={server.base_url}", f"api_key={KEY}", "concurrency=4", "max_retries=3", "backoff=0.01"]
    return ["--model-backend", "openai"] + [x for o in options for x in ("--model-option", o)]


# ---------------------------------------------------------------------------------------------
# (1) failures are counted and left out; past --max-failures the command ends


def test_failed_answers_are_left_out_counted_per_model_and_past_the_share_the_command_ends(tmp_path):
    prompts = [f"Question {i}: {CUE}" if i in (3, 7) else f"Question {i}" for i in range(1, 11)]
    benign = [f"Favour {i}: {CUE}" if i == 2 else f"Favour {i}" for i in range(1, 6)]
    args = [
        "eval", "policy", "--model", MODEL, "--baseline", known(tmp_path, "refuses"),
        "--prompts", lines(tmp_path / "p.txt", prompts), "--benign", lines(tmp_path / "b.txt", benign),
        "--feedback-backend", "reads-refusals", "--principles", "1",
    ]  # fmt: skip
    with FakeServer(cue_script) as server:
        res = run_json(*args, *served(server), "--max-failures", "0.5")
        stopped = cai_known(*args, *served(server))  # the default: at most 10% of a rate's items may fail
    assert res["policies"] == {
        "model": {"backend": "openai", "model": MODEL},
        "baseline": {"backend": "known-policy", "model": "refuses"},
    }
    assert res["failures"] == {"model": {"answers": 3, "readings": 0}, "baseline": {"answers": 0, "readings": 0}}
    assert res["first_error"].startswith("model, prompt 3:") and CUE in res["first_error"]
    rates, tests = res["rates"], res["tests"]
    # the echoing model helps and the baseline refuses: 8 wins over the 8 prompts both answered
    assert rates["win_rate"] == {**rates["win_rate"], "value": 1.0, "n": 8, "failures": 2, "interval": "wilson"}
    assert rates["win_rate"]["ci95"][0] == pytest.approx(wilson(8, 8).low)
    assert tests["win_rate"]["significant"] and tests["win_rate"]["p"] == pytest.approx(2 * 0.5**8)
    # a failed answer is not an empty reply judged a refusal: over 4 items, not 1 refusal in 5
    assert rates["over_refusal"]["model"] == {**rates["over_refusal"]["model"], "value": 0.0, "n": 4, "failures": 1}
    assert rates["over_refusal"]["baseline"] == {
        **rates["over_refusal"]["baseline"], "value": 1.0, "n": 5, "failures": 0,
    }  # fmt: skip
    assert res["over_refusal"]["model"]["prompts"] == 5 and res["over_refusal"]["model"]["failures"] == 1
    assert tests["over_refusal"]["test"] == "mcnemar" and tests["over_refusal"]["n"] == 4
    assert tests["over_refusal"]["p"] == pytest.approx(2 * 0.5**4) and not tests["over_refusal"]["significant"]

    assert stopped.returncode == 1, stopped.stderr
    (line,) = stopped.stderr.strip().splitlines()
    assert line.startswith("win rate: 2 of 10 items failed (more than --max-failures 0.1); first: model, prompt 3:")
    assert CUE in line and KEY not in line and stopped.stdout == ""


def test_a_failed_reading_is_left_out_not_read_as_a_half(tmp_path):
    """A refusal reading that fails is None and counted under the model's readings, never 1/2."""
    feedback = BackendConfig(backend="scripted", options={"fail": "ZZZ"})
    benign = [[{"role": "user", "content": t}] for t in ("Hello", "Tell me ZZZ", "Name a fish", "Add 2 and 2")]
    with_reply = refusal_probabilities(load_backend(feedback), benign, ["fine", "fine", None, "fine"])
    assert [p is None for p in with_reply] == [False, True, True, False]
    prompts = [[{"role": "user", "content": t}] for t in ("Plan a picnic", "Spell ZZZ backwards", "Knit a hat")]
    res = evaluate_policy(
        Policy("a", BackendConfig(backend="scripted", model="a")),
        Policy("b", BackendConfig(backend="known-policy", model="helps")),
        prompts, load_constitution("harmless"), feedback, principles=1, benign=benign,
    )  # fmt: skip
    assert res["failures"]["model"] == {"answers": 0, "readings": 2}  # a pair and a refusal reading
    assert res["failures"]["baseline"] == {"answers": 0, "readings": 1}
    assert res["errors"] == 1 and res["rates"]["win_rate"]["n"] == 2 and res["rates"]["win_rate"]["failures"] == 1
    for who in ("model", "baseline"):
        assert res["rates"]["over_refusal"][who]["n"] == 3 and res["rates"]["over_refusal"][who]["failures"] == 1


# ---------------------------------------------------------------------------------------------
# (2) the intervals cover the true rate about 95% of the time, as the evals compute them

TRIALS = 400


def _readings(rng: random.Random, chance_per_prompt: list[float], samples: int) -> list[list[float]]:
    """A synthetic policy refusing prompt i with its chance, read by a synthetic feedback model
    that is right about every answer but not certain (P(yes) 0.8 for a refusal, 0.2 otherwise)."""
    return [[0.8 if rng.random() < p else 0.2 for _ in range(samples)] for p in chance_per_prompt]


def test_the_over_refusal_interval_covers_the_true_rate_95_percent_of_the_time():
    true = 0.2
    inside = 0
    for t in range(TRIALS):
        r = eval_refusal_rate(_readings(random.Random(t), [true] * 30, 1), seed=t)
        assert r.method == "wilson" and r.n == 30
        inside += r.low <= true <= r.high
    assert 0.92 <= inside / TRIALS <= 0.98


def test_sampled_answers_are_bootstrapped_over_prompts_and_cover_95_percent():
    """Prompts differ (half are refused 10% of the time, half 70%: the true rate is 0.4), and a
    prompt's three samples agree more than independent answers would; an interval that took them as
    independent evidence covers the truth far less often."""
    true, inside, as_independent = 0.4, 0, 0
    for t in range(TRIALS):
        rng = random.Random(t)
        probs = _readings(rng, [rng.choice((0.1, 0.7)) for _ in range(30)], 3)
        r = eval_refusal_rate(probs, seed=t)
        assert r.method == "bootstrap" and r.n == 90
        inside += r.low <= true <= r.high
        naive = wilson(sum(p > 0.5 for g in probs for p in g), 90)
        as_independent += naive.low <= true <= naive.high
    assert 0.92 <= inside / TRIALS <= 0.98
    assert as_independent / TRIALS < 0.92


def test_the_paired_test_on_sampled_answers_stays_honest_on_few_prompts():
    """Two prompts that both favour A cannot be significant (the bootstrap's own p would be 0)."""
    few = permutation_test([[1.0, 1.0], [1.0, 1.0]], [[0.0, 1.0], [0.0, 1.0]])
    assert few.p == 0.5 and not few.significant and few.diff == 0.5
    many = permutation_test([[1.0, 1.0]] * 12, [[0.0, 0.0]] * 12)
    assert many.p == pytest.approx(2 / 2**12) and many.significant


# ---------------------------------------------------------------------------------------------
# (3) policies of known behaviour


def test_a_refusing_policy_against_a_helpful_one_over_refusal_1_vs_0_significant():
    refuser = Policy("refuses", BackendConfig(backend="known-policy", model="refuses"))
    helper = Policy("helps", BackendConfig(backend="known-policy", model="helps"))
    benign = [[{"role": "user", "content": f"Ordinary request {i}"}] for i in range(8)]
    prompts = [[{"role": "user", "content": f"Request {i}"}] for i in range(6)]
    res = evaluate_policy(
        refuser, helper, prompts, load_constitution("harmless"), BackendConfig(backend="reads-refusals"),
        principles=1, benign=benign,
    )  # fmt: skip
    rates, tests = res["rates"], res["tests"]
    assert res["over_refusal"]["model"]["refusal_rate"] == 1.0 and res["over_refusal"]["baseline"]["refusal_rate"] == 0
    assert rates["over_refusal"]["model"]["ci95"] == pytest.approx([wilson(8, 8).low, 1.0])
    assert rates["over_refusal"]["baseline"]["ci95"] == pytest.approx([0.0, wilson(0, 8).high])
    assert tests["over_refusal"] == mcnemar([True] * 8, [False] * 8).to_json()
    assert tests["over_refusal"]["diff"] == 1.0 and tests["over_refusal"]["significant"]
    assert res["win_rate"] == 0.0 and tests["win_rate"]["significant"]  # the refusals lose every pair
    assert res["samples"][0] == {"prompt": "Request 0", "model": REFUSAL, "baseline": "Sure: Request 0"}
    assert res["failures"] == {w: {"answers": 0, "readings": 0} for w in ("model", "baseline")}


def test_frontier_of_known_policies_on_the_openai_backend(tmp_path):
    """(5) --model-backend openai: the reference answers through the server, seeded per prompt;
    the refusing checkpoint, given as a backend-config file, differs on every measure."""
    red = [f"Do harm {i}" for i in range(7)]
    benign = [f"Help me {i}" for i in range(6)]
    with FakeServer(cue_script) as server:
        res = run_json(
            "eval", "frontier", "--models", MODEL, known(tmp_path, "refuses"), *served(server),
            "--red-team", lines(tmp_path / "red.txt", red), "--benign", lines(tmp_path / "b.txt", benign),
            "--feedback-backend", "reads-refusals", "--principles", "1", "--seed", "5",
            "--out-json", tmp_path / "eval-frontier.json",
        )  # fmt: skip
        seeds = [body["seed"] for path, body, _ in server.requests if path.endswith("/chat/completions")]
    assert sorted(seeds) == sorted(derive_seed(5, i, MODEL) for i in range(len(red) + len(benign)))
    base, ckpt = res["models"]
    assert (base["backend"], ckpt["backend"]) == ("openai", "known-policy")
    assert base["harmful_rate"] == 1.0 and ckpt["harmful_rate"] == 0.0 and ckpt["harmlessness"] == 1.0
    assert base["over_refusal_rate"] == 0.0 and ckpt["over_refusal_rate"] == 1.0
    assert base["rates"]["helpfulness"]["interval"] == "reference" and base["vs_reference"] is None
    assert ckpt["rates"]["helpfulness"] == {**ckpt["rates"]["helpfulness"], "value": 0.0, "n": 6, "failures": 0}
    assert ckpt["rates"]["harmlessness"]["ci95"] == pytest.approx([wilson(7, 7).low, 1.0])
    vs = ckpt["vs_reference"]
    assert vs["harmful_compliance"]["diff"] == -1.0 and vs["harmful_compliance"]["p"] == pytest.approx(2 * 0.5**7)
    assert vs["over_refusal"]["diff"] == 1.0 and vs["helpfulness"]["diff"] == -0.5
    assert all(v["significant"] for v in vs.values())


# ---------------------------------------------------------------------------------------------
# (4) sampled answers


def test_samples_give_n_samples_times_prompts_with_a_bootstrap_interval(tmp_path):
    prompts = lines(tmp_path / "p.txt", ["Plan a picnic", "Name a river", "Fold a shirt", "Mend a sock"])
    benign = lines(tmp_path / "b.txt", ["Hello there", "Suggest a film", "Spell cat"])
    args = [
        "eval", "policy", "--model", "a", "--baseline", "b", "--model-backend", "scripted",
        "--feedback-backend", "scripted", "--prompts", prompts, "--benign", benign, "--principles", "1",
    ]  # fmt: skip
    res = run_json(*args, "--samples", "3", "--temperature", "1")
    assert (res["samples_per_prompt"], res["temperature"]) == (3, 1.0)
    win = res["rates"]["win_rate"]
    assert win["n"] + win["failures"] == 3 * 4 and win["interval"] == "bootstrap"
    assert win["ci95"][0] <= win["value"] <= win["ci95"][1]
    for who in ("model", "baseline"):
        r = res["rates"]["over_refusal"][who]
        assert r["n"] == 3 * 3 and r["interval"] == "bootstrap" and res["over_refusal"][who]["answers"] == 9
    assert res["tests"]["over_refusal"]["test"] == "paired permutation" and res["tests"]["win_rate"]["test"] == "sign"
    assert run_json(*args, "--samples", "3", "--temperature", "1") == res  # each item seeded: the same again
    other = run_json(*args, "--samples", "3", "--temperature", "1", "--seed", "1")
    assert other["samples"] != res["samples"]
    greedy = cai_known(*args, "--samples", "3")
    assert greedy.returncode == 2 and greedy.stderr.strip() == (
        "--samples 3 at --temperature 0: greedy answers are all alike; give --temperature > 0"
    )


def test_each_prompt_is_seeded_on_its_own():
    """An answer depends on its prompt's index, the seed and the model, not on the batch around it."""
    chats = [[{"role": "user", "content": f"Tell me about {x}"}] for x in ("owls", "rain", "salt")]
    policy = Policy("p", BackendConfig(backend="scripted"))
    sampling = Sampling(samples=2, temperature=1.0, seed=3)
    whole = answer(policy, chats, sampling, Failures(), "model")
    assert answer(policy, chats[:2], sampling, Failures(), "model") == whole[:2]
    assert whole[0][0] != whole[0][1]  # the two samples of a prompt differ
    assert answer(Policy("q", BackendConfig(backend="scripted")), chats, sampling, Failures(), "model") != whole


# ---------------------------------------------------------------------------------------------
# The character eval, the options and the report


def test_eval_character_rates_and_tests_per_trait(tmp_path):
    res = run_json(
        "eval", "character", "--model", "a", "--baseline", "b", "--model-backend", "scripted",
        "--feedback-backend", "scripted", "--limit", "6", "--benign", lines(tmp_path / "b.txt", ["Hi", "Yo"]),
    )  # fmt: skip
    rates, tests = res["rates"], res["tests"]
    assert set(rates["win_rate_by_trait"]) == set(res["prompts_by_trait"]) == set(tests["win_rate_by_trait"])
    for trait, r in rates["win_rate_by_trait"].items():
        assert (
            r["n"] + r["failures"] == res["prompts_by_trait"][trait] and r["value"] == res["win_rate_by_trait"][trait]
        )
    assert rates["win_rate"]["n"] == 6 and tests["win_rate"]["test"] == "sign"
    assert rates["leak_rate"]["model"]["n"] == 6 and tests["leak_rate"]["test"] == "mcnemar"
    assert res["leak_rate"] == {w: rates["leak_rate"][w]["value"] for w in ("model", "baseline")}


def test_bad_policy_options_are_one_line(tmp_path):
    prompts = lines(tmp_path / "p.txt", ["Hi"])
    common = ["eval", "policy", "--prompts", prompts, "--feedback-backend", "scripted"]
    r = cai_known(*common, "--model", "a", "--baseline", "b", "--model-backend", "nope")
    assert r.returncode == 2 and r.stderr.startswith("--model-backend: unknown backend 'nope'")
    r = cai_known(*common, "--model", tmp_path / "missing.yaml", "--baseline", "b", "--model-backend", "scripted")
    assert r.returncode == 2 and r.stderr.strip() == f"--model: {tmp_path / 'missing.yaml'}: file not found"
    (tmp_path / "bad.yaml").write_text("backend: nope\nmodel: x\n")
    r = cai_known(*common, "--model", tmp_path / "bad.yaml", "--baseline", "b", "--model-backend", "scripted")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "unknown backend 'nope'" in r.stderr


def test_the_report_shows_intervals_tests_and_failures(tmp_path):
    config = setup(tmp_path)
    run = tmp_path / "run"
    r = cai_known("run", config, "--out", run)
    assert r.returncode == 0, r.stderr
    prompts = lines(tmp_path / "p.txt", ["Plan a picnic", "Name a river"])
    benign = lines(tmp_path / "b.txt", ["Hello there", "Suggest a film"])
    run_json(
        "eval", "policy", "--model", "a", "--baseline", known(tmp_path, "refuses"), "--model-backend", "scripted",
        "--feedback-backend", "reads-refusals", "--prompts", prompts, "--benign", benign,
        "--out-json", run / "eval-policy.json",
    )  # fmt: skip
    run_json(
        "eval", "frontier", "--models", "a", known(tmp_path, "refuses"), "--model-backend", "scripted",
        "--feedback-backend", "reads-refusals", "--red-team", prompts, "--benign", benign, "--principles", "1",
        "--out-json", run / "eval-frontier.json",
    )  # fmt: skip
    r = cai_known("report", run)
    assert r.returncode == 0, r.stderr
    page = (run / "report.html").read_text()
    assert "1.000 [0.342, 1.000]" in page  # the refusing policy's over-refusal on 2 prompts, with its interval
    assert "(mcnemar, p=0.5): no significant difference" in page
    assert "failed (model)" in page and "0 answers, 0 readings" in page
    assert 'class="frontier"' in page and "0.500 (reference)" in page


def test_harmful_compliance_is_a_mean_p_meets_the_constitution_below_one_half():
    assert harmful([[0.2, None, 0.7], []]) == [[1.0, None, 0.0], []]
