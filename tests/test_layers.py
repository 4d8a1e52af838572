"""Layered principle files: `extends:` bases, then `remove:`, `override:` and added principles.

The fixtures in tests/fixtures/layers are three layers: the trainer's base, an organisation's
layer that removes, overrides and adds, and a product's layer on top of that. What they merge to
is checked field by field, as files (`cai constitution show --effective`, `diff`, `lint`), in a
run on the scripted backend (ids, the config history, the dataset card, the report), in
`compare` (which layer's principle moved a label) and in the studio's effective view.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from starlette.testclient import TestClient

from cai.config import load_config
from cai.constitution import dump_constitution, load_constitution
from cai.constitution.errors import ConstitutionError
from cai.constitution.layers import MAX_LAYERS, dump_effective, load_layered
from cai.constitution.lint import lint_file
from cai.evaluation.pairs import LabeledPair
from cai.pipeline import Pipeline
from cai.report import build_context
from cai.studio.app import Studio, guarded
from cai.workbench.compare import compare
from tests.cli import cai
from tests.judges import FollowsWording
from tests.test_hostile_files import alias_bomb
from tests.test_studio import _js, _lint_state, _wait, serving
from tests.testing_utils import CALLS, CHROMIUM, CONSTITUTION, records, setup

LAYERS = Path(__file__).parent / "fixtures" / "layers"


@pytest.fixture
def layers(tmp_path) -> Path:
    """The three fixture layers in a folder of the test's own (base.yaml, org.yaml, product.yaml)."""
    for f in LAYERS.glob("*.yaml"):
        shutil.copy(f, tmp_path / f.name)
    return tmp_path


def write(folder: Path, **files: str) -> None:
    for name, text in files.items():
        (folder / name).write_text(text)


def refused(r, where: str, says: str) -> None:
    """Exit 2 with the located line, and no traceback."""
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert where in r.stderr and says in r.stderr, r.stderr


# ---------------------------------------------------------------------------------------------
# The merge


def test_three_layers_merge_as_documented(layers):
    merged = load_layered(layers / "product.yaml")
    c = merged.constitution
    assert [p.id for p in c.principles] == ["no-harm", "honest", "privacy", "brief"], "bases first, in order"
    assert c.name == "support-bot" and c.description == "Rules every deployment keeps.", "own name, base's rest"
    honest = c.principle("honest")
    assert honest.comparison == "Which reply is more honest about what it does not know?" and honest.weight == 2
    assert honest.tags == ["truth"], "fields an override leaves out stay as the base wrote them"
    assert c.principle("privacy").tags == ["customers"] and c.principle("privacy").comparison.startswith("Which reply")
    assert "polite" not in {p.id for p in c.principles}
    assert [e.prompt for e in c.comparison_examples] == ["Where is my parcel?"], "polite's example left with it"
    assert [e.principle_id for e in c.few_shot] == ["no-harm"], "the base's worked example is inherited"
    assert [(x.label, x.name) for x in merged.layers] == [
        ("base.yaml", "base"),
        ("org.yaml", "org"),
        (str(layers / "product.yaml"), "support-bot"),
    ]
    assert merged.layers[0].hash == load_constitution(layers / "base.yaml").content_hash()
    assert len({x.hash for x in merged.layers}) == 3
    assert merged.origin("principles", "honest").describe() == "from base.yaml; comparison, weight from org.yaml"
    assert merged.origin("principles", "brief").origin == str(layers / "product.yaml")
    assert merged.state.removed == {"polite": "org.yaml"}
    assert lint_file(layers / "product.yaml")[1] == [], "the fixtures lint clean"


def test_a_layer_with_only_changes_still_hashes_by_meaning(layers):
    """Comments and key order do not move a layer's hash; a changed value does."""
    before = load_layered(layers / "product.yaml").layers[-1].hash
    text = (layers / "product.yaml").read_text()
    (layers / "product.yaml").write_text(
        "# a comment\n" + text.replace("name: support-bot\n", "") + "name: support-bot\n"
    )
    assert load_layered(layers / "product.yaml").layers[-1].hash == before
    (layers / "product.yaml").write_text(text.replace("tags: [customers]", "tags: [clients]"))
    assert load_layered(layers / "product.yaml").layers[-1].hash != before


def test_the_merged_file_is_an_ordinary_constitution(layers, tmp_path):
    """`show --effective` prints YAML that loads to the same constitution (same content hash, so
    the same record ids), each principle under the layer it comes from."""
    r = cai("constitution", "show", "--effective", layers / "product.yaml")
    assert r.returncode == 0, r.stderr
    assert "# from base.yaml; comparison, weight from org.yaml\n- id: honest" in r.stdout
    assert "# from org.yaml; tags from" in r.stdout and "base.yaml (base) " in r.stdout
    flat = tmp_path / "flat.yaml"
    flat.write_text(r.stdout)
    merged = load_constitution(layers / "product.yaml")
    assert load_constitution(flat).content_hash() == merged.content_hash()
    assert dump_effective(load_layered(layers / "product.yaml")) == r.stdout
    again = tmp_path / "again.yaml"
    again.write_text(dump_constitution(merged))
    assert load_constitution(again) == merged


def test_bases_merge_in_order_and_lint_names_what_disagrees(tmp_path):
    """Two layers over one root: what both keep as it was counts once; an id they define
    differently takes the later base's version in the first one's place, and lint says so at the
    `extends:` line; a removal one base makes and the other does not is kept, and said too."""
    write(
        tmp_path,
        **{
            "root.yaml": 'name: root\nprinciples:\n  - {id: a, comparison: "Which is kinder?"}\n'
            '  - {id: b, comparison: "Which is clearer?"}\n  - {id: c, comparison: "Which is safer?"}\n',
            "left.yaml": "name: left\nextends: root.yaml\noverride:\n  - {id: a, weight: 3}\n",
            "right.yaml": "name: right\nextends: root.yaml\nremove: [c]\noverride:\n  - {id: a, weight: 5}\n"
            'principles:\n  - {id: d, comparison: "Which is shorter?"}\n',
            "top.yaml": "name: top\nextends:\n  - left.yaml\n  - right.yaml\n",
        },
    )
    merged = load_layered(tmp_path / "top.yaml")
    c = merged.constitution
    assert [p.id for p in c.principles] == ["a", "b", "c", "d"]
    assert c.principle("a").weight == 5, "the later base wins"
    assert [x.label for x in merged.layers] == ["root.yaml", "left.yaml", "right.yaml", str(tmp_path / "top.yaml")]
    _, warnings = lint_file(tmp_path / "top.yaml")
    top = str(tmp_path / "top.yaml")
    assert any(w.startswith(f"{top}:4: extends[1]: principle 'a' of root.yaml differs") for w in warnings), warnings
    assert any(w.startswith(f"{top}:4: extends[1]: right.yaml removes 'c'") for w in warnings), warnings
    assert len(warnings) == 2, "b, equal in both, is no conflict"


def test_a_cycle_is_a_located_error(tmp_path):
    write(
        tmp_path,
        **{
            "a.yaml": "name: a\nextends: [b.yaml]\n",
            "b.yaml": "name: b\n# the second layer\nextends: [a.yaml]\n",
            "self.yaml": "name: self\nextends:\n  - self.yaml\n",
        },
    )
    r = cai("constitution", "lint", "a.yaml", cwd=tmp_path)
    refused(r, "b.yaml:3: extends[0]:", "a.yaml makes a cycle (a.yaml -> b.yaml -> a.yaml)")
    r = cai("constitution", "lint", "self.yaml", cwd=tmp_path)
    refused(r, "self.yaml:3: extends[0]:", "self.yaml makes a cycle (self.yaml -> self.yaml)")
    r = cai("constitution", "show", "a.yaml", cwd=tmp_path)
    refused(r, "b.yaml:3:", "makes a cycle")


MISTAKES = [  # (the layer after its name and extends:, the line, what the one line says)
    ("override:\n  - id: gone\n    weight: 2\n", 4, "override[0].id: cannot override 'gone': no base has"),
    ("remove: [polite]\noverride:\n  - id: polite\n    weight: 2\n", 5, "cannot override 'polite': this file removes"),
    ("remove: [nobody]\n", 3, "remove[0]: no base has a principle or trait with id 'nobody'"),
    ("principles:\n  - id: honest\n    comparison: Which?\n", 4, "principles[0].id: 'honest' is already in base.yaml"),
    ("override:\n  - id: honest\n    questions: [Why not]\n", 5, "override[0].questions: a principle has no field"),
    ("override:\n  - id: honest\n", 4, "override[0]: names no field to change"),
    ("override:\n  - {id: no-harm, critique: null}\n", 4, "override[0].critique: needs a value"),
    ("override:\n  - {id: honest, critique: Say what is untrue.}\n", 4, "a critique needs a revision too"),
    ("extends: [missing.yaml]\n", 2, "extends[0]: missing.yaml: no such file"),
    ("extends: [no-such-shipped-name]\n", 2, "no shipped constitution has that name"),
]


@pytest.mark.parametrize("layer, where, says", MISTAKES)
def test_a_layer_mistake_is_located_at_its_line(layers, layer, where, says):
    head = "name: mine\n" + ("" if layer.startswith("extends") else "extends: base.yaml\n")
    (layers / "mine.yaml").write_text(head + layer)
    r = cai("constitution", "lint", "mine.yaml", cwd=layers)
    refused(r, f"mine.yaml:{where}: ", says)


def test_a_removed_principle_that_another_base_file_still_needs_is_reported_where_it_was_removed(tmp_path):
    """A probe of the base names the principle this layer removes: the merged file would not
    validate, and the error stands at this layer's `remove:`, naming where the probe is."""
    write(
        tmp_path,
        **{
            "base.yaml": 'name: base\nprinciples:\n  - {id: a, comparison: "Which is kinder?"}\n'
            '  - {id: b, comparison: "Which is clearer?"}\n'
            "probes:\n  - {id: p, kind: ranking, principle: a, prompt: Hi, chosen: Hello, rejected: Go}\n",
            "mine.yaml": "name: mine\nextends: base.yaml\nremove:\n  - b\n",
        },
    )
    assert [p.id for p in load_constitution(tmp_path / "mine.yaml").principles] == ["a"]
    write(tmp_path, **{"mine.yaml": "name: mine\nextends: base.yaml\nremove:\n  - a\n  - b\n"})
    with pytest.raises(ConstitutionError) as e:
        load_constitution(tmp_path / "mine.yaml")
    assert e.value.problems[0].startswith(f"{tmp_path / 'mine.yaml'}:4: ")
    assert "at least one principle or trait" in e.value.problems[0]


def test_layering_is_bounded_and_a_hostile_base_is_refused_as_any_file(tmp_path):
    for i in range(MAX_LAYERS + 3):
        (tmp_path / f"l{i}.yaml").write_text(f"name: l{i}\nextends: l{i + 1}.yaml\n")
    (tmp_path / f"l{MAX_LAYERS + 3}.yaml").write_text('name: end\nprinciples:\n  - {id: a, comparison: "Which?"}\n')
    r = cai("constitution", "lint", "l0.yaml", cwd=tmp_path, timeout=60)
    refused(r, ":2: extends[0]:", f"more than {MAX_LAYERS} layers")
    write(tmp_path, **{"bomb.yaml": alias_bomb(), "top.yaml": "name: top\nextends: [bomb.yaml]\n"})
    r = cai("constitution", "lint", "top.yaml", cwd=tmp_path, timeout=20)
    refused(r, "bomb.yaml:5:", "too many YAML aliases")


def test_diff_compares_merged_files(layers):
    """Moving a principle from one layer to another changes nothing a run reads; an override does."""
    moved = (
        (layers / "product.yaml")
        .read_text()
        .replace("principles:\n  - id: brief\n    comparison: Which reply is shorter and more to the point?\n", "")
    )
    org = (
        layers / "org.yaml"
    ).read_text() + "  - id: brief\n    comparison: Which reply is shorter and more to the point?\n"
    write(layers, **{"moved.yaml": moved.replace("org.yaml", "org2.yaml"), "org2.yaml": org})
    r = cai("constitution", "diff", "product.yaml", "moved.yaml", cwd=layers)
    assert r.returncode == 0 and "no changes" in r.stdout, (r.stdout, r.stderr)
    assert (
        load_constitution(layers / "moved.yaml").content_hash()
        == load_constitution(layers / "product.yaml").content_hash()
    )
    write(layers, **{"edited.yaml": (layers / "product.yaml").read_text().replace("[customers]", "[clients]")})
    r = cai("constitution", "diff", "product.yaml", "edited.yaml", "--json", cwd=layers)
    assert r.returncode == 1
    (change,) = json.loads(r.stdout)
    assert change == {
        "kind": "changed",
        "section": "principles",
        "id": "privacy",
        "field": "tags",
        "old": ["customers"],
        "new": ["clients"],
    }


# ---------------------------------------------------------------------------------------------
# A run


def _run(config: Path, out: Path) -> None:
    pipe = Pipeline(load_config(config), out, console=Console(file=io.StringIO()))
    try:
        pipe.start()
        pipe.run()
    finally:
        pipe.close()


BRIEF = "  - id: brief\n    comparison: Which reply is shorter and still complete?\n"
SPLIT_BASE = CONSTITUTION.replace("name: tiny", "name: base-of-tiny").split("traits:")[0].replace(BRIEF, "")
SPLIT_TOP = "name: tiny\nextends: tiny-base.yaml\nprinciples:\n" + BRIEF + "traits:" + CONSTITUTION.split("traits:")[1]


def test_a_layered_run_makes_the_same_ids_and_its_card_lists_each_layers_hash(tmp_path):
    """The same constitution written flat and as two layers: the same records, id for id; the
    layered run's config history, dataset card and report name each layer with its hash."""
    flat = tmp_path / "flat"
    _run(setup(flat), flat / "R")
    layered = tmp_path / "layered"
    _run(setup(layered, **{"tiny.yaml": SPLIT_TOP, "tiny-base.yaml": SPLIT_BASE}), layered / "R")
    assert (
        load_constitution(layered / "tiny.yaml").content_hash() == load_constitution(flat / "tiny.yaml").content_hash()
    )
    for stage in ("queries", "responses", "revisions", "comparisons"):
        assert [r["id"] for r in records(layered / "R", stage)] == [r["id"] for r in records(flat / "R", stage)], stage
    base_hash = load_constitution(layered / "tiny-base.yaml").content_hash()
    top_hash = load_layered(layered / "tiny.yaml").layers[1].hash
    expected = [
        {"layer": "tiny-base.yaml", "name": "base-of-tiny", "hash": base_hash},
        {"layer": str(layered / "tiny.yaml"), "name": "tiny", "hash": top_hash},
    ]
    index = json.loads((layered / "R" / "configs" / "index.json").read_text())
    assert index[-1]["layers"] == {"constitution": expected}
    r = cai("export", layered / "R")
    assert r.returncode == 0, r.stderr
    card = (layered / "R" / "datasets" / "README.md").read_text()
    provenance = yaml.safe_load(card.split("```yaml\n")[1].split("```")[0])
    assert provenance["constitution"]["layers"] == expected
    assert provenance["constitution"]["hash"] == load_constitution(flat / "tiny.yaml").content_hash()
    assert [x["hash"] for x in build_context(layered / "R")["constitution"]["layers"]] == [x["hash"] for x in expected]
    html = layered / "R" / "report.html"
    assert cai("report", layered / "R").returncode == 0 and expected[0]["hash"] in html.read_text()


def test_moving_a_principle_between_layers_reruns_nothing_and_editing_a_base_reruns_what_reads_it(tmp_path):
    cfg = setup(tmp_path, **{"tiny.yaml": SPLIT_TOP, "tiny-base.yaml": SPLIT_BASE})
    _run(cfg, tmp_path / "R")
    before = {r["id"] for r in records(tmp_path / "R", "comparisons")}
    brief = "principles:\n" + BRIEF
    write(  # brief now comes from a middle layer: the merged file is the same
        tmp_path,
        **{
            "mid.yaml": "name: mid\nextends: tiny-base.yaml\n" + brief,
            "tiny.yaml": SPLIT_TOP.replace("extends: tiny-base.yaml", "extends: mid.yaml").replace(brief, ""),
        },
    )
    assert len(load_layered(tmp_path / "tiny.yaml").layers) == 3
    CALLS.clear()
    _run(cfg, tmp_path / "R")
    assert not CALLS, "nothing reached the model"
    assert {r["id"] for r in records(tmp_path / "R", "comparisons")} == before
    mid = (tmp_path / "mid.yaml").read_text()
    write(tmp_path, **{"mid.yaml": mid.replace("shorter and still complete", "more concise")})
    _run(cfg, tmp_path / "R")
    after = records(tmp_path / "R", "comparisons")
    moved = {r["id"] for r in after} - before
    assert moved and all("brief" in r["principle_ids"] for r in after if r["id"] in moved)
    assert {r["id"] for r in after if "brief" not in r["principle_ids"]} <= before


# ---------------------------------------------------------------------------------------------
# compare and the studio


def _pairs(n: int = 12) -> list[LabeledPair]:
    """Pairs whose chosen reply is the shorter one."""
    out = []
    for i in range(n):
        short, long = f"Yes, {i}.", f"Yes, {i}, and here is a much longer explanation of it that goes on."
        out.append(LabeledPair(f"p{i}", [{"role": "user", "content": f"Question {i}?"}], short, long, f"pairs:{i}"))
    return out


def test_compare_puts_each_flip_down_to_the_layer_whose_principle_moved_it(tmp_path):
    """A judge that cares about length only when asked about it: the base asks nothing about
    length (every label 1/2); the org layer turns one question into a length question (every
    label flips); the product layer adds a neutral principle (no flip of its own)."""
    write(
        tmp_path,
        **{
            "base.yaml": 'name: base\nprinciples:\n  - {id: a, comparison: "Which reply is more polite?"}\n'
            '  - {id: b, comparison: "Which reply is more honest?"}\n',
            "org.yaml": "name: org\nextends: base.yaml\n"
            'override:\n  - {id: a, comparison: "Which reply is shorter?"}\n',
            "product.yaml": "name: product\nextends: org.yaml\n"
            'principles:\n  - {id: c, comparison: "Which reply is warmer?"}\n',
        },
    )
    result = compare(tmp_path / "base.yaml", tmp_path / "product.yaml", _pairs(), FollowsWording())
    assert result["flips"] == 12
    rows = {r["id"]: r for r in result["by_principle"]}
    assert rows["a"]["layer"] == "org.yaml" and rows["a"]["status"] == "edited"
    assert rows["c"]["layer"] == str(tmp_path / "product.yaml") and rows["c"]["status"] == "added"
    assert rows["b"]["layer"] == "base.yaml" and rows["b"]["status"] == "unchanged"
    by_layer = {r["layer"]: r for r in result["by_layer"]}
    assert by_layer["org.yaml"] == {"layer": "org.yaml", "principles": ["a"], "flips": 12, "share": 1.0}
    assert by_layer[str(tmp_path / "product.yaml")]["flips"] == 0
    assert by_layer["base.yaml"]["flips"] == 0
    assert [x["layer"] for x in result["layers"]["new"]] == ["base.yaml", "org.yaml", str(tmp_path / "product.yaml")]


def _client(file: Path) -> TestClient:
    studio = Studio(file=file, port=8124, token="t")
    return TestClient(guarded(studio), base_url="http://127.0.0.1:8124", headers={"x-studio-token": "t"})


def test_the_studio_edits_one_layer_and_shows_the_merged_view(layers):
    c = _client(layers / "product.yaml")
    d = c.get("/api/doc").json()
    check = d["check"]
    assert check["ok"] and [p["id"] for p in check["principles"]] == ["brief"], "the list holds this file's own"
    view = check["effective"]
    assert [x["layer"] for x in view["layers"]] == ["base.yaml", "org.yaml", "product.yaml"]
    rows = {r["id"]: r for r in view["principles"]}
    assert list(rows) == ["no-harm", "honest", "privacy", "brief"]
    assert rows["honest"]["from"] == "from base.yaml; comparison, weight from org.yaml" and not rows["honest"]["here"]
    assert rows["privacy"]["here"] and rows["brief"]["here"] and rows["privacy"]["weight"] == 1.0
    assert view["removed"] == [{"id": "polite", "layer": "org.yaml"}]
    assert check["hash"] == load_constitution(layers / "product.yaml").content_hash()
    bad = d["text"].replace("  - id: privacy\n    tags", "  - id: nobody\n    tags")
    lint = c.post("/api/lint", json={"text": bad}).json()
    assert not lint["ok"] and lint["errors"][0]["line"] == 5
    assert "cannot override 'nobody'" in lint["errors"][0]["message"]
    flat = _client(layers / "base.yaml").get("/api/doc").json()["check"]
    assert flat["effective"] is None and [p["id"] for p in flat["principles"]] == ["no-harm", "honest", "polite"]


@pytest.fixture
def page():
    """A headless Chromium, as the studio's own page tests drive it."""
    driver_path = shutil.which("chromedriver")
    if not (CHROMIUM and driver_path):
        pytest.skip("needs Debian's chromium and chromium-driver (make setup installs them as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1440,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    yield driver
    driver.quit()


def test_the_page_shows_the_effective_tab(layers, page):
    """In a real browser: the Effective tab lists the merged principles with their layers, and an
    edit of the layer in the editor shows there once it lints."""
    from selenium.webdriver.common.by import By

    studio = Studio(file=layers / "product.yaml")
    d = page
    with serving(studio):
        d.get(f"http://127.0.0.1:{studio.port}/?token={studio.token}")
        _wait(d, "the file to load and lint clean", lambda d: _lint_state(d) == "ok")
        d.find_element(By.CSS_SELECTOR, "nav [data-tab='effective']").click()
        assert d.find_element(By.ID, "effective-tab").text == "Effective (3 layers)"
        ids = "return [...document.querySelectorAll('#effective tbody tr')].map((r) => r.dataset.id)"
        assert _js(d, ids) == ["no-harm", "honest", "privacy", "brief", "polite"]
        row = "return document.querySelector(`#effective tr[data-id='${arguments[0]}']`)"
        assert "from base.yaml; comparison, weight from org.yaml" in _js(d, row + ".textContent", "honest")
        assert _js(d, row + ".className", "brief") == "here"
        assert "removed by org.yaml" in _js(d, row + ".textContent", "polite")
        edited = (layers / "product.yaml").read_text().replace("  - id: privacy\n    tags", "  - id: no-harm\n    tags")
        _js(d, "window.studioEditor.setValue(arguments[0])", edited)
        _wait(d, "the edit to lint clean", lambda d: _lint_state(d) == "ok")
        _wait(
            d,
            "the merged view to follow the edit",
            lambda d: "tags from product.yaml" in _js(d, row + ".textContent", "no-harm"),
        )
        assert (layers / "product.yaml").read_text() != edited, "the view is read-only: nothing was saved"
