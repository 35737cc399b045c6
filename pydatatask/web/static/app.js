// The page of a pydatatask pipeline: counts kept live by server-sent events, the graph,
// the keys of a task by state (paged and searched by the server), a job's record and log,
// and the recent failures. Routes live in the location hash: #/, #/keys?..., #/job?...
// Every address asked for is relative to the page's (served at / for one pipeline, at
// /p/NAME/ for one of several).
"use strict";

const settings = JSON.parse(document.getElementById("settings").textContent || "{}");
const PAGE = 100;
const $ = (id) => document.getElementById(id);
let states = [];
let counts = {};
let current = null; // the view shown: {view, params}

if (settings.name) {
  document.title = settings.name + " - pydatatask";
  $("pipeline-name").textContent = settings.name;
  $("pipeline-name").hidden = false;
  $("index").href = settings.index;
  $("index").hidden = false;
}

if (location.hash.startsWith("#token=")) {
  sessionStorage.setItem("pdt-token", decodeURIComponent(location.hash.slice(7)));
  history.replaceState(null, "", location.pathname + "#/");
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function href(view, params) {
  return "#/" + view + "?" + new URLSearchParams(params).toString();
}

async function api(path, params) {
  const url = path + (params ? "?" + new URLSearchParams(params).toString() : "");
  const response = await fetch(url, { headers: { Accept: "application/json" } });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function say(text) {
  $("message").textContent = text || "";
}

// ------------------------------------------------------------------ the counts table
function drawTable(tasks) {
  const thead = $("tasks").tHead;
  const tbody = $("tasks").tBodies[0];
  const names = Object.keys(tasks);
  thead.replaceChildren(
    el("tr", {}, el("th", { text: "task" }), ...states.map((s) => el("th", { text: s })),
      el("th", { text: "jobs/s" }), el("th", { text: "time left" })));
  tbody.replaceChildren(...names.map((name) => {
    const row = el("tr", { "data-task": name }, el("td", { text: name }));
    for (const s of states) {
      const cell = el("td", { "data-task": name, "data-state": s });
      cell.append(el("a", { href: href("keys", { task: name, state: s }) }));
      row.append(cell);
    }
    row.append(el("td", { class: "throughput" }), el("td", { class: "eta" }));
    return row;
  }));
}

function fillCounts(all) {
  counts = all;
  for (const [name, c] of Object.entries(all)) {
    for (const s of states) {
      const cell = document.querySelector(`td[data-task="${CSS.escape(name)}"][data-state="${s}"]`);
      if (!cell) continue;
      const n = c[s] || 0;
      cell.firstChild.textContent = String(n);
      cell.classList.toggle("zero", n === 0);
    }
    const label = document.querySelector(`svg text.counts[data-task="${CSS.escape(name)}"]`);
    if (label) {
      label.textContent = `${c.succeeded || 0} ok · ${c.failed || 0} failed · ${(c.running || 0) + (c.retrying || 0)} running · ${c.ready || 0} ready`;
    }
  }
}

function fillRates(tasks) {
  for (const [name, t] of Object.entries(tasks)) {
    const row = document.querySelector(`tr[data-task="${CSS.escape(name)}"]`);
    if (!row) continue;
    row.querySelector(".throughput").textContent = t.throughput == null ? "" : t.throughput.toFixed(2);
    row.querySelector(".eta").textContent = t.eta_seconds == null ? "" : duration(t.eta_seconds);
  }
}

function duration(seconds) {
  if (seconds < 60) return Math.round(seconds) + "s";
  if (seconds < 3600) return Math.round(seconds / 60) + "m";
  return (seconds / 3600).toFixed(1) + "h";
}

async function loadStatus() {
  const status = await api("api/status");
  states = status.states;
  $("source").textContent = status.source === "scheduler" ? "live run" : "from the repositories";
  drawTable(status.tasks);
  fillCounts(Object.fromEntries(Object.entries(status.tasks).map(([n, t]) => [n, t.counts])));
  fillRates(status.tasks);
  if (settings.allow_actions) $("actions").hidden = false;
  $("source").textContent += status.records_pending ? ` (reading ${status.records_pending} job records)` : "";
  if (status.records_pending) setTimeout(() => loadStatus().catch((e) => say(e.message)), 1000);
  return status;
}

async function loadGraph() {
  const response = await fetch("graph.svg");
  $("graph").innerHTML = await response.text();
  for (const node of $("graph").querySelectorAll("g.node.task")) {
    node.addEventListener("click", () => { location.hash = href("keys", { task: node.dataset.task, state: "ready" }); });
  }
  fillCounts(counts);
}

async function loadFailures() {
  const { failures } = await api("api/failures", { limit: 20 });
  const list = $("failures");
  if (!failures.length) { list.replaceChildren(el("li", { class: "none", text: "none" })); return; }
  list.replaceChildren(...failures.map((f) => el("li", { "data-task": f.task, "data-key": f.key },
    el("span", { class: "when", text: f.end_time.replace("T", " ").slice(0, 19) }),
    el("a", { class: "job-link", href: href("job", { task: f.task, key: f.key }), text: `${f.task} ${f.key}` }),
    el("span", { class: "err", text: `${f.error_type || "exit code " + f.exit_code}: ${f.message}` }))));
}

// ------------------------------------------------------------------ the keys of a task
async function showKeys(params) {
  const offset = Number(params.get("offset") || 0);
  const q = params.get("q") || "";
  const task = params.get("task");
  const state = params.get("state");
  $("keys-title").textContent = `${task}: ${state}`;
  if ($("search").value !== q && document.activeElement !== $("search")) $("search").value = q;
  const page = await api("api/keys", { task, state, q, offset, limit: PAGE });
  const list = $("key-list");
  list.replaceChildren(...page.keys.map((k) => el("li", {},
    el("a", { href: href("job", { task, key: k }), text: k }))));
  const last = Math.min(page.offset + page.keys.length, page.matched);
  const of = q ? `${page.matched} matching (of ${page.total})` : `${page.total}`;
  $("keys-range").textContent = page.matched ? `${page.offset + 1}–${last} of ${of}` : `none of ${page.total}`;
  $("prev").disabled = page.offset === 0;
  $("next").disabled = last >= page.matched;
  $("redo-failed").hidden = !(settings.allow_actions && state === "failed" && page.total > 0);
}

function moveKeys(delta) {
  const params = new URLSearchParams(current.params);
  const offset = Math.max(0, Number(params.get("offset") || 0) + delta);
  params.set("offset", String(offset));
  location.hash = "#/keys?" + params.toString();
}

$("prev").addEventListener("click", () => moveKeys(-PAGE));
$("next").addEventListener("click", () => moveKeys(PAGE));
let searchTimer = null;
$("search").addEventListener("input", () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => {
    const params = new URLSearchParams(current.params);
    params.set("q", $("search").value);
    params.set("offset", "0");
    location.hash = "#/keys?" + params.toString();
  }, 200);
});
$("search-form").addEventListener("submit", (e) => e.preventDefault());

// ------------------------------------------------------------------ a job
let logTimer = null;

async function showJob(params) {
  const task = params.get("task");
  const key = params.get("key");
  const job = await api("api/job", { task, key });
  $("job-title").textContent = `${task} ${key}`;
  $("job-state").textContent = "state: " + (job.state || "unknown");
  const record = job.record || {};
  const rows = [["state", record.state], ["attempts", record.attempts], ["start", record.start_time],
    ["end", record.end_time], ["duration", record.duration == null ? null : record.duration + " s"],
    ["host", record.host], ["runner", record.runner], ["exit code", record.exit_code]];
  if (job.claim) rows.push(["claimed by", `${job.claim.owner || "?"} (${job.claim.state || "running"})`]);
  for (const c of job.corrupt || []) rows.push([`corrupt ${c.what}`, c.message]);
  $("record").replaceChildren(...rows.filter(([, v]) => v != null && v !== "")
    .map(([k, v]) => el("tr", {}, el("th", { text: k }), el("td", { text: String(v) }))));
  const error = record.error;
  $("error-box").hidden = !error;
  $("traceback").textContent = error ? (error.traceback || `${error.type}: ${error.message}`) : "";
  $("links").replaceChildren(...job.links.map((l) => {
    const item = el("li", { text: `${l.kind} ${l.link}: ${l.repository} — ${l.present ? "present" : "absent"}` });
    for (const t of l.tasks) {
      item.append(" ", el("a", { href: href("job", { task: t, key }), text: (l.kind === "input" ? "from " : "to ") + t }));
    }
    return item;
  }));
  $("redo-key").hidden = !(settings.allow_actions && job.record);
  if (job.live_log) streamLog(task, key);
  else await loadLog(task, key, job.state);
}

// the log of a job running in this server's process, line by line as it comes; when the
// job ends, the job is shown anew (its record and stored log)
let liveLog = null;

function stopLive() {
  if (liveLog) liveLog.close();
  liveLog = null;
}

function streamLog(task, key) {
  clearTimeout(logTimer);
  stopLive();
  let lines = [];
  let output = "";
  let skipped = 0;
  let batch = "";
  $("log").textContent = "";
  $("log-note").textContent = "(live)";
  const source = new EventSource("api/log/live?" + new URLSearchParams({ task, key }).toString());
  liveLog = source;
  const here = () => liveLog === source && current.view === "job" &&
    current.params.get("task") === task && current.params.get("key") === key;
  source.onmessage = (message) => {
    if (!here()) return;
    const e = JSON.parse(message.data);
    if (e.end) {
      stopLive();
      showJob(current.params).catch((err) => say(err.message));
      return;
    }
    if (e.reset) {
      if (lines.length) lines.push(`--- attempt ${e.attempt} ---`);
      else skipped = e.skipped || 0;
      batch = e.batch ? `; the log of a batch of ${e.batch.size} keys, from ${e.batch.keys[0]}` : "";
    }
    lines.push(...(e.lines || []));
    if (lines.length > 5000) { skipped += lines.length - 5000; lines = lines.slice(-5000); }
    if (e.output !== undefined) output = e.output;
    $("log").textContent = lines.join("\n") + (lines.length ? "\n" : "") +
      (output ? "--- output so far ---\n" + output : "");
    $("log-note").textContent = `(live, attempt ${e.attempt}` + batch +
      (skipped ? `; the last lines, ${skipped} before them` : "") + ")";
  };
  source.onerror = () => {
    if (!here()) return;
    stopLive(); // the server is gone or the job ended with it: read the job again later
    $("log-note").textContent = "(live log interrupted)";
    logTimer = setTimeout(() => { if (current.view === "job") showJob(current.params); }, 2000);
  };
}

async function loadLog(task, key, state) {
  clearTimeout(logTimer);
  stopLive();
  const log = await api("api/log", { task, key }).catch((e) => ({ text: null, why: e.message }));
  $("log").textContent = log.text == null ? "" : log.text;
  $("log-note").textContent = log.text == null ? `(${log.why})` : (log.offset ? `(last ${log.size - log.offset} of ${log.size} bytes)` : "");
  if (state === "running" || state === "retrying") {
    logTimer = setTimeout(() => { if (current.view === "job") showJob(current.params); }, 2000);
  }
}

// ------------------------------------------------------------------ actions
async function act(name, body, question) {
  if (!confirm(question)) return;
  const headers = { "Content-Type": "application/json", "X-Pydatatask-Action": "1" };
  const token = sessionStorage.getItem("pdt-token");
  if (token) headers.Authorization = "Bearer " + token;
  const response = await fetch("api/actions/" + name, { method: "POST", headers, body: JSON.stringify(body) });
  const result = await response.json();
  say(response.ok ? "" : result.error);
  if (response.ok) route();
}

$("pause").addEventListener("click", () => act("stop", {}, "Stop launching jobs? Running jobs go on."));
$("resume").addEventListener("click", () => act("resume", {}, "Launch jobs again?"));
$("redo-key").addEventListener("click", () => {
  const task = current.params.get("task");
  const key = current.params.get("key");
  act("redo", { task, keys: [key] }, `Remove the outputs and record of ${task} ${key} so that it runs again?`);
});
$("redo-failed").addEventListener("click", () => {
  const task = current.params.get("task");
  act("redo", { task, state: "failed" }, `Remove the outputs and records of every failed key of ${task} so that they run again?`);
});

// ------------------------------------------------------------------ routing and live updates
async function route() {
  const hash = location.hash.replace(/^#\/?/, "");
  const [view, query] = hash.split("?");
  current = { view: view || "overview", params: new URLSearchParams(query || "") };
  for (const id of ["overview", "keys", "job"]) $(id).hidden = id !== current.view;
  if (current.view !== "job") { clearTimeout(logTimer); stopLive(); }
  say("");
  try {
    if (current.view === "keys") await showKeys(current.params);
    else if (current.view === "job") await showJob(current.params);
    else await loadFailures();
  } catch (e) {
    say(e.message);
  }
}

function listen() {
  const source = new EventSource("api/events");
  source.onopen = () => { $("conn").textContent = "live"; $("conn").className = "conn on"; };
  source.onerror = () => { $("conn").textContent = "disconnected"; $("conn").className = "conn off"; };
  source.onmessage = (message) => {
    const data = JSON.parse(message.data);
    fillCounts(data.counts);
    if (data.failures_changed && current.view === "overview") loadFailures().catch((e) => say(e.message));
    if (current.view === "keys") {
      const task = current.params.get("task");
      const state = current.params.get("state");
      const n = (data.counts[task] || {})[state];
      if (n !== Number(($("keys-range").dataset.count) || -1)) {
        $("keys-range").dataset.count = String(n);
        showKeys(current.params).catch((e) => say(e.message));
      }
    }
  };
}

async function start() {
  try {
    await loadStatus();
    await loadGraph();
  } catch (e) {
    say(e.message);
  }
  window.addEventListener("hashchange", route);
  await route();
  listen();
  setInterval(() => api("api/status").then((s) => fillRates(s.tasks)).catch(() => {}), 5000);
  document.body.dataset.ready = "1";
}

start();
