// The studio page: one CodeMirror editor on the principle file, and panels that ask the server
// about the editor's text. Every model output is shown with textContent, never as HTML.

const $ = (sel) => document.querySelector(sel);
const params = new URLSearchParams(location.search);
if (params.has("token")) {  // the server has set it as a cookie: keep it out of the address bar and history
  params.delete("token");
  const rest = params.toString();
  history.replaceState(null, "", location.pathname + (rest ? `?${rest}` : ""));
}
const state = { path: params.get("file") || null, base: "", saved: "", json: false, check: null };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function notice(message, kind = "error") {
  const n = $("#notice");
  n.textContent = message;
  n.dataset.kind = kind;
  n.hidden = !message;
}

async function api(url, body) {
  const init = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ path: state.path, ...body }),
  };
  const resp = await fetch(url, init);
  const data = await resp.json().catch(() => ({ error: `${resp.status} ${resp.statusText}` }));
  if (!resp.ok) throw Object.assign(new Error(data.error || resp.statusText), { status: resp.status });
  return data;
}

// ---------------------------------------------------------------------------------------------
// Editor and live lint

const editor = CodeMirror($("#editor"), {
  mode: "yaml", lineNumbers: true, indentUnit: 2, tabSize: 2, styleActiveLine: true,
  gutters: ["CodeMirror-lint-markers"],
  extraKeys: { Tab: (cm) => cm.replaceSelection("  "), "Ctrl-S": () => save(), "Cmd-S": () => save() },
  lint: { async: true, delay: 300, getAnnotations: lintText },
});
window.studioEditor = editor;  // for scripted use of the page

let problemLines = [];

function lintText(text, update) {
  $("#lint-status").dataset.state = "pending";
  api("/api/lint", { text }).then((check) => {
    if (text !== editor.getValue()) return;  // a newer text is on its way
    showCheck(check);
    update(annotations(check));
  }, (err) => {  // e.g. a text past the size, nesting or alias bounds: refused whole, at its line
    if (text !== editor.getValue()) return;
    notice(`lint: ${err.message}`);
    $("#lint-status").dataset.state = "errors";
    $("#lint-status").textContent = "refused";
  });
}

function annotations(check) {
  const out = [];
  for (const [severity, items] of [["error", check.errors], ["warning", check.warnings]]) {
    for (const p of items) {
      const line = Math.max(0, Math.min((p.line || 1) - 1, editor.lastLine()));
      out.push({ from: CodeMirror.Pos(line, 0), to: CodeMirror.Pos(line, editor.getLine(line).length),
        message: p.message, severity });
    }
  }
  return out;
}

function showCheck(check) {
  state.check = check;
  for (const h of problemLines) editor.removeLineClass(h, "background", "cm-problem-line");
  problemLines = [];
  const list = $("#problems");
  list.replaceChildren();
  for (const [severity, items] of [["error", check.errors], ["warning", check.warnings]]) {
    for (const p of items) {
      const li = el("li", { class: severity, "data-line": p.line ?? "", text: `${p.line ? `line ${p.line}: ` : ""}${p.message}` });
      li.addEventListener("click", () => jump(p.line));
      list.append(li);
      if (severity === "error" && p.line) problemLines.push(editor.addLineClass(p.line - 1, "background", "cm-problem-line"));
    }
  }
  const status = $("#lint-status");
  status.dataset.state = check.ok ? "ok" : "errors";
  status.textContent = check.ok
    ? `valid${check.warnings.length ? `, ${check.warnings.length} warning(s)` : ""}`
    : `${check.errors.length} error(s)`;
  if (check.ok) showPrinciples(check.principles);
  if (check.ok) showEffective(check.effective);
  if (check.ok) showProbes();
  $("#tab-principles .empty").hidden = check.ok;
}

function jump(line) {
  if (!line) return;
  editor.focus();
  editor.setCursor({ line: line - 1, ch: 0 });
  editor.scrollIntoView({ line: line - 1, ch: 0 }, 80);
}

function replaceText(text) {  // undoable, unlike setValue
  editor.replaceRange(text, CodeMirror.Pos(0, 0), CodeMirror.Pos(editor.lastLine()));
}

function showState() {
  const s = $("#state");
  const modified = editor.getValue() !== state.saved;
  s.dataset.state = modified ? "modified" : "saved";
  s.textContent = modified ? "modified" : "saved";
}
editor.on("change", showState);

// ---------------------------------------------------------------------------------------------
// Principle list (edits go through the server so the file keeps its comments and key order)

function showPrinciples(rows) {
  const body = $("#principles tbody");
  body.replaceChildren();
  const select = $("#principle");
  const chosen = select.value;
  select.replaceChildren(el("option", { value: "", text: "sampled" }));
  for (const p of rows) {
    const weight = el("input", { class: "weight", type: "number", step: "0.1", min: "0.1", value: p.weight });
    weight.addEventListener("change", () => structured("weight", p.id, parseFloat(weight.value)));
    const actions = el("td", { class: "actions" });
    if (p.kind === "principle") {
      actions.append(
        el("button", { type: "button", title: "move up", text: "↑", onclick: () => structured("up", p.id) }),
        el("button", { type: "button", title: "move down", text: "↓", onclick: () => structured("down", p.id) }),
        el("button", { type: "button", title: "remove", text: "✕", onclick: () => structured("remove", p.id) }));
    }
    const row = el("tr", { "data-id": p.id },
      el("td", { class: "id", text: p.id, onclick: () => jump(p.line) }),
      el("td", { text: p.kind === "trait" ? "trait" : p.uses.join(", ") }),
      el("td", {}, p.kind === "principle" ? weight : String(p.weight)),
      actions);
    body.append(row);
    if (p.kind === "principle" && p.uses.includes("critique")) select.append(el("option", { value: p.id, text: p.id }));
  }
  select.value = [...select.options].some((o) => o.value === chosen) ? chosen : "";
}

async function structured(op, id, value) {
  try {
    const out = await api("/api/edit", { text: editor.getValue(), op, id, value });
    replaceText(out.text);
  } catch (err) {
    notice(err.message);
  }
}
$("#add-principle").addEventListener("click", () => structured("add"));

// ---------------------------------------------------------------------------------------------
// Load, save, reload

async function load() {
  const url = "/api/doc" + (state.path ? `?path=${encodeURIComponent(state.path)}` : "");
  const d = await api(url);
  state.path = d.path;
  state.base = d.base;
  state.saved = d.text;
  state.json = d.json;
  $("#file").textContent = d.path + (d.exists ? "" : " (new)");
  document.title = `${d.path} · cai studio`;
  editor.setOption("mode", d.json ? { name: "javascript", json: true } : "yaml");
  editor.setValue(d.text);
  editor.clearHistory();
  showCheck(d.check);
  showState();
}

async function save() {
  try {
    const out = await api("/api/save", { text: editor.getValue(), base: state.base });
    state.base = out.base;
    state.saved = editor.getValue();
    showState();
    notice(`saved ${out.path}`, "info");
    if (state.probesOn && (state.check?.probes?.length || Object.keys(state.probeResults).length)) runProbes();
  } catch (err) {
    notice(err.message);
  }
  return false;
}
$("#save").addEventListener("click", save);
$("#reload").addEventListener("click", async () => {
  if (editor.getValue() !== state.saved && !confirm("Replace your edits with the file on disk?")) return;
  try { await load(); notice("reloaded from disk", "info"); } catch (err) { notice(err.message); }
});
window.addEventListener("beforeunload", (e) => { if (editor.getValue() !== state.saved) e.preventDefault(); });

// ---------------------------------------------------------------------------------------------
// Tabs

for (const tab of document.querySelectorAll("nav [data-tab]")) {
  tab.addEventListener("click", () => {
    for (const t of document.querySelectorAll("nav [data-tab]")) t.setAttribute("aria-selected", t === tab);
    for (const s of document.querySelectorAll(".tab")) s.hidden = s.id !== `tab-${tab.dataset.tab}`;
    if (tab.dataset.tab === "diff") showDiff();
  });
}

// ---------------------------------------------------------------------------------------------
// Streams from the model thread: server-sent events over a POST

async function stream(url, body, onEvent) {
  const resp = await fetch(url, { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ path: state.path, ...body }) });
  if (!resp.ok) {
    const data = await resp.json().catch(() => ({ error: resp.statusText }));
    throw new Error(data.error || resp.statusText);
  }
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const chunk = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = chunk.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
      if (data) onEvent(JSON.parse(data));
    }
  }
}

function percent(p) { return `${(100 * p).toFixed(0)}%`; }

const STEP_TITLES = { answer: "Answer", critique: "Critique", revision: "Revision", ranking: "Ranking" };

function tryStep(ev) {
  const head = el("div", { class: "step-head", text: STEP_TITLES[ev.event] || ev.event });
  if (ev.principle) head.append(" ", el("span", { class: "principle", text: ev.principle }));
  const li = el("li", { class: `step ${ev.event}`, "data-step": ev.event }, head);
  if (ev.event === "ranking" && ev.error) {
    li.append(el("div", { class: "step-body", text: `the ranking failed: ${ev.error}` }));
  } else if (ev.event === "ranking") {
    li.append(el("div", { class: "step-body", text:
      `P(revision is better) = ${percent(ev.p_revision)}` + (ev.order_consistent ? " — both orders agree" : " — the orders disagree") }));
    const table = el("table", { class: "readings" },
      el("tr", {}, el("th", { text: "principle" }), el("th", { text: "revision shown" }), el("th", { text: "P(revision better)" })));
    for (const r of ev.readings) {
      table.append(el("tr", {}, el("td", { text: r.principle }), el("td", { text: r.revision_as }),
        el("td", {}, el("span", { class: "bar", style: `width:${(60 * r.p_revision).toFixed(0)}px` }), " ", percent(r.p_revision))));
    }
    li.append(table);
  } else {
    if (ev.event === "revision" && ev.kept === false) head.append(" (not kept: it repeats the critique or the answer)");
    li.append(el("div", { class: "step-body", text: ev.text }));
  }
  return li;
}

// A step the model is still writing: its text grows piece by piece, then the finished step replaces it.
function writing(steps, ev) {
  let li = steps.querySelector(`li.writing[data-step="${ev.step}"]`);
  if (!li) {
    li = el("li", { class: `step ${ev.step} writing`, "data-step": ev.step },
      el("div", { class: "step-head", text: `${STEP_TITLES[ev.step] || ev.step} (writing…)` }),
      el("div", { class: "step-body" }));
    steps.append(li);
  }
  li.querySelector(".step-body").textContent += ev.text;
}

$("#try-run").addEventListener("click", async () => {
  const button = $("#try-run");
  const status = $("#try-status");
  const steps = $("#try-steps");
  steps.replaceChildren();
  button.disabled = true;
  status.textContent = "starting…";
  try {
    await stream("/api/try", { text: editor.getValue(), message: $("#message").value,
      principle: $("#principle").value || null }, (ev) => {
      if (ev.event === "status") status.textContent = ev.message;
      else if (ev.event === "error") { status.textContent = ""; notice(`try: ${ev.message}`); }
      else if (ev.event === "done") status.textContent = `done in ${ev.seconds ?? "?"} s`;
      else if (ev.event === "text") writing(steps, ev);
      else {
        const open = steps.querySelector(`li.writing[data-step="${ev.event}"]`);
        if (open) open.replaceWith(tryStep(ev)); else steps.append(tryStep(ev));
      }
    });
  } catch (err) {
    status.textContent = "";
    notice(`try: ${err.message}`);
  } finally {
    button.disabled = false;
  }
});

function fmt(p) { return p == null ? "–" : percent(p); }

function showCompare(r) {
  const out = $("#compare-out");
  out.replaceChildren(el("p", { class: "summary", text:
    `${r.flips} of ${r.pairs} pairs changed their label: flip rate ${fmt(r.flip_rate)}, ` +
    `mean |ΔP(chosen)| ${fmt(r.mean_abs_dp)}` + (r.errors ? `; ${r.errors} readings failed` : "") }));
  const metrics = el("table", { class: "versions" }, el("tr", {},
    ...["", "agreement with the file's labels", "order consistency", "position bias"].map((h) => el("th", { text: h }))));
  for (const [label, v] of [["saved", r.old], ["edited", r.new]]) {
    metrics.append(el("tr", {}, el("td", { text: label }), el("td", { text: fmt(v.agreement) }),
      el("td", { text: fmt(v.order_consistency) }), el("td", { text: v.position_bias == null ? "–" : v.position_bias.toFixed(2) })));
  }
  out.append(metrics, el("h4", { text: "Per principle" }));
  const table = el("table", { class: "per-principle" }, el("tr", {},
    ...["principle", "change", "pairs", "flips", "flip rate", "mean |Δp|"].map((h) => el("th", { text: h }))));
  for (const p of r.principles) {
    const name = p.id && p.old_id && p.id !== p.old_id ? `${p.old_id} → ${p.id}` : (p.id || p.old_id);
    table.append(el("tr", { "data-id": name }, el("td", { text: name }), el("td", { text: p.status }),
      el("td", { text: p.pairs ?? "" }), el("td", { text: p.flips ?? "" }), el("td", { text: fmt(p.flip_rate) }),
      el("td", { text: fmt(p.mean_abs_dp) })));
  }
  out.append(table, el("h4", { text: r.moved.length ? "Pairs that moved most" : "No pair moved" }));
  for (const m of r.moved) {
    const chosenWins = m.p_new >= 0.5;
    out.append(el("div", { class: `moved${m.flipped ? " flipped" : ""}` },
      el("div", { class: "prompt", text: `${m.prompt}  — P(chosen) ${fmt(m.p_old)} → ${fmt(m.p_new)}${m.flipped ? " (flipped)" : ""}` }),
      el("div", { class: `reply${chosenWins ? " won" : ""}` }, el("strong", { text: "chosen in the file: " }), m.chosen),
      el("div", { class: `reply${chosenWins ? "" : " won"}` }, el("strong", { text: "rejected: " }), m.rejected)));
  }
}

$("#compare-run").addEventListener("click", async () => {
  const button = $("#compare-run");
  const status = $("#compare-status");
  $("#compare-out").replaceChildren();
  button.disabled = true;
  status.textContent = "starting…";
  try {
    await stream("/api/compare", { text: editor.getValue() }, (ev) => {
      if (ev.event === "status") status.textContent = ev.message;
      else if (ev.event === "error") { status.textContent = ""; notice(`compare: ${ev.message}`); }
      else if (ev.event === "done") { status.textContent = `done in ${ev.seconds ?? "?"} s`; showCompare(ev); }
    });
  } catch (err) {
    status.textContent = "";
    notice(`compare: ${err.message}`);
  } finally {
    button.disabled = false;
  }
});

// ---------------------------------------------------------------------------------------------
// Probes: each one's verdict from the last run, listed beside the probes the editor's text holds

state.probeResults = {};
state.probesOn = false;

function showProbes() {
  const body = $("#probes tbody");
  body.replaceChildren();
  const inText = state.check?.probes || [];
  const ids = new Set(inText.map((p) => p.id));
  const rows = [...inText, ...Object.values(state.probeResults).filter((r) => !ids.has(r.id))];
  let passed = 0;
  for (const p of rows) {
    const r = state.probeResults[p.id];
    if (r?.status === "pass") passed += 1;
    const id = el("td", { class: "id", text: p.id });
    if (p.line) id.addEventListener("click", () => jump(p.line));
    body.append(el("tr", { "data-id": p.id, "data-status": r?.status || "not-run" }, id,
      el("td", { text: p.kind }), el("td", { text: p.principle || "all principles" }),
      el("td", { class: "result", text: r?.status || "not run" }),
      el("td", { text: r?.p == null ? "–" : r.p.toFixed(3) }),
      el("td", { class: "why", text: r?.why || "" })));
  }
  const run = Object.keys(state.probeResults).length;
  $("#probes-tab").textContent = run ? `Probes (${passed}/${run})` : `Probes${rows.length ? ` (${rows.length})` : ""}`;
}

async function runProbes() {
  const button = $("#probes-run");
  const status = $("#probes-status");
  button.disabled = true;
  status.textContent = "starting…";
  try {
    await stream("/api/probes", { text: editor.getValue() }, (ev) => {
      if (ev.event === "status") status.textContent = ev.message;
      else if (ev.event === "error") { status.textContent = ""; notice(`probes: ${ev.message}`); }
      else if (ev.event === "done") {
        state.probeResults = Object.fromEntries(ev.probes.map((r) => [r.id, r]));
        status.textContent = `${ev.passed} passed, ${ev.failed} failed` + (ev.errors ? `, ${ev.errors} unread` : "") +
          `; ${ev.readings.read} readings and ${ev.texts.written} critiques or revisions made, the rest from the cache; ${ev.seconds} s`;
        showProbes();
      }
    });
  } catch (err) {
    status.textContent = "";
    notice(`probes: ${err.message}`);
  } finally {
    button.disabled = !state.probesOn;
  }
}
$("#probes-run").addEventListener("click", runProbes);

// ---------------------------------------------------------------------------------------------
// Effective view: a layer merged with its bases, read-only

function showEffective(view) {
  const body = $("#effective tbody");
  const layers = $("#effective-layers");
  body.replaceChildren();
  layers.replaceChildren();
  $("#effective-tab").textContent = view ? `Effective (${view.layers.length} layers)` : "Effective";
  if (!view) {
    $("#effective-note").textContent = "This file extends no other: it is what a run reads.";
    return;
  }
  $("#effective-note").textContent = `${view.principles.length} principles and traits, ` +
    `${view.comparison_examples} comparison example(s); hash ${view.hash}. Layers, bases first:`;
  for (const l of view.layers) layers.append(el("li", { text: `${l.layer} (${l.name}) ${l.hash}` }));
  for (const p of view.principles) {
    body.append(el("tr", { "data-id": p.id, "data-layer": p.layer, class: p.here ? "here" : "" },
      el("td", { class: "id-ro", text: p.kind === "trait" ? `${p.id} (trait)` : p.id }),
      el("td", { text: p.from }), el("td", { text: String(p.weight) }), el("td", { text: p.question || "–" })));
  }
  for (const r of view.removed) {
    body.append(el("tr", { "data-id": r.id, class: "removed" }, el("td", { class: "id-ro", text: r.id }),
      el("td", { text: `removed by ${r.layer}` }), el("td", { text: "" }), el("td", { text: "" })));
  }
}

// ---------------------------------------------------------------------------------------------
// Diff against the file on disk

function wordDiff(text) {  // "[-gone-]" and "{+new+}" as <del>/<ins>
  const span = el("span");
  for (const part of text.split(/(\[-.*?-\]|\{\+.*?\+\})/s)) {
    if (part.startsWith("[-") && part.endsWith("-]")) span.append(el("del", { text: part.slice(2, -2) }));
    else if (part.startsWith("{+") && part.endsWith("+}")) span.append(el("ins", { text: part.slice(2, -2) }));
    else span.append(part);
  }
  return span;
}

async function showDiff() {
  try {
    const d = await api("/api/diff", { text: editor.getValue() });
    $("#diff-note").textContent = d.note || (d.changes && !d.changes.length ? "No change in meaning." : "");
    const list = $("#changes");
    list.replaceChildren();
    for (const c of d.changes || []) {
      const where = `${c.section}[${c.id}]` + (c.field && c.kind === "changed" ? `.${c.field}` : "");
      const li = el("li", { class: c.kind }, el("span", { class: "kind", text: c.kind }), " ", where);
      if (c.kind === "renamed") li.append(`: ${c.old} → ${c.new}`);
      else if (c.kind === "changed") li.append(": ", c.words != null ? wordDiff(c.words) : `${JSON.stringify(c.old)} → ${JSON.stringify(c.new)}`);
      list.append(li);
    }
    const pre = $("#diff-lines");
    pre.replaceChildren();
    for (const line of d.lines) {
      const cls = line.startsWith("@@") ? "hunk" : line.startsWith("+") ? "add" : line.startsWith("-") ? "del" : "";
      pre.append(el("div", { class: cls, text: line }));
    }
  } catch (err) {
    notice(`diff: ${err.message}`);
  }
}
$("#diff-run").addEventListener("click", showDiff);

// ---------------------------------------------------------------------------------------------

api("/api/info").then((info) => {
  $("#try-run").disabled = !info.try;
  $("#compare-run").disabled = !info.compare;
  state.probesOn = Boolean(info.probes);
  $("#probes-run").disabled = !info.probes;
  $("#pairs-file").textContent = info.pairs ? `Pairs: ${info.pairs}` : "Start the studio with --pairs FILE to compare.";
  if (info.models) $("#try-status").textContent = `policy ${info.models.policy}, feedback ${info.models.feedback}`;
}).catch((err) => notice(err.message));
load().catch((err) => notice(err.message));
