// The review page: one AI-ranked pair at a time, a verdict per key press. The server says which
// pair is up, so the page keeps nothing of its own. Texts are shown with textContent, never as HTML.

const $ = (sel) => document.querySelector(sel);
const params = new URLSearchParams(location.search);
if (params.has("token")) {  // the server has set it as a cookie: keep it out of the address bar and history
  params.delete("token");
  const rest = params.toString();
  history.replaceState(null, "", location.pathname + (rest ? `?${rest}` : ""));
}

const KEYS = {
  "1": "left", ArrowLeft: "left",
  "2": "right", ArrowRight: "right",
  "0": "cant_tell", " ": "cant_tell",
  u: "undo", U: "undo",
};
const SAID = { left: "left is better", right: "right is better", cant_tell: "can't tell" };
let current = null;  // the state last shown
let busy = false;

function notice(message, kind = "error") {
  const n = $("#notice");
  n.textContent = message;
  n.dataset.kind = kind;
  n.hidden = !message;
}

async function api(url, body) {
  const init = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  const resp = await fetch(url, init);
  const data = await resp.json().catch(() => ({ error: `${resp.status} ${resp.statusText}` }));
  if (!resp.ok) throw Object.assign(new Error(data.error || resp.statusText), { status: resp.status });
  return data;
}

function message(role, content) {
  const p = document.createElement("div");
  p.className = `turn ${role}`;
  const who = document.createElement("span");
  who.className = "label";
  who.textContent = role === "user" ? "User" : role === "assistant" ? "Assistant" : role;
  const text = document.createElement("div");
  text.className = "text";
  text.textContent = content;
  p.append(who, text);
  return p;
}

function show(state) {
  current = state;
  $("#run").textContent = state.run;
  $("#reviewer").textContent = `reviewer: ${state.reviewer}`;
  const progress = $("#progress");
  progress.dataset.done = state.done;
  progress.dataset.size = state.size;
  progress.querySelector(".count").textContent =
    `${state.done} / ${state.size} reviewed` + (state.cant_tell ? ` (${state.cant_tell} can't tell)` : "");
  progress.querySelector(".fill").style.width = `${(100 * state.done) / Math.max(1, state.size)}%`;
  $("#undo").disabled = !state.can_undo;
  const item = state.item;
  $("#pair").hidden = !item;
  $("#finished").hidden = !!item;
  if (!item) {
    $("#next-step").textContent = `cai eval labeler --pairs ${state.run}`;
    return;
  }
  const pair = $("#pair");
  pair.dataset.pairId = item.pair_id;
  pair.dataset.index = item.index;
  $("#position").textContent = `Pair ${item.index + 1} of ${state.size}`;
  $("#conversation").replaceChildren(...item.conversation.map((m) => message(m.role, m.content)));
  $("#questions ul").replaceChildren(...item.principles.map((p) => {
    const li = document.createElement("li");
    li.textContent = p.question || p.id;
    li.title = p.id;
    return li;
  }));
  $("#questions").hidden = !item.principles.length;
  $("#left .text").textContent = item.left;
  $("#right .text").textContent = item.right;
  window.scrollTo(0, 0);
}

async function act(what) {
  if (busy || !current) return;
  if (what !== "undo" && !current.item) return;
  busy = true;
  document.body.dataset.busy = "1";
  try {
    const state = what === "undo"
      ? await api("/api/review/undo", {})
      : await api("/api/review/verdict", { pair_id: current.item.pair_id, choice: what });
    $("#last").textContent = what === "undo" ? "(last verdict taken back)" : `(last: ${SAID[what]})`;
    notice("");
    show(state);
  } catch (e) {
    notice(e.message);
    if (e.status === 409) show(await api("/api/review"));  // another tab moved on: show what is up now
  } finally {
    busy = false;
    delete document.body.dataset.busy;
  }
}

document.addEventListener("keydown", (e) => {
  if (e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;
  const what = KEYS[e.key];
  if (!what) return;
  e.preventDefault();
  act(what);
});
// A clicked button gives its focus back, so the space bar that follows means "can't tell", not "click it again".
for (const b of document.querySelectorAll("[data-choice]")) {
  b.addEventListener("click", () => { b.blur(); act(b.dataset.choice); });
}
$("#undo").addEventListener("click", () => { $("#undo").blur(); act("undo"); });

api("/api/review").then(show).catch((e) => notice(e.message));
