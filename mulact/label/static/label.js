// The labeling page: one query at a time, answers saved on submit (see mulact/label/app.py).
"use strict";
const CONFIG = JSON.parse(document.getElementById("config").textContent);
const INFO = CONFIG.info;
const KEYS = "1234567890abcdefghijklmnopqrstuvwyz";
const $ = (id) => document.getElementById(id);

// One id per tab: survives a reload, differs between tabs and browsers (leases are per id).
let client = sessionStorage.getItem("mulact-client");
if (!client) {
  client = (crypto.randomUUID ? crypto.randomUUID() : String(Math.random()).slice(2) + Date.now());
  sessionStorage.setItem("mulact-client", client);
}
const savedName = localStorage.getItem("mulact-annotator");
if (savedName && !$("annotator").value) $("annotator").value = savedName;
$("annotator").addEventListener("change", () => localStorage.setItem("mulact-annotator", $("annotator").value));

let current = null;      // the query on screen
let selected = new Set();
let shownAt = 0;         // performance.now() when the query's pictures were on screen
let clickSeconds = [];
let busy = false;

async function api(path, body) {
  const headers = {"Content-Type": "application/json"};
  if (CONFIG.token) headers["X-Mulact-Token"] = CONFIG.token;
  const resp = await fetch(path, {method: "POST", headers, body: JSON.stringify(body)});
  const data = await resp.json().catch(() => ({error: `HTTP ${resp.status}`}));
  if (!resp.ok) throw new Error(data.error || `HTTP ${resp.status}`);
  return data;
}

function withToken(url) {
  return CONFIG.token ? `${url}?token=${encodeURIComponent(CONFIG.token)}` : url;
}

function say(text, ok) { $("message").textContent = text; $("message").className = ok ? "ok" : ""; }

function buildButtons() {
  const n = INFO.class_names.length;
  const items = INFO.class_names.map((name, c) => ({c, name, color: INFO.colors[c]}));
  // hatched, not a flat colour: no dataset's class colour can be mistaken for it (CamVid's sky is grey)
  items.push({c: n, name: "other / none of these", color: "repeating-linear-gradient(45deg, #f2f2f2 0 2px, #3a3a3a 2px 4px)"});
  for (const [k, it] of items.entries()) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "cls";
    b.dataset.cls = it.c;
    b.dataset.key = KEYS[k] || "";
    b.setAttribute("aria-pressed", "false");
    b.innerHTML = `<span class="swatch" style="background:${it.color}"></span><span class="label"></span><kbd>${KEYS[k] || ""}</kbd>`;
    b.querySelector(".label").textContent = it.name;
    b.addEventListener("click", () => toggle(it.c));
    $("classes").appendChild(b);
  }
}

function render() {
  for (const b of document.querySelectorAll(".cls")) {
    b.setAttribute("aria-pressed", selected.has(Number(b.dataset.cls)) ? "true" : "false");
  }
  $("submit").disabled = !current || selected.size === 0 || busy;
}

function toggle(c) {
  if (!current || busy) return;
  if (INFO.labeling === "dominant") { selected = new Set(selected.has(c) ? [] : [c]); }
  else if (selected.has(c)) selected.delete(c); else selected.add(c);
  clickSeconds.push((performance.now() - shownAt) / 1000);
  render();
}

function showProgress(p) {
  $("progress").textContent = `${p.answered} of ${p.total} answered` + (current ? ` · query ${current.order + 1} of ${p.total}` : "");
}

function show(q) {
  current = q.order === null ? null : q;
  selected = new Set(q.previous_classes || []);
  clickSeconds = [];
  showProgress(q);
  if (!current) {
    $("crop").removeAttribute("src"); $("full").removeAttribute("src"); $("name").textContent = "";
    say(q.done ? `Round ${q.round} is complete: every query is answered. Run the same mulact-train command again to train on the answers.`
               : "The remaining queries are open in other browsers; waiting for one to come free…", q.done);
    render();
    if (!q.done) setTimeout(next, 10000);
    return;
  }
  $("name").textContent = `${q.name} · region ${q.region}`;
  let pending = 2;
  const loaded = () => { if (--pending === 0) shownAt = performance.now(); };
  $("crop").onload = loaded; $("full").onload = loaded;
  $("crop").src = withToken(q.crop); $("full").src = withToken(q.full);
  shownAt = performance.now();
  render();
}

async function next() {
  try { show(await api("/api/next", {client})); } catch (e) { say(e.message); }
}

async function submit() {
  if (!current || selected.size === 0 || busy) return;
  busy = true; render();
  const answer = {client, round: INFO.round, order: current.order, classes: [...selected].sort((a, b) => a - b),
                  seconds: (performance.now() - shownAt) / 1000, click_seconds: clickSeconds,
                  annotator: $("annotator").value.trim() || "anonymous"};
  try {
    const r = await api("/api/answer", answer);
    say(`saved query ${r.saved.order + 1}`, true);
    busy = false;
    await next();
  } catch (e) { say(e.message); busy = false; render(); }
}

async function undo() {
  if (busy) return;
  busy = true;
  try {
    const q = await api("/api/undo", {client, round: INFO.round});
    busy = false;
    show(q);
    say(`undid the answer to query ${q.order + 1}`, true);
  } catch (e) { busy = false; say(e.message); render(); }
}

document.addEventListener("keydown", (ev) => {
  if (ev.target === $("annotator") || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  if (ev.key === "Enter") { ev.preventDefault(); submit(); return; }
  if (ev.key === "Backspace") { ev.preventDefault(); undo(); return; }
  const b = document.querySelector(`.cls[data-key="${CSS.escape(ev.key.toLowerCase())}"]`);
  if (b) { ev.preventDefault(); toggle(Number(b.dataset.cls)); }
});
$("submit").addEventListener("click", submit);
$("undo").addEventListener("click", undo);
setInterval(() => { if (current) api("/api/renew", {client, round: INFO.round, order: current.order}).catch((e) => say(e.message)); }, 60000);

buildButtons();
next();
