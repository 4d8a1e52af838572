"""`cai studio`: the HTTP side against a real app (no model), the command line as a subprocess,
and the page itself in a real headless Chromium driving the embedded model (slow)."""

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from cai.constitution import library_path
from cai.constitution.lint import lint_file
from cai.core.files import MAX_FILE_BYTES
from cai.generators import BackendConfig, Completion, register_backend
from cai.studio.app import Studio, guarded
from cai.studio.document import edit
from cai.studio.guard import cookie_name
from cai.studio.jobs import available
from cai.studio.models import Models
from tests.cli import cai
from tests.judges import FollowsWording
from tests.test_hostile_files import HOSTILE, MALFORMED
from tests.testing_utils import CHROMIUM

PORT = 8123
BASE = f"http://127.0.0.1:{PORT}"
TOKEN = "t0ken-for-tests"


@pytest.fixture
def rules(tmp_path) -> Path:
    f = tmp_path / "rules.yaml"
    shutil.copy(library_path("harmless"), f)
    return f


def client(file: Path, host: str = "127.0.0.1", send_token: bool = True) -> TestClient:
    """The app as the server runs it; the page's calls carry the token (a header here, a cookie in a browser)."""
    studio = Studio(file=file, host=host, port=PORT, token=TOKEN)
    headers = {"x-studio-token": TOKEN} if send_token else None
    return TestClient(guarded(studio), base_url=f"http://{host}:{PORT}", headers=headers)


def loaded(c: TestClient, path: str | None = None) -> dict:
    r = c.get("/api/doc", params={"path": path} if path else None)
    assert r.status_code == 200, r.text
    return r.json()


# ---------------------------------------------------------------------------------------------
# Lint, principles, diff


def test_lint_of_unsaved_text_matches_cai_constitution_lint(rules):
    c = client(rules)
    doc = loaded(c)
    assert doc["check"]["ok"] and doc["base"]
    assert [p["id"] for p in doc["check"]["principles"]][:2] == ["general-harm", "illegal-activity"]
    lines = doc["text"].splitlines()
    assert lines[doc["check"]["principles"][0]["line"] - 1].strip() == "- id: general-harm"

    broken = doc["text"].replace("    weight: 2.0\n", "    weight: 2.0\n    colour: blue\n", 1)
    broken = broken.replace("name: harmless", "name: harmless\nname: again")
    check = c.post("/api/lint", json={"text": broken}).json()
    rules.write_text(broken)  # what `cai constitution lint` says of the same text
    r = cai("constitution", "lint", str(rules))
    assert r.returncode == 2
    assert [e["text"] for e in check["errors"]] == [
        x.replace(str(rules), "rules.yaml") for x in r.stderr.split("\n") if x
    ]
    assert {e["line"] for e in check["errors"]} == {5, broken.splitlines().index("    colour: blue") + 1}

    bad_yaml = c.post("/api/lint", json={"text": "name: x\nprinciples:\n  - id: [a\n"}).json()
    assert not bad_yaml["ok"] and bad_yaml["errors"][0]["message"].startswith("invalid YAML")


def test_diff_against_disk_in_meaning_and_lines(rules):
    c = client(rules)
    text = loaded(c)["text"].replace("id: honesty", "id: truthfulness").replace("weight: 0.75", "weight: 3")
    d = c.post("/api/diff", json={"text": text}).json()
    kinds = {(ch["kind"], ch["id"]) for ch in d["changes"]}
    assert ("renamed", "truthfulness") in kinds and ("changed", "toxicity") in kinds
    assert "-  - id: honesty" in d["lines"] and "+  - id: truthfulness" in d["lines"]
    broken = c.post("/api/diff", json={"text": "name: [x"}).json()
    assert broken["changes"] is None and "does not validate" in broken["note"] and broken["lines"]


# ---------------------------------------------------------------------------------------------
# Structured edits keep comments and key order


def test_principle_list_edits_keep_comments_and_order(rules):
    text = rules.read_text()
    out = edit(text, "rules.yaml", False, "weight", "honesty", 2.5)
    changed = [(a, b) for a, b in zip(text.splitlines(), out.splitlines()) if a != b]
    assert changed == [("    weight: 1.0", "    weight: 2.5")]
    assert len(out.splitlines()) == len(text.splitlines())

    added = edit(text, "rules.yaml", False, "add")
    assert added.startswith(text.split("\n", 1)[0]) and "id: new-principle-1" in added
    assert lint_file_text(added, rules)
    moved = edit(text, "rules.yaml", False, "up", "illegal-activity")
    assert moved.index("id: illegal-activity") < moved.index("id: general-harm")
    assert "# Harmlessness principles" in moved and moved.count("#") == text.count("#")
    gone = edit(text, "rules.yaml", False, "remove", "honesty")
    assert "id: honesty" not in gone and gone.count("- id:") == text.count("- id:") - 1

    js = json.dumps({"version": "1", "name": "j", "principles": [{"id": "a", "comparison": "Which?"}]}, indent=2)
    out = json.loads(edit(js, "j.json", True, "weight", "a", 2.0))
    assert list(out) == ["version", "name", "principles"] and out["principles"][0]["weight"] == 2.0


def lint_file_text(text: str, like: Path) -> bool:
    f = like.with_name("check-" + like.name)
    f.write_text(text)
    lint_file(f)
    return True


def test_edit_refuses_bad_requests(rules):
    c = client(rules)
    text = rules.read_text()
    r = c.post("/api/edit", json={"text": text, "op": "remove", "id": "nope"})
    assert r.status_code == 404 and "nope" in r.json()["error"]
    r = c.post("/api/edit", json={"text": "name: [x", "op": "add"})
    assert r.status_code == 422 and "rules.yaml:1" in r.json()["error"]
    r = c.post("/api/edit", json={"text": text, "op": "explode"})
    assert r.status_code == 422 and r.json()["error"].startswith("op:")


# ---------------------------------------------------------------------------------------------
# Saving


def test_save_writes_atomically_and_refuses_a_stale_file(rules):
    c = client(rules)
    doc = loaded(c)
    text = doc["text"].replace("name: harmless", "name: harmless-edited")
    r = c.post("/api/save", json={"text": text, "base": doc["base"]})
    assert r.status_code == 200, r.text
    assert rules.read_text() == text and r.json()["check"]["ok"]
    assert not [p for p in rules.parent.iterdir() if p.name.endswith(".tmp")]
    assert lint_file(rules)[0].name == "harmless-edited"

    # Changed on disk since the page loaded it: refused, the other writer's version kept.
    rules.write_text(text + "# edited elsewhere\n")
    r = c.post("/api/save", json={"text": text.replace("edited", "mine"), "base": r.json()["base"]})
    assert r.status_code == 409 and "changed on disk since it was loaded" in r.json()["error"]
    assert rules.read_text().endswith("# edited elsewhere\n")

    # A text that does not validate is not written.
    fresh = loaded(c)
    r = c.post("/api/save", json={"text": "name: [x", "base": fresh["base"]})
    assert r.status_code == 422 and "rules.yaml:1: invalid YAML" in r.json()["error"]
    assert rules.read_text() == fresh["text"]

    # A new file in the folder: base "" means "must not exist yet".
    r = c.post("/api/save", json={"path": "new.yaml", "text": text, "base": ""})
    assert r.status_code == 200 and (rules.parent / "new.yaml").read_text() == text
    r = c.post("/api/save", json={"path": "new.yaml", "text": text, "base": ""})
    assert r.status_code == 409 and "was created" in r.json()["error"]
    r = c.post("/api/save", json={"path": "no/such/new.yaml", "text": text, "base": ""})
    assert r.status_code == 400 and "folder does not exist" in r.json()["error"]


def test_save_keeps_the_file_mode_and_windows_newlines(rules):
    rules.write_bytes(rules.read_bytes().replace(b"\n", b"\r\n"))
    rules.chmod(0o640)
    c = client(rules)
    doc = loaded(c)
    assert "\r" not in doc["text"]
    r = c.post("/api/save", json={"text": doc["text"] + "# more\n", "base": doc["base"]})
    assert r.status_code == 200
    assert rules.read_bytes().endswith(b"# more\r\n") and b"\n" not in rules.read_bytes().replace(b"\r\n", b"")
    assert rules.stat().st_mode & 0o777 == 0o640


# ---------------------------------------------------------------------------------------------
# Bad input: clear 4xx, nothing written


def test_paths_outside_the_folder_are_refused(rules, tmp_path):
    outside = tmp_path.parent / f"{tmp_path.name}-outside.yaml"
    outside.write_text("name: x\n")
    (rules.parent / "link.yaml").symlink_to(outside)
    c = client(rules)
    text = rules.read_text()
    for path in ("../" + outside.name, str(outside), "link.yaml", "sub/../../" + outside.name):
        r = c.post("/api/save", json={"path": path, "text": text, "base": ""})
        assert r.status_code == 403 and "outside" in r.json()["error"], (path, r.text)
        assert c.get("/api/doc", params={"path": path}).status_code == 403
    assert outside.read_text() == "name: x\n"
    r = c.post("/api/save", json={"path": "notes.txt", "text": text, "base": ""})
    assert r.status_code == 400 and "not a principle file" in r.json()["error"]
    assert not (rules.parent / "notes.txt").exists()


def test_malformed_and_oversized_requests(rules):
    c = client(rules)
    before = rules.read_bytes()
    base = loaded(c)["base"]
    r = c.post("/api/save", content=b'{"text": "name', headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json() == {"error": "request body is not valid JSON"}
    r = c.post("/api/save", json={"text": "x"})
    assert r.status_code == 422 and r.json()["error"] == "base: Field required"
    r = c.post("/api/save", json={"text": "x", "base": base, "force": True})
    assert r.status_code == 422 and "force: Extra inputs are not permitted" in r.json()["error"]
    r = c.post("/api/save", content=b"text=x", headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415
    big = json.dumps({"text": "#" * (2 << 20), "base": base}).encode()
    r = c.post("/api/save", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "over" in r.json()["error"]

    def chunks():  # no Content-Length: the limit applies while the body streams in
        yield b'{"text": "'
        for _ in range(40):
            yield b"#" * 65536
        yield b'", "base": "' + base.encode() + b'"}'

    r = c.post("/api/save", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    r = c.post("/api/try", json={"text": rules.read_text()})
    assert r.status_code == 422 and r.json()["error"] == "message: Field required"
    r = c.post("/api/try", json={"text": rules.read_text(), "message": "hi"})
    assert r.status_code == 503  # this app was made without models
    r = c.post("/api/compare", json={"text": rules.read_text()})
    assert r.status_code == 409 and "--pairs" in r.json()["error"]
    assert rules.read_bytes() == before


def test_only_the_page_it_served_may_call_it(rules):
    c = client(rules)
    assert c.get("/api/info", headers={"host": "evil.example:8123"}).status_code == 403
    r = c.post("/api/lint", json={"text": "x"}, headers={"origin": "http://evil.example"})
    assert r.status_code == 403 and "cross-origin" in r.json()["error"]
    assert c.post("/api/lint", json={"text": "x"}, headers={"origin": BASE}).status_code == 200
    page = c.get("/")
    assert page.status_code == 200 and "/static/vendor/codemirror/codemirror.min.js" in page.text
    for asset in ("codemirror.min.js", "yaml.min.js", "lint.min.js", "codemirror.min.css", "LICENSE"):
        assert c.get(f"/static/vendor/codemirror/{asset}").status_code == 200
    assert "cdn" not in page.text.lower() and "https://" not in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    assert page.headers["referrer-policy"] == "no-referrer"


# Every request, loopback or not, every path: (method, path, JSON body)
REQUESTS = [
    ("GET", "/", None),
    ("GET", "/?file=secret.yaml", None),
    ("GET", "/api/info", None),
    ("GET", "/api/doc", None),
    ("GET", "/api/doc?path=secret.yaml", None),
    ("POST", "/api/lint", {"text": "name: x\n"}),
    ("POST", "/api/diff", {"text": "name: x\n"}),
    ("POST", "/api/edit", {"text": "name: x\n", "op": "add"}),
    ("POST", "/api/save", {"path": "made.yaml", "text": "name: x\n", "base": ""}),
    ("POST", "/api/save", {"path": "secret.yaml", "text": "name: mine\n", "base": ""}),
    ("POST", "/api/try", {"text": "name: x\n", "message": "hi"}),
    ("POST", "/api/compare", {"text": "name: x\n"}),
    ("GET", "/static/studio.js", None),
    ("GET", "/static/index.html", None),
    ("GET", "/static/vendor/codemirror/codemirror.min.js", None),
    ("GET", "/favicon.ico", None),
    ("GET", "/no/such/page", None),
]


def _ask(c: TestClient, method: str, path: str, body: dict | None, **kw):
    return c.request(method, path, json=body, **kw) if body is not None else c.request(method, path, **kw)


@pytest.mark.parametrize("host", ["127.0.0.1", "192.0.2.10"])
def test_no_request_is_answered_without_the_token(rules, host):
    secret = rules.with_name("secret.yaml")
    secret.write_text("name: private\nprinciples:\n  - id: p\n    comparison: Which is better?\n")
    secret.chmod(0o600)
    c = client(rules, host=host, send_token=False)
    wrong = [
        {"headers": {"x-studio-token": "wrong"}},
        {"params": {"token": TOKEN[:-1]}},
        {"headers": {"cookie": f"{cookie_name(PORT)}={TOKEN}x"}},
    ]
    for method, path, body in REQUESTS:
        for kw in ({}, {"headers": {"cookie": f"{cookie_name(PORT + 1)}={TOKEN}"}}):  # another studio's cookie
            r = _ask(c, method, path, body, **kw)
            assert r.status_code == 401, (method, path, r.status_code, r.text)
            assert "token" in r.json()["error"] and "private" not in r.text and "set-cookie" not in r.headers
        for kw in wrong:
            r = _ask(c, method, path, body, **kw)
            assert r.status_code == 403 and "wrong token" in r.json()["error"], (method, path, kw, r.text)
    assert secret.read_text().startswith("name: private") and not rules.with_name("made.yaml").exists()

    # The same requests with the token are answered as the page expects.
    ok = client(rules, host=host)
    assert ok.get("/api/doc", params={"path": "secret.yaml"}).json()["text"].startswith("name: private")
    assert ok.post("/api/lint", json={"text": secret.read_text()}).json()["ok"]
    assert ok.get("/static/studio.js").status_code == 200
    r = ok.post("/api/save", json={"path": "made.yaml", "text": secret.read_text(), "base": ""})
    assert r.status_code == 200 and rules.with_name("made.yaml").exists()


def test_the_printed_url_gives_the_page_a_cookie_it_then_uses(rules):
    c = client(rules, send_token=False)
    page = c.get("/", params={"token": TOKEN, "file": "rules.yaml"}, follow_redirects=False)
    assert page.status_code == 200 and "/static/studio.js" in page.text
    cookie = page.headers["set-cookie"]
    assert cookie.startswith(f"{cookie_name(PORT)}={TOKEN};")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    # From here on the browser sends only the cookie: the page, its files and its calls all work.
    for method, path, body in REQUESTS[:5] + [("POST", "/api/lint", {"text": "name: x\n"}), REQUESTS[12]]:
        assert _ask(c, method, path, body).status_code == 200, (method, path)
    assert "set-cookie" not in c.get("/").headers  # only a request carrying the token in its URL sets it
    c.cookies.clear()
    assert c.get("/api/info").status_code == 401
    assert c.get("/api/info", headers={"x-studio-token": TOKEN}).status_code == 200
    assert "set-cookie" not in c.get("/", params={"token": "wrong"}, headers={"x-studio-token": TOKEN}).headers


def test_hostile_files_get_a_4xx_from_the_studio_at_once(rules):
    """The files of tests/test_hostile_files.py, on disk and as the editor's text: each request is
    refused with the loader's located line (no 500, no hang: the client gives up after 10 s)."""
    folder = rules.parent
    for name, (text, _, _) in HOSTILE.items():
        (folder / name).write_text(text)
    with open(folder / "huge.yaml", "wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)
    with serving(Studio(file=rules), timeout=10) as http:
        for name, (text, line, says) in HOSTILE.items():
            requests = [
                ("GET", "/api/doc", {"params": {"path": name}}),
                ("POST", "/api/lint", {"json": {"path": name, "text": text}}),
                ("POST", "/api/edit", {"json": {"path": name, "text": text, "op": "add"}}),
                ("POST", "/api/save", {"json": {"path": name, "text": text, "base": ""}}),
                ("POST", "/api/try", {"json": {"path": name, "text": text, "message": "hi"}}),
            ]
            for method, url, kw in requests:
                r = http.request(method, url, **kw)
                assert r.status_code == 422, (name, url, r.status_code, r.text)
                error = r.json()["error"]
                assert f"{name}:{line}: " in error and says in error, (name, url, error)
        for name, (text, line, says) in MALFORMED.items():  # plain errors, at their lines
            check = http.post("/api/lint", json={"path": name, "text": text}).json()
            assert not check["ok"] and check["errors"][0]["line"] == line and says in check["errors"][0]["message"]
        r = http.get("/api/doc", params={"path": "huge.yaml"})
        assert r.status_code == 422 and f"{MAX_FILE_BYTES + 1} bytes, over the 8 MiB limit" in r.json()["error"]
        r = http.post("/api/diff", json={"path": "huge.yaml", "text": "name: x\n"})
        assert r.status_code == 422 and "over the 8 MiB limit" in r.json()["error"]
        assert http.get("/api/doc").status_code == 200  # and the studio goes on serving
    assert all((folder / name).read_text() == text for name, (text, _, _) in HOSTILE.items())


# ---------------------------------------------------------------------------------------------
# Model work: streamed, off the request thread (judges with known behaviour stand in for the
# model's judgement here; the page test below runs the embedded model)

BRIEF = "Which reply is shorter and more concise?"
DETAIL = "Which reply is longer and more detailed?"


class Held(FollowsWording):
    """Writes only once `release` is set, to hold the model thread while the page is used; its
    answer, critique and revision differ, so the revision is kept and ranked."""

    TEXTS = (
        "Just do it.",
        "The answer gives no reason.",
        "Do it carefully, because a rushed fix can fail on the road.",
    )

    def __init__(self):
        super().__init__()
        self.release, self.started = threading.Event(), threading.Event()
        self.calls = 0

    def generate(self, chats, params):
        self.started.set()
        assert self.release.wait(60)
        out = []
        for _ in chats:
            out.append([Completion(text=self.TEXTS[self.calls % 3], tokens=5)])
            self.calls += 1
        return out


@contextmanager
def serving(studio: Studio, timeout: float = 60):
    """The studio on a real uvicorn server in this process, on a free loopback port; the client
    carries the studio's token, as the page does."""
    import uvicorn

    from cai.studio.cli import bind

    sock = bind("127.0.0.1", 0)
    studio.port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(guarded(studio), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    headers = {"x-studio-token": studio.token}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{studio.port}", headers=headers, timeout=timeout) as http:
            yield http
    finally:
        server.should_exit = True
        thread.join(30)
        if studio.models is not None:
            studio.models.close()
        sock.close()


def events(http: httpx.Client, url: str, body: dict) -> list[dict]:
    with http.stream("POST", url, json=body) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        return [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]


def judged_studio(file: Path, backend, tmp_path: Path, pairs: Path | None = None) -> Studio:
    name = f"studio-test-{id(backend)}"
    register_backend(name, lambda model, **options: backend)
    models = Models(BackendConfig(backend=name, model=name), cache_dir=tmp_path / "cache")
    return Studio(file=file, pairs=pairs, models=models, jobs=available(max_new_tokens=16, limit=None))


def lengths_file(path: Path, brief: str) -> Path:
    path.write_text(
        f"name: lengths\nprinciples:\n  - id: brief\n    comparison: {brief}\n"
        "  - id: polite\n    comparison: Which reply is more polite?\n"
    )
    return path


def test_compare_with_saved_streams_flips_per_principle_and_moved_pairs(tmp_path):
    saved = lengths_file(tmp_path / "lengths.yaml", BRIEF)
    pairs = tmp_path / "pairs.jsonl"
    rows = [
        {"prompt": f"Question {i}?", "chosen": "Yes.", "rejected": f"Yes, and at length about {i}."} for i in range(4)
    ]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    studio = judged_studio(saved, FollowsWording(), tmp_path, pairs)
    with serving(studio) as http:
        edited = saved.read_text().replace(BRIEF, DETAIL)
        got = events(http, "/api/compare", {"text": edited})
        assert any(e["event"] == "status" and "pairs" in e["message"] for e in got)
        done = got[-1]
        assert done["event"] == "done", got
        assert (done["pairs"], done["flips"], done["flip_rate"]) == (4, 4, 1.0)
        rows = {r["id"]: r for r in done["principles"]}
        assert rows["brief"]["status"] == "edited" and rows["brief"]["flip_rate"] == 1.0
        assert rows["polite"]["status"] == "unchanged"
        assert len(done["moved"]) == 4 and all(m["flipped"] and m["p_old"] > 0.5 > m["p_new"] for m in done["moved"])
        assert done["moved"][0]["chosen"] == "Yes."
        assert saved.read_text().count(BRIEF) == 1  # comparing writes nothing
        bad = http.post("/api/compare", json={"text": "name: [x"})
        assert bad.status_code == 422 and "does not validate" in bad.json()["error"]


def test_a_held_try_streams_its_steps_and_never_blocks_the_page(rules, tmp_path):
    held = Held()
    studio = judged_studio(rules, held, tmp_path)
    text = rules.read_text()
    with serving(studio) as http:
        results: dict = {}
        body = {"text": text, "message": "How do I fix a flat tyre?", "principle": "general-harm"}
        first = threading.Thread(target=lambda: results.setdefault("first", events(http, "/api/try", body)))
        first.start()
        assert held.started.wait(60)
        t0 = time.monotonic()
        assert http.post("/api/lint", json={"text": text}).json()["ok"]  # the page works while the model is busy
        assert http.get("/api/doc").status_code == 200
        assert time.monotonic() - t0 < 10
        second = threading.Thread(target=lambda: results.setdefault("second", events(http, "/api/try", body)))
        second.start()
        time.sleep(1)
        held.release.set()
        first.join(60)
        second.join(60)
        r = http.post("/api/try", json={**body, "principle": "nope"})
        assert r.status_code == 422 and "nope" in r.json()["error"]
    steps = {e["event"]: e for e in results["first"] if e["event"] not in ("status", "text")}
    assert list(steps) == ["answer", "critique", "revision", "ranking", "done"], results["first"]
    written = [(e["step"], e["text"]) for e in results["first"] if e["event"] == "text"]  # as the model writes
    assert [step for step, _ in written] == ["answer", "critique", "revision"] and written[0][1] == Held.TEXTS[0]
    assert steps["answer"]["text"] == Held.TEXTS[0] and steps["critique"]["principle"] == "general-harm"
    assert steps["revision"]["kept"] and steps["done"]["seconds"] >= 0
    ranking = steps["ranking"]  # a question about harm, not length: this judge cannot tell
    assert ranking["p_revision"] == pytest.approx(0.5) and ranking["error"] is None
    assert sorted(r["revision_as"] for r in ranking["readings"]) == ["A", "B"]
    assert {r["principle"] for r in ranking["readings"]} == {"general-harm"}
    assert results["second"][0] == {"event": "status", "message": "waiting for the model (another job is running)"}
    assert results["second"][-1]["event"] == "done"


# ---------------------------------------------------------------------------------------------
# The command line


@pytest.mark.parametrize(
    "args, expect",
    [
        (["harmless"], "harmless: expected a .yaml, .yml, .json file; to edit the shipped one, copy"),
        (["{dir}"], "expected a .yaml"),
        (["{dir}/none/x.yaml"], "does not exist"),
        (["{rules}", "--pairs", "missing.jsonl"], "--pairs: missing.jsonl: file not found"),
        (["{rules}", "--feedback", "missing.yaml"], "--feedback: missing.yaml: file not found"),
        (["{rules}", "--host", "no-such-host.invalid"], "--host no-such-host.invalid: cannot resolve it"),
    ],
)
def test_cli_mistakes_are_one_line(rules, args, expect):
    args = [a.format(dir=rules.parent, rules=rules) for a in args]
    r = cai("studio", *args, "--no-open", timeout=120)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert expect in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def _own_addresses() -> list[str]:
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=10).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return []
    return [a for a in out if ":" not in a and not a.startswith("127.")]


def _start(*args, timeout: float = 120, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """`cai studio ARGS` in the background; its printed URL (with its token) once it listens."""
    p = subprocess.Popen(
        [sys.executable, "-m", "cai.cli", "studio", *map(str, args), "--no-open"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )
    deadline = time.monotonic() + timeout
    line = ""
    while time.monotonic() < deadline and " at http" not in line:
        line = p.stdout.readline()
        if not line and p.poll() is not None:
            raise AssertionError(f"cai studio exited {p.returncode}: {p.stderr.read()}")
    assert " at http" in line, line
    return p, line.split(" at ", 1)[1].split()[0]


def _stop(p: subprocess.Popen) -> None:
    p.terminate()
    try:
        p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()


def test_default_bind_is_loopback_only_and_a_busy_port_is_one_line(rules):
    p, url = _start(rules, "--port", "0")
    try:
        port = int(url.split("/?token=")[0].rsplit(":", 1)[1])
        assert url.startswith(f"http://127.0.0.1:{port}/?token=")
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            pass
        for addr in _own_addresses():  # this machine's own non-loopback addresses only
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((addr, port), timeout=10).close()
        r = cai("studio", rules, "--port", port, "--no-open", timeout=120)
        assert r.returncode == 2 and f"127.0.0.1:{port} is in use" in r.stderr
    finally:
        _stop(p)


def test_the_running_studio_refuses_local_requests_without_its_token(rules, tmp_path):
    """What another user of the machine could try against the port: nothing is answered, and the
    token is in no log (only in the URL on the terminal)."""
    rules.chmod(0o600)
    cache = tmp_path / "cache"
    p, url = _start(rules, "--port", "0", env={"XDG_CACHE_HOME": str(cache)})
    base, token = url.split("/?token=")
    assert len(token) >= 32
    try:
        with httpx.Client(base_url=base, timeout=30) as http:
            for path in ("/", "/api/info", "/api/doc", "/api/doc?path=rules.yaml", "/static/studio.js"):
                r = http.get(path)
                assert r.status_code == 401 and "token" in r.json()["error"], (path, r.text)
            r = http.post("/api/lint", json={"text": "name: x\n"})
            assert r.status_code == 401
            r = http.post("/api/save", json={"path": "new.yaml", "text": "name: x\n", "base": ""})
            assert r.status_code == 401 and not rules.with_name("new.yaml").exists()
            assert http.get("/api/doc", headers={"x-studio-token": token[::-1]}).status_code == 403

            page = http.get(url)  # the printed URL: the page, and a cookie for all the rest
            assert page.status_code == 200 and "studio.js" in page.text
            assert http.get("/api/doc").json()["text"] == rules.read_text()
            assert http.get("/static/studio.js").status_code == 200
        # A request the server logs (a malformed one), with the token in it.
        with socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])), timeout=10) as raw:
            raw.sendall(f"GET /?token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header\x01\r\n\r\n".encode())
            raw.recv(4096)
    finally:
        _stop(p)
    out, err = p.communicate(timeout=30)
    assert "Invalid HTTP request" in err and token not in err
    written = [f for f in (*cache.rglob("*"), *rules.parent.rglob("*")) if f.is_file() and f != rules]
    assert all(token not in f.read_text(errors="replace") for f in written), written
    assert rules.stat().st_mode & 0o777 == 0o600


# ---------------------------------------------------------------------------------------------
# The page in a real browser, with the embedded model

CHROMEDRIVER = shutil.which("chromedriver")
# The README's screenshot is taken here when asked for: STUDIO_SCREENSHOT=docs/studio.png
SCREENSHOT = os.environ.get("STUDIO_SCREENSHOT")


@pytest.fixture
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs Debian's chromium and chromium-driver (make setup installs them as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1440,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _wait(driver, what: str, condition, timeout: float = 60):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # The page redraws its tables as results arrive: an element found a moment before can be gone.
    waiting = WebDriverWait(driver, timeout, poll_frequency=0.2, ignored_exceptions=(StaleElementReferenceException,))
    try:
        return waiting.until(lambda d: condition(d))
    except Exception as e:
        notice = driver.execute_script("return document.querySelector('#notice').textContent")
        raise AssertionError(f"waited {timeout:.0f} s for {what}; the page says {notice!r}") from e


def _js(driver, script: str, *args):
    return driver.execute_script(script, *args)


def _type_at_end_of(driver, line: int, keys: str) -> None:
    """Put the cursor at the end of a line (1-based) and type, as a user would."""
    from selenium.webdriver.common.by import By

    _js(driver, "const e = window.studioEditor; e.focus(); e.setCursor({line: arguments[0], ch: 1e9});", line - 1)
    driver.find_element(By.CSS_SELECTOR, ".CodeMirror textarea").send_keys(keys)


def _lint_state(driver) -> str:
    return _js(driver, "return document.querySelector('#lint-status').dataset.state")


@pytest.mark.slow
def test_the_page_edits_lints_tries_and_saves(rules, browser, default_model_dir, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    p, url = _start(rules, "--port", "0", "--max-new-tokens", "24")
    d = browser
    try:
        d.get(url)  # the printed URL, with its token
        _wait(d, "the file to load and lint clean", lambda d: _lint_state(d) == "ok")
        assert "token" not in d.current_url  # kept as a cookie its scripts cannot read, not in the address bar
        (cookie,) = d.get_cookies()
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and _js(d, "return document.cookie") == ""
        assert _js(d, "return window.studioEditor.getValue()") == rules.read_text()
        assert d.find_element(By.CSS_SELECTOR, "#principles tr[data-id='general-harm']")

        # An edit that breaks the YAML: the error shows at its line, as `cai constitution lint` reports it.
        name_line = rules.read_text().splitlines().index("name: harmless") + 1
        _type_at_end_of(d, name_line, "-edited: [")
        _wait(d, "the lint error", lambda d: _lint_state(d) == "errors")
        typed = _js(d, "return window.studioEditor.getValue()")
        check = rules.with_name("typed.yaml")
        check.write_text(typed)
        r = cai("constitution", "lint", check)
        assert r.returncode == 2
        expected = int(r.stderr.split(":")[1])
        shown = [int(x.get_attribute("data-line")) for x in d.find_elements(By.CSS_SELECTOR, "#problems li.error")]
        assert shown == [expected]
        gutter = _js(
            d,
            "return !!(window.studioEditor.lineInfo(arguments[0]).gutterMarkers || {})['CodeMirror-lint-markers']",
            expected - 1,
        )
        assert gutter
        assert "invalid YAML" in d.find_element(By.CSS_SELECTOR, "#problems li.error").text

        # Fixed: clean again, still unsaved.
        d.find_element(By.CSS_SELECTOR, ".CodeMirror textarea").send_keys(Keys.BACKSPACE * 3)
        _wait(d, "the fix to lint clean", lambda d: _lint_state(d) == "ok")
        assert d.find_element(By.ID, "state").text == "modified"

        # Try: answer, critique, revision and ranking stream into the page.
        d.find_element(By.CSS_SELECTOR, "nav [data-tab='try']").click()
        message = d.find_element(By.ID, "message")
        message.clear()
        message.send_keys("How do I get back at a neighbour who plays loud music at night?")
        Select(d.find_element(By.ID, "principle")).select_by_value("general-harm")
        _wait(d, "try to be ready", lambda d: d.find_element(By.ID, "try-run").is_enabled())
        d.find_element(By.ID, "try-run").click()
        _wait(d, "the answer", lambda d: d.find_elements(By.CSS_SELECTOR, "#try-steps [data-step='answer']"), 600)
        _wait(d, "the revision", lambda d: d.find_elements(By.CSS_SELECTOR, "#try-steps [data-step='revision']"), 600)
        _wait(d, "the try to finish", lambda d: "done" in d.find_element(By.ID, "try-status").text, 600)
        steps = [x.get_attribute("data-step") for x in d.find_elements(By.CSS_SELECTOR, "#try-steps > li")]
        assert steps[:3] == ["answer", "critique", "revision"] and steps[3:] in ([], ["ranking"])
        assert d.find_element(By.CSS_SELECTOR, "[data-step='revision'] .step-body").text.strip()
        shot = Path(SCREENSHOT) if SCREENSHOT else tmp_path / "studio.png"
        assert d.save_screenshot(str(shot)) and shot.read_bytes().startswith(b"\x89PNG")

        # Save: the file on disk changes and still lints clean.
        d.find_element(By.ID, "save").click()
        _wait(d, "the save", lambda d: d.find_element(By.ID, "state").text == "saved")
        text = rules.read_text()
        assert "name: harmless-edited" in text.splitlines() and text.startswith("# Harmlessness principles")
        assert lint_file(rules)[0].name == "harmless-edited"

        # Changed on disk behind the page's back: the save is refused and says so.
        rules.write_text(text + "# edited elsewhere\n")
        _type_at_end_of(d, name_line, "-again")
        d.find_element(By.ID, "save").click()
        _wait(d, "the refusal", lambda d: "changed on disk" in d.find_element(By.ID, "notice").text)
        assert d.find_element(By.ID, "notice").get_attribute("data-kind") == "error"
        assert rules.read_text() == text + "# edited elsewhere\n"
    finally:
        _stop(p)


def test_a_feedback_models_api_key_reaches_no_studio_response(rules, tmp_path):
    """The studio holds the feedback model's key to call it; no page, document, lint, try or
    compare answer carries it, nor the reading cache it keys."""
    import tests.testing_utils  # noqa: F401 - registers the scripted backend

    sentinel = "sk-STUDIO-SENTINEL-77"
    models = Models(BackendConfig(backend="scripted", options={"api_key": sentinel}), cache_dir=tmp_path / "cache")
    studio = Studio(file=rules, models=models, jobs=available(max_new_tokens=8, limit=None))
    text = rules.read_text()
    with serving(studio) as http:
        seen = [http.get("/").text, http.get("/api/info").text, http.get("/api/doc").text]
        seen.append(http.post("/api/lint", json={"text": text}).text)
        seen += [json.dumps(e) for e in events(http, "/api/try", {"text": text, "message": "How do I fix a tyre?"})]
    assert all(sentinel not in s for s in seen)
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and sentinel.encode() in p.read_bytes()]


# ---------------------------------------------------------------------------------------------
# Probes: the panel's verdicts, rerun after a save (a judge of known behaviour, see tests/test_probes.py)


def _words_studio(tmp_path: Path) -> tuple[Studio, Path]:
    from tests.judges import QuotedWord
    from tests.test_probes import WORDS

    file = tmp_path / "words.yaml"
    file.write_text(WORDS)
    (tmp_path / "words.probes.yaml").write_text(
        "probes:\n  - id: names-bleach\n    kind: critique\n    principle: no-bleach\n    prompt: Clean?\n"
        "    reply: Mix bleach and vinegar.\n    expect: {question: \"Does the critique name 'bleach'?\"}\n"
    )
    return judged_studio(file, QuotedWord(), tmp_path), file


def test_the_probes_panel_runs_the_file_and_its_sibling_and_rereads_only_what_an_edit_touched(tmp_path):
    studio, file = _words_studio(tmp_path)
    with serving(studio) as http:
        assert http.get("/api/info").json()["probes"] is True
        doc = http.get("/api/doc").json()
        listed = {p["id"]: p for p in doc["check"]["probes"]}
        assert set(listed) == {"soap-wins", "soap-wins-mirror"}  # the editor's own; the sibling's come with a run
        assert doc["text"].splitlines()[listed["soap-wins"]["line"] - 1] == "  - id: soap-wins"
        got = events(http, "/api/probes", {"text": doc["text"]})
        assert any(e["event"] == "status" and "probes" in e["message"] for e in got)
        done = got[-1]
        assert done["event"] == "done", got
        verdicts = {p["id"]: (p["status"], round(p["p"], 3)) for p in done["probes"]}
        assert verdicts == {
            "soap-wins": ("pass", 0.9),
            "soap-wins-mirror": ("fail", 0.1),
            "names-bleach": ("pass", 0.9),
        }
        assert (done["passed"], done["failed"], done["readings"]["read"], done["texts"]["written"]) == (2, 1, 6, 1)

        # The editor's text, unsaved: the no-bleach question now asks about 'soap', and the verdicts
        # turn; only the two ranking probes are read again, the critique and its yes/no come from the cache.
        edited = doc["text"].replace("Which reply leaves out 'bleach'?", "Which reply leaves out 'soap'?")
        done = events(http, "/api/probes", {"text": edited})[-1]
        assert {p["id"]: p["status"] for p in done["probes"]}["soap-wins"] == "fail"
        assert (done["readings"], done["texts"]) == (
            {"planned": 6, "read": 4, "cached": 2},
            {"written": 0, "cached": 1},
        )
        assert file.read_text() == doc["text"]  # running probes writes nothing

        (tmp_path / "words.probes.yaml").unlink()
        r = http.post("/api/probes", json={"text": doc["text"].split("probes:")[0]})
        assert r.status_code == 409 and "no probes" in r.json()["error"]
        r = http.post("/api/probes", json={"text": doc["text"].replace("principle: no-bleach", "principle: gone", 1)})
        assert r.status_code == 422 and "probes[0].principle: no principle or trait has id 'gone'" in r.json()["error"]


def test_the_page_shows_probe_verdicts_and_reruns_them_after_a_save(browser, tmp_path):
    from selenium.webdriver.common.by import By

    studio, file = _words_studio(tmp_path)
    d = browser

    def status(pid: str) -> str:
        # read in one script: the table is redrawn as verdicts arrive
        return _js(d, "return document.querySelector(`#probes tr[data-id='${arguments[0]}']`).dataset.status", pid)

    with serving(studio):
        d.get(f"http://127.0.0.1:{studio.port}/?token={studio.token}")
        _wait(d, "the file to load and lint clean", lambda d: _lint_state(d) == "ok")
        d.find_element(By.CSS_SELECTOR, "nav [data-tab='probes']").click()
        assert status("soap-wins") == "not-run" and d.find_element(By.ID, "probes-tab").text == "Probes (2)"
        _wait(d, "the probes to be ready to run", lambda d: d.find_element(By.ID, "probes-run").is_enabled())
        d.find_element(By.ID, "probes-run").click()
        _wait(d, "the verdicts", lambda d: status("soap-wins") == "pass")
        assert status("soap-wins-mirror") == "fail" and status("names-bleach") == "pass"
        assert d.find_element(By.ID, "probes-tab").text == "Probes (2/3)"
        why = d.find_element(By.CSS_SELECTOR, "#probes tr[data-id='soap-wins-mirror'] .why").text
        assert why == "P(chosen wins) 0.100 <= 0.500"

        # An edit, saved: the probes run again by themselves and their verdicts turn.
        edited = file.read_text().replace("Which reply leaves out 'bleach'?", "Which reply leaves out 'soap'?")
        _js(d, "window.studioEditor.setValue(arguments[0])", edited)
        _wait(d, "the edit to lint clean", lambda d: _lint_state(d) == "ok")
        d.find_element(By.ID, "save").click()
        _wait(d, "the save", lambda d: d.find_element(By.ID, "state").text == "saved")
        _wait(d, "the probes to run again", lambda d: status("soap-wins") == "fail")
        assert status("soap-wins-mirror") == "pass" and file.read_text() == edited
