// The list of the pipelines served together: a row per pipeline with its number of tasks
// and its keys by state (summed over its tasks), linked to its page; asked for again
// every 2 s. Addresses are relative to this page's.
"use strict";

const $ = (id) => document.getElementById(id);

// a token of actions given in the address is kept for the pages of the pipelines
if (location.hash.startsWith("#token=")) {
  sessionStorage.setItem("pdt-token", decodeURIComponent(location.hash.slice(7)));
  history.replaceState(null, "", location.pathname);
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

function draw(body) {
  $("pipelines").tHead.replaceChildren(el("tr", {}, el("th", { text: "pipeline" }), el("th", { text: "tasks" }),
    ...body.states.map((s) => el("th", { text: s }))));
  $("pipelines").tBodies[0].replaceChildren(...body.pipelines.map((p) => el("tr", { "data-pipeline": p.name },
    el("td", {}, el("a", { class: "pipeline", href: p.url, text: p.name })),
    el("td", { class: "tasks", text: String(Object.keys(p.tasks).length) }),
    ...body.states.map((s) => {
      const n = p.counts[s] || 0;
      return el("td", { "data-state": s, class: n ? "" : "zero", text: String(n) });
    }))));
}

async function refresh() {
  try {
    const response = await fetch("api/pipelines", { headers: { Accept: "application/json" } });
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || response.statusText);
    draw(body);
    $("message").textContent = "";
  } catch (e) {
    $("message").textContent = e.message;
  }
  document.body.dataset.ready = "1";
}

refresh();
setInterval(refresh, 2000);
