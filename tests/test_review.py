"""`cai review RUN`: the sample, the review file, the agreement with the run's own labels, and the
page itself in a real headless Chromium, driven by the keyboard, its server killed and started again.

The runs are real runs on the scripted backend (seconds); the page test's run answers in plain
sentences so that the README's screenshot reads as a review would: REVIEW_SCREENSHOT=docs/review.png.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx
import pytest
from rich.console import Console
from starlette.testclient import TestClient

from cai.config import load_config
from cai.core.errors import UserError
from cai.critique.records import Comparison, Judgement
from cai.evaluation.reviews import PersonVerdict, confidence_bin, review_agreement
from cai.evaluation.stats import bootstrap, wilson
from cai.generators import register_backend
from cai.generators.types import Completion
from cai.pipeline import Pipeline
from cai.review import PairKey, ReviewFile, draw_sample, standing
from cai.stages import NAMES, OTHER_RECORD_FILES
from cai.studio.review import ReviewSession, guarded_review
from tests.cli import cai
from tests.test_studio import _wait, browser  # noqa: F401 - the page test's headless Chromium
from tests.testing_utils import CONSTITUTION, ScriptedBackend, _h, records, setup

PORT = 8124
TOKEN = "t0ken-for-review-tests"


def build(folder: Path, config: str | None = None, name: str = "R", **extra: str) -> Path:
    """A finished run on the scripted backend, made in this process; returns its directory."""
    cfg = setup(folder, config, **extra) if config else setup(folder, **extra)
    out = folder / name
    pipe = Pipeline(load_config(cfg), out, console=Console(file=io.StringIO()))
    try:
        pipe.start()
        pipe.run()
    finally:
        pipe.close()
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("review"))


@pytest.fixture
def run(built, tmp_path) -> Path:
    """A fresh copy of the finished run for each test: reviews are written into it."""
    return Path(shutil.copytree(built, tmp_path / "R"))


def stage_bytes(run: Path) -> dict[str, bytes]:
    """Every file of the run but the review's own: what reviewing must leave as it was."""
    mine = {"reviews.jsonl", "review-agreement.json"}
    return {
        str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file() and p.name not in mine
    }


# ---------------------------------------------------------------------------------------------
# The sample


def keys(spec: dict[tuple[str, float], int]) -> list[PairKey]:
    """`n` pairs per (principle, p_chosen)."""
    out = []
    for (principle, p), n in spec.items():
        out += [PairKey(f"{principle}-{p}-{i}", (principle,), p) for i in range(n)]
    return out


def test_the_sample_covers_every_stratum_first_then_follows_their_sizes():
    pairs = keys({("a", 0.55): 60, ("a", 0.95): 4, ("b", 0.55): 30, ("b", 0.75): 6})
    order = draw_sample(pairs, seed=3)
    assert sorted(order) == sorted(p.id for p in pairs), "every pair once"
    by_id = {p.id: (p.principles[0], confidence_bin(p.p_chosen)) for p in pairs}
    assert {by_id[pid] for pid in order[:4]} == set(by_id.values()), "each stratum before any gets a second"
    first50 = Counter(by_id[pid] for pid in order[:50])
    for stratum, size in Counter(by_id.values()).items():
        assert abs(first50[stratum] - 50 * size / len(pairs)) <= 1.5, (stratum, first50)

    assert draw_sample(pairs, seed=3, size=10) == order[:10], "a larger sample starts with the same pairs"
    assert draw_sample(list(reversed(pairs)), seed=3) == order, "fixed by the seed, not by the file's order"
    assert draw_sample(pairs, seed=4) != order


def test_a_pair_under_several_principles_counts_for_each():
    """Thirty pairs ranked under a, b and c together, thirty under d alone: four strata of thirty, so
    a sample in proportion takes as many joint pairs as d's (each joint one counts for a, b and c).
    Counted for one stratum only, the joint pairs would take three picks in four."""
    joint = [PairKey(f"abc-{i}", ("a", "b", "c"), 0.55) for i in range(30)]
    alone = [PairKey(f"d-{i}", ("d",), 0.55) for i in range(30)]
    for seed in range(5):
        first = draw_sample(joint + alone, seed=seed, size=20)
        assert abs(sum(pid.startswith("abc-") for pid in first) - 10) <= 1, (seed, first)


def test_the_session_shows_the_runs_sample_blind(run):
    s = ReviewSession(run, "ann", size=30)
    pairs = {c["id"]: c for c in records(run, "comparisons")}
    assert len(s.sample) == 30 and set(s.sample) <= set(pairs)
    strata = {(p, confidence_bin(c["p_chosen"])) for c in pairs.values() for p in c["principle_ids"]}
    covered = {(p, confidence_bin(pairs[pid]["p_chosen"])) for pid in s.sample for p in pairs[pid]["principle_ids"]}
    assert covered == strata, "every principle and confidence the run has is in the sample"
    assert ReviewSession(run, "bob", size=30).sample == s.sample, "the same sample for the run, whoever reviews"

    item = s.state()["item"]
    c = pairs[item["pair_id"]]
    answers = {r["id"]: r["text"] for r in records(run, "responses")} | {
        v["id"]: v["final"] for v in records(run, "revisions")
    }
    assert {item["left"], item["right"]} == {answers[c["first_id"]], answers[c["second_id"]]}
    shown = json.dumps(item)
    for leak in ("p_chosen", c["chosen_id"], c["first_id"], c["kind"]):
        assert leak not in shown, f"the page is shown {leak!r}"
    assert [p["id"] for p in item["principles"]] == c["principle_ids"]
    assert all(p["question"] for p in item["principles"])
    sides = Counter(s.shown(pid)[0] == pairs[pid]["chosen_id"] for pid in s.sample)
    assert sides[True] and sides[False], "the AI's choice is shown on either side"


# ---------------------------------------------------------------------------------------------
# The review file


def test_verdicts_resume_per_reviewer_undo_and_never_touch_the_stage_files(run, built):
    before = stage_bytes(run)
    s = ReviewSession(run, "ann", size=10)
    first = s.current()
    left, right = s.shown(first)
    s.decide(first, "left")
    second = s.current()
    s.decide(second, "cant_tell")
    third = s.current()
    s.decide(third, "right")
    with pytest.raises(Exception, match="not the one up for review"):
        s.decide(first, "right")  # a second tab, a key held down: refused, nothing written
    assert s.state()["done"] == 3 and s.state()["cant_tell"] == 1
    s.undo()
    assert s.current() == third

    again = ReviewSession(run, "ann", size=10)
    assert again.current() == third and again.state()["done"] == 2
    assert ReviewSession(run, "bob", size=10).current() == first, "another reviewer starts at the start"

    rows = [json.loads(line) for line in (run / "reviews.jsonl").read_text().splitlines()]
    assert [r["verdict"] for r in rows] == ["preferred", "cant_tell", "preferred", "undone"]
    assert rows[0]["preferred_id"] == left and rows[0]["shown"] == [left, right], "by answer id, sides recorded"
    assert rows[1]["preferred_id"] is None and rows[3]["pair_id"] == third
    assert {r["reviewer"] for r in rows} == {"ann"} and all(r["time"][-6] in "+-" for r in rows)
    assert stage_bytes(run) == before
    written = {p.name.split(".")[0] for p in run.glob("*.jsonl")}
    assert written <= set(NAMES) | set(OTHER_RECORD_FILES)

    # A rerun of the run beside its reviews: nothing to do, nothing of the reviews touched.
    reviews = (run / "reviews.jsonl").read_bytes()
    pipe = Pipeline(load_config(built.parent / "run.yaml"), run, console=Console(file=io.StringIO()))
    try:
        pipe.start()
        pipe.run()
    finally:
        pipe.close()
    assert all(st.new == 0 for st in pipe.stats)
    assert (run / "reviews.jsonl").read_bytes() == reviews


def test_a_torn_last_line_is_cut_by_the_page_and_left_by_a_reader(run):
    s = ReviewSession(run, "ann", size=10)
    s.decide(s.current(), "left")
    up = s.current()
    path = run / "reviews.jsonl"
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"pair_id": "c-torn", "verd')  # killed mid-write

    assert len(ReviewFile(run, writer=False).read()) == 1
    assert path.read_bytes().endswith(b'"verd'), "a reader leaves a line a live page may be writing"
    again = ReviewSession(run, "ann", size=10)
    assert path.read_bytes() == whole, "the page's writer cuts the torn line"
    assert again.current() == up
    again.decide(up, "right")
    assert [json.loads(line)["pair_id"] for line in path.read_text().splitlines()][1] == up

    path.write_bytes(whole + b'{"pair_id": "x"}\n' + whole)
    with pytest.raises(UserError, match=r"reviews.jsonl:2: not a review \(verdict: Field required\)"):
        ReviewSession(run, "ann", size=10)


# ---------------------------------------------------------------------------------------------
# Agreement


def comparison(cid: str, principles: list[str], p_chosen: float, chosen_first: bool = True, own=None) -> Comparison:
    """A ranked pair of answers `{cid}-1` and `{cid}-2`; `own`: per principle, its P(first) in both orders."""
    first, second = f"{cid}-1", f"{cid}-2"
    js = [
        Judgement(
            principle_id=p, order=o, logp={}, p_first=(own or {}).get(p, p_chosen if chosen_first else 1 - p_chosen)
        )
        for p in principles
        for o in ("ab", "ba")
    ]
    chosen, rejected = (first, second) if chosen_first else (second, first)
    p_first = p_chosen if chosen_first else 1 - p_chosen
    return Comparison(
        id=cid,
        query_id="q",
        first_id=first,
        second_id=second,
        kind="samples",
        method="logprob",
        principle_ids=principles,
        judgements=js,
        p_first=p_first,
        chosen_id=chosen,
        rejected_id=rejected,
        p_chosen=p_chosen,
        order_consistent=True,
    )


def test_agreement_counts_cant_tell_apart_per_principle_and_confidence():
    pairs = {
        "a": comparison("a", ["kind"], 0.95),
        "b": comparison("b", ["kind", "honest"], 0.55, chosen_first=False, own={"honest": 0.8}),
        "c": comparison("c", ["honest"], 0.65),
        "d": comparison("d", ["kind"], 0.58),
        "e": comparison("e", ["honest"], 0.91),
    }
    verdicts = [
        PersonVerdict("a", "ann", "a-1"),  # agrees
        PersonVerdict("b", "ann", "b-1"),  # the label is b-2: disagrees; honest's own reading (0.8 first) agrees
        PersonVerdict("c", "ann", None),  # can't tell
        PersonVerdict("d", "ann", "d-1"),  # agrees
        PersonVerdict("e", "ann", "e-2"),  # disagrees
        PersonVerdict("gone", "ann", "gone-1"),  # a pair moved aside since
    ]
    r = review_agreement(pairs, verdicts)
    assert r["rates"]["agreement"] == wilson(2, 4).to_json()
    assert r["rates"]["cant_tell"] == wilson(1, 5).to_json()
    assert (r["reviews"], r["not_in_run"], r["cant_tell"], r["pairs_reviewed"]) == (6, 1, 1, 5)
    assert r["rates"]["between_reviewers"] is None
    kind, honest = r["by_principle"]["kind"], r["by_principle"]["honest"]
    assert (kind["reviews"], kind["cant_tell"], kind["agreement"]) == (3, 0, wilson(2, 3).to_json())
    assert (honest["reviews"], honest["cant_tell"], honest["agreement"]) == (3, 1, wilson(0, 2).to_json())
    assert honest["own_reading"] == wilson(1, 2).to_json()
    bins = {row["bin"]: row for row in r["by_confidence"]}
    assert bins["0.50-0.60"]["agreement"] == wilson(1, 2).to_json() and bins["0.50-0.60"]["reviews"] == 2
    assert bins["0.60-0.70"]["cant_tell"] == 1 and bins["0.60-0.70"]["agreement"]["n"] == 0
    assert bins["0.90-1.00"]["agreement"] == wilson(1, 2).to_json()
    assert bins["0.90-1.00"]["mean_p_chosen"] == pytest.approx(0.93)

    # Two people on one pair are not two independent pairs: a bootstrap over pairs.
    two = review_agreement(pairs, [*verdicts[:2], PersonVerdict("a", "bob", "a-2"), PersonVerdict("b", "bob", "b-1")])
    assert two["rates"]["agreement"] == bootstrap([[1.0, 0.0], [0.0, 0.0]]).to_json()
    assert two["rates"]["between_reviewers"] == wilson(1, 2).to_json()
    assert two["reviewers"] == {"ann": 2, "bob": 2}


def test_eval_labeler_on_a_run_reports_its_reviews_and_the_report_shows_them(run):
    r = cai("eval", "labeler", "--pairs", run, timeout=300)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "no reviews.jsonl yet" in r.stderr and "cai review" in r.stderr

    s = ReviewSession(run, "ann", size=12)
    choices = ["left", "right", "cant_tell", "left", "right", "left", "left", "cant_tell"]
    for choice in choices:
        s.decide(s.current(), choice)
    pairs = {c["id"]: c for c in records(run, "comparisons")}
    mine = [rv for rv in standing(ReviewFile(run).read()).values()]
    agree = sum(pairs[rv.pair_id]["chosen_id"] == rv.preferred_id for rv in mine if rv.preferred_id)

    before = stage_bytes(run)
    r = cai("eval", "labeler", "--pairs", run, "--json", timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["kind"] == "reviews" and out["reviews"] == 8 and out["cant_tell"] == 2
    assert out["rates"]["agreement"] == wilson(agree, 6).to_json()
    assert sum(v["reviews"] for v in out["by_confidence"]) == 8
    assert json.loads((run / "review-agreement.json").read_text())["rates"] == out["rates"]
    assert stage_bytes(run) == before

    r = cai("eval", "labeler", "--pairs", run, timeout=300)
    assert r.returncode == 0 and "AI labels against people" in r.stdout and "per principle" in r.stdout

    r = cai("report", run, timeout=300)
    assert r.returncode == 0, r.stderr
    html = (run / "report.html").read_text()
    section = html[html.index('<section id="reviews">') :].split("</section>")[0]
    assert wilson(agree, 6).__str__().split(" n=")[0] in section and "ann (8)" in section
    assert "verdicts stand now" not in section
    s.undo()
    cai("report", run, timeout=300)
    assert "7 verdicts stand now" in (run / "report.html").read_text()


# ---------------------------------------------------------------------------------------------
# The server: the studio's token rules


def test_the_review_server_answers_only_with_its_token(run):
    s = ReviewSession(run, "ann", size=5)
    app = guarded_review(s, "127.0.0.1", PORT, TOKEN)
    bare = TestClient(app, base_url=f"http://127.0.0.1:{PORT}")
    for path in ("/", "/api/review", "/static/review.js"):
        assert bare.get(path).status_code == 401
    up = s.current()
    assert bare.post("/api/review/verdict", json={"pair_id": up, "choice": "left"}).status_code == 401
    assert bare.get("/api/review", headers={"x-studio-token": "wrong"}).status_code == 403
    assert not (run / "reviews.jsonl").exists() or not (run / "reviews.jsonl").read_text()

    page = bare.get("/", params={"token": TOKEN})
    assert page.status_code == 200 and "review.js" in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    c = TestClient(app, base_url=f"http://127.0.0.1:{PORT}", headers={"x-studio-token": TOKEN})
    r = c.post(
        "/api/review/verdict", content=b"pair_id=x", headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert r.status_code == 415
    r = c.post("/api/review/verdict", json={"pair_id": up, "choice": "up"})
    assert r.status_code == 422 and r.json()["error"].startswith("choice:")
    r = c.post("/api/review/verdict", json={"pair_id": up, "choice": "right"})
    assert r.status_code == 200 and r.json()["done"] == 1
    assert c.post("/api/review/verdict", json={"pair_id": up, "choice": "right"}).status_code == 409
    assert c.post("/api/review/undo", json={}).json()["item"]["pair_id"] == up
    assert c.post("/api/review/undo", json={}).status_code == 409
    for _ in range(5):
        state = c.post("/api/review/verdict", json={"pair_id": s.current(), "choice": "cant_tell"}).json()
    assert state["item"] is None and state["done"] == state["size"] == 5 and state["cant_tell"] == 5


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["{tmp}/nowhere"], "not a run directory"),
        (["{run}", "--reviewer", " "], "--reviewer: expected a name"),
        (["{empty}"], "no ranked pairs to review"),
    ],
)
def test_cli_mistakes_are_one_line(run, tmp_path, args, expect):
    empty = tmp_path / "E"
    empty.mkdir()
    shutil.copy(run / "config.yaml", empty)
    shutil.copy(run / "constitution.yaml", empty)
    args = [a.format(tmp=tmp_path, run=run, empty=empty) for a in args]
    r = cai("review", *args, "--no-open", "--port", "0", timeout=120)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert expect in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


# ---------------------------------------------------------------------------------------------
# The page in a real browser: five pairs by keyboard, the server killed, the place found again

READABLE = [
    "I'm sorry you're going through this.",
    "Be honest but kind: say what you noticed and why it matters to you.",
    "I wouldn't do that; it could hurt them and the trust between you.",
    "Start by asking how they feel, and listen before you answer.",
    "A short, sincere message is usually better than a long one.",
    "Check the facts first, so you don't act on a guess.",
    "You could thank them for the thought and ask if an exchange is possible.",
    "Talk to them calmly, at a moment when neither of you is rushed.",
    "If it keeps happening, write down when, and ask for help from someone you both trust.",
    "It is your choice, but think about how you would feel in their place.",
]
SEEDS = "\n".join(
    [
        "What should I say to a grieving friend?",
        "How do I return a gift politely?",
        "Can I read my partner's texts?",
        "How do I tell my friend their cooking is bad?",
        "My neighbour's dog barks all night. What can I do?",
        "How can I apologise to a colleague I snapped at?",
    ]
)
PLAIN_CONFIG = """\
constitution: tiny.yaml
seed: 5
policy: {backend: readable}
queries: {per_principle: 0, seed_file: seeds.txt}
responses: {samples: 4}
revisions: {rounds: 0}
comparisons: {principles: 2, pairs: all}
"""


class Readable(ScriptedBackend):
    """The scripted backend, answering in plain sentences (two of `READABLE`, picked by hash)."""

    def generate(self, chats, params, seeds=None):
        out = []
        for i, chat in enumerate(chats):
            seed = seeds[i] if seeds is not None else params.seed
            comps = []
            for j in range(params.n):
                h = _h(json.dumps(chat), seed, j)
                a, b = READABLE[h % len(READABLE)], READABLE[(h >> 8) % len(READABLE)]
                text = a if a == b else f"{a} {b}"
                comps.append(Completion(text=text, tokens=len(text.split()), finish_reason="stop"))
            out.append(comps)
        return out


register_backend("readable", Readable)
SCREENSHOT = os.environ.get("REVIEW_SCREENSHOT")


def _serve(run: Path, *args) -> tuple[subprocess.Popen, str]:
    """`cai review RUN ARGS` in the background, from the run's folder as a user would start it; its
    printed URL (with its token) once it listens."""
    p = subprocess.Popen(
        [sys.executable, "-m", "cai.cli", "review", run.name, "--no-open", "--port", "0", *args],
        cwd=run.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    line = p.stdout.readline()
    if " at http" not in line:
        p.kill()
        raise AssertionError(f"cai review printed {line!r}: {p.communicate(timeout=30)[1]}")
    return p, line.split(" at ", 1)[1].split()[0]


def _page(d) -> dict:
    return d.execute_script(
        "const p = document.querySelector('#pair'), g = document.querySelector('#progress');"
        "return {pair: p.hidden ? null : p.dataset.pairId, done: +g.dataset.done, size: +g.dataset.size,"
        " left: document.querySelector('#left .text').textContent,"
        " right: document.querySelector('#right .text').textContent,"
        " position: document.querySelector('#position').textContent}"
    )


def test_the_page_reviews_five_pairs_by_keyboard_and_finds_its_place_after_a_kill(browser, tmp_path):  # noqa: F811
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    run = build(tmp_path, PLAIN_CONFIG, "tiny-run", **{"seeds.txt": SEEDS, "tiny.yaml": CONSTITUTION})
    before = stage_bytes(run)
    p, url = _serve(run, "--reviewer", "tester", "--sample", "20")
    d = browser
    try:
        d.get(url)
        _wait(d, "the first pair", lambda d: _page(d)["pair"])
        assert "token" not in d.current_url and d.find_element("id", "run").text == "tiny-run"
        assert _page(d)["size"] == 20 and _page(d)["position"] == "Pair 1 of 20"
        said = {}  # pair → the text of the answer the keys said was better (None: can't tell)
        last = None
        for key, side in (
            (Keys.ARROW_LEFT, "left"),
            ("2", "right"),
            (Keys.SPACE, None),
            (Keys.ARROW_RIGHT, "right"),
            ("u", "undo"),
            ("1", "left"),
            ("0", None),
        ):
            shown = _page(d)
            ActionChains(d).send_keys(key).perform()
            _wait(d, f"the page to take {key!r}", lambda d, was=shown["done"]: _page(d)["done"] != was)
            if side == "undo":
                assert _page(d)["pair"] == last and _page(d)["done"] == shown["done"] - 1
                del said[last]
            else:
                said[shown["pair"]] = shown[side] if side else None
                last = shown["pair"]
        assert _page(d)["done"] == 5 and len(said) == 5
        up = _page(d)["pair"]
    finally:
        p.kill()  # no goodbye: the verdicts are on disk or nowhere
        p.wait(30)

    p, url = _serve(run, "--reviewer", "tester", "--sample", "20")
    try:
        d.get(url)
        _wait(d, "the page after the restart", lambda d: _page(d)["pair"])
        assert _page(d)["pair"] == up and _page(d)["done"] == 5 and _page(d)["position"] == "Pair 6 of 20"
        assert "2 can't tell" in d.find_element("id", "progress").text
        old = url.split("/?token=")[0]
        assert httpx.get(f"{old}/api/review", headers={"x-studio-token": "stale-token"}).status_code == 403
        shot = Path(SCREENSHOT) if SCREENSHOT else tmp_path / "review.png"
        assert d.save_screenshot(str(shot)) and shot.read_bytes().startswith(b"\x89PNG")
    finally:
        p.terminate()
        p.wait(30)

    texts = {r["id"]: r["text"] for r in records(run, "responses")}
    verdicts = {rv.pair_id: rv for rv in standing(ReviewFile(run).read()).values()}
    assert set(verdicts) == set(said) and {rv.reviewer for rv in verdicts.values()} == {"tester"}
    for pid, text in said.items():
        rv = verdicts[pid]
        assert (rv.preferred_id and texts[rv.preferred_id]) == text, (
            "the answer preferred, by id, is the one on that side"
        )
    assert stage_bytes(run) == before

    pairs = {c["id"]: c for c in records(run, "comparisons")}
    agree = sum(pairs[pid]["chosen_id"] == rv.preferred_id for pid, rv in verdicts.items() if rv.preferred_id)
    r = cai("eval", "labeler", "--pairs", run, "--json", timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["reviews"], out["cant_tell"], out["reviewers"]) == (5, 2, {"tester": 5})
    assert out["rates"]["agreement"] == wilson(agree, 3).to_json()
