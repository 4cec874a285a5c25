// The dashboard's one script: hash routes (#/pipelines, #/pipelines/<id>, #/models, #/repos)
// over the gateway's JSON API. The API key lives in this tab's sessionStorage and travels only
// in the Authorization header (and as the log WebSocket's first message), never in a URL.
"use strict";

const KEY_STORAGE = "mlops.apiKey";
const REFRESH_MS = 2000;
const PAGE_SIZE = 50;
const CHART_POINTS = 60;
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const STATUSES = ["queued", "cloning", "validating", "executing", "converting", "verifying",
  "registering", "deploying", "succeeded", "failed", "cancelled"];

// What the current view started, stopped when another view opens.
let timers = [];
let sockets = [];
let viewToken = 0;

class Unauthorized extends Error {}

// --- DOM ---------------------------------------------------------------------------------

/** An element with attributes and children; text is always set as text, never as HTML. */
function h(tag, attrs, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else element.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : String(child));
  }
  return element;
}

function svg(tag, attrs) {
  const element = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attrs)) element.setAttribute(name, value);
  return element;
}

const view = () => document.getElementById("view");

function seconds(value) {
  if (value === null || value === undefined) return "";
  return value < 60 ? `${value.toFixed(1)} s` : `${Math.floor(value / 60)} min ${Math.round(value % 60)} s`;
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

function statusBadge(status) {
  return h("span", { class: `status status-${status}`, "data-status": status }, status);
}

// --- API ---------------------------------------------------------------------------------

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  const key = sessionStorage.getItem(KEY_STORAGE);
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401) {
    askForKey(sessionStorage.getItem(KEY_STORAGE) ? "that key was refused" : null);
    throw new Unauthorized();
  }
  document.getElementById("nav").hidden = false;  // only once the key (or none) is accepted
  const answer = response.status === 204 ? null : await response.json().catch(() => null);
  if (!response.ok) {
    const error = new Error((answer && answer.detail) || `${response.status} ${response.statusText}`);
    error.status = response.status;
    throw error;
  }
  return { status: response.status, body: answer };
}

const get = async (path) => (await api("GET", path)).body;

/** Run `work` now and every REFRESH_MS while its view is open. */
function every(work) {
  const token = viewToken;
  let busy = false;
  timers.push(setInterval(async () => {
    if (busy || token !== viewToken) return;
    busy = true;
    try { await work(); } catch (error) { if (!(error instanceof Unauthorized)) console.warn(error); }
    busy = false;
  }, REFRESH_MS));
  return work();  // the first run's failure is the view's to show
}

// --- key prompt --------------------------------------------------------------------------

function askForKey(problem) {
  stopView();
  view().replaceChildren();
  document.getElementById("nav").hidden = true;
  const prompt = document.getElementById("key-prompt");
  prompt.hidden = false;
  const error = document.getElementById("key-error");
  error.hidden = !problem;
  error.textContent = problem || "";
  document.getElementById("key-input").focus();
}

function setUpKeyPrompt() {
  const prompt = document.getElementById("key-prompt");
  prompt.addEventListener("submit", (event) => {
    event.preventDefault();
    const input = document.getElementById("key-input");
    sessionStorage.setItem(KEY_STORAGE, input.value);
    input.value = "";
    prompt.hidden = true;
    route();
  });
  document.getElementById("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    askForKey(null);
  });
}

// --- routing -----------------------------------------------------------------------------

function stopView() {
  viewToken += 1;
  timers.forEach(clearInterval);
  timers = [];
  sockets.forEach((socket) => socket.close());
  sockets = [];
}

async function route() {
  stopView();
  const [, section, id] = (location.hash || "#/pipelines").split("/");
  document.getElementById("key-prompt").hidden = true;
  const nav = document.getElementById("nav");
  document.getElementById("forget-key").hidden = !sessionStorage.getItem(KEY_STORAGE);
  for (const link of nav.querySelectorAll("a[data-view]")) {
    link.classList.toggle("current", link.dataset.view === section);
  }
  const pages = { pipelines: id ? () => pipelinePage(decodeURIComponent(id)) : pipelineList,
    models: modelsPage, repos: reposPage };
  try {
    await (pages[section] || pipelineList)();
  } catch (error) {
    if (!(error instanceof Unauthorized)) view().replaceChildren(h("p", { class: "error" }, error.message));
  }
}

// --- pipelines -----------------------------------------------------------------------------

const listState = { page: 1, repository: "", status: "" };

async function pipelineList() {
  const repos = await get("/repos");
  const names = new Map(repos.map((r) => [r.id, r.full_name]));
  const repoFilter = h("select", { id: "filter-repository", "aria-label": "repository" },
    h("option", { value: "" }, "every repository"),
    repos.map((r) => h("option", { value: r.id, selected: String(r.id) === listState.repository }, `${r.full_name} (${r.branch})`)));
  const statusFilter = h("select", { id: "filter-status", "aria-label": "status" },
    h("option", { value: "" }, "every status"),
    STATUSES.map((s) => h("option", { value: s, selected: s === listState.status }, s)));
  const body = h("tbody", { id: "pipeline-rows" });
  const pager = h("span", { class: "muted", id: "pipeline-pager" });
  const previous = h("button", { type: "button", onclick: () => { listState.page -= 1; refresh(); } }, "Newer");
  const next = h("button", { type: "button", onclick: () => { listState.page += 1; refresh(); } }, "Older");
  const onFilter = () => {
    listState.repository = repoFilter.value;
    listState.status = statusFilter.value;
    listState.page = 1;
    refresh();
  };
  repoFilter.addEventListener("change", onFilter);
  statusFilter.addEventListener("change", onFilter);
  view().replaceChildren(
    h("h1", {}, "Pipelines"),
    h("div", { class: "filters" }, repoFilter, statusFilter, previous, next, pager),
    h("table", {}, h("thead", {}, h("tr", {}, ["Pipeline", "Repository", "Status", "Stage",
      "Model", "Commit", "Created", "Duration"].map((t) => h("th", {}, t)))), body));

  async function refresh() {
    const query = new URLSearchParams({ page: listState.page, size: PAGE_SIZE });
    if (listState.repository) query.set("repository_id", listState.repository);
    if (listState.status) query.set("status", listState.status);
    const page = await get(`/pipelines?${query}`);
    const pages = Math.max(1, Math.ceil(page.total / PAGE_SIZE));
    previous.disabled = listState.page <= 1;
    next.disabled = listState.page >= pages;
    pager.textContent = `${page.total} pipeline${page.total === 1 ? "" : "s"}, page ${listState.page} of ${pages}`;
    body.replaceChildren(...page.items.map((p) => h("tr", { "data-pipeline-id": p.id },
      h("td", {}, h("a", { href: `#/pipelines/${p.id}`, class: "mono" }, p.id.slice(0, 8))),
      h("td", {}, p.repository_id === null ? "(deleted)" : names.get(p.repository_id) || `#${p.repository_id}`),
      h("td", {}, statusBadge(p.status)),
      h("td", {}, p.stage || ""),
      h("td", {}, [p.model_name, p.model_version && `v${p.model_version}`].filter(Boolean).join(" ")),
      h("td", { class: "mono" }, p.commit_sha.slice(0, 8)),
      h("td", {}, when(p.created_at)),
      h("td", {}, seconds(p.duration_s)))));
    if (!page.items.length) body.append(h("tr", {}, h("td", { colspan: 8, class: "muted" }, "No pipeline.")));
    // The first render after the page loaded: what the first-paint test measures.
    if (!performance.getEntriesByName("pipelines-rendered").length) performance.mark("pipelines-rendered");
  }
  await every(refresh);
}

async function pipelinePage(id) {
  const head = h("div", { id: "pipeline-head" });
  const log = h("pre", { class: "log", id: "pipeline-log" });
  view().replaceChildren(h("p", {}, h("a", { href: "#/pipelines" }, "← Pipelines")), head,
    h("h2", {}, "Log"), log);
  let ended = false;
  const refresh = async () => {
    if (ended) return;
    const p = await get(`/pipelines/${encodeURIComponent(id)}`);
    ended = TERMINAL.has(p.status);
    head.replaceChildren(...pipelineSummary(p));
  };
  followLog(id, log, () => { ended = false; refresh(); });
  await every(refresh);
}

function pipelineSummary(p) {
  const parts = [];
  if (p.error) {
    parts.push(h("div", { class: "failure", id: "pipeline-failure" },
      h("strong", {}, `Failed in ${p.error.stage || "an unknown stage"}`),
      h("pre", {}, p.error.message)));
  }
  parts.push(h("h1", {}, "Pipeline ", h("span", { class: "mono" }, p.id), " ", statusBadge(p.status)));
  const facts = [
    ["Stage", p.stage], ["Commit", `${p.commit_sha.slice(0, 12)} on ${p.branch}`], ["Trigger", p.trigger],
    ["Model", [p.model_name, p.model_version && `version ${p.model_version}`].filter(Boolean).join(" ")],
    ["Notebook version", p.notebook_version], ["Attempts", p.attempts],
    ["Created", when(p.created_at)], ["Finished", when(p.finished_at)], ["Duration", seconds(p.duration_s)],
    ["Waiting for", p.waiting_for],
    ["Rollout", p.rollout ? `${p.rollout.state}${p.rollout.reason ? `: ${p.rollout.reason}` : ""}` : null],
  ].filter(([, value]) => value !== null && value !== undefined && value !== "");
  parts.push(h("table", { class: "facts" }, facts.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v)))));
  const stages = Object.entries(p.stage_timings || {});
  if (stages.length) {
    const total = stages.reduce((sum, [, s]) => sum + s, 0) || 1;
    parts.push(h("h2", {}, "Stages"),
      h("div", { class: "timeline", id: "stage-timeline" }, stages.map(([stage, s]) =>
        h("span", { style: `flex: ${Math.max(s / total, 0.02)}`, title: `${stage}: ${seconds(s)}` }, stage))),
      h("table", {}, stages.map(([stage, s]) => h("tr", { "data-stage": stage }, h("td", {}, stage), h("td", {}, seconds(s))))));
  }
  return parts;
}

/** The pipeline's log over the WebSocket: the key goes as the first message (subprotocol
 * `mlops.key-message`), as a browser cannot set the Authorization header there. */
function followLog(id, log, onEnd) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(`${scheme}//${location.host}/ws/pipelines/${encodeURIComponent(id)}/logs`,
    ["mlops.key-message"]);
  sockets.push(socket);
  socket.addEventListener("open", () => socket.send(sessionStorage.getItem(KEY_STORAGE) || ""));
  socket.addEventListener("message", (event) => {
    const entry = JSON.parse(event.data);
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    if (entry.end) {
      log.append(h("div", { class: "muted", "data-end": entry.end }, `— ended: ${entry.end}`));
      onEnd();
    } else {
      log.append(h("div", { "data-seq": entry.seq }, entry.line));
    }
    if (atBottom) log.scrollTop = log.scrollHeight;
  });
  socket.addEventListener("close", (event) => {
    if (event.code === 4401) askForKey("that key was refused");
    else if (event.code !== 1000 && sockets.includes(socket)) {
      log.append(h("div", { class: "error" }, `log stream closed: ${event.code} ${event.reason}`));
    }
  });
}

// --- models ------------------------------------------------------------------------------

async function modelsPage() {
  const list = h("div", { id: "model-list" });
  view().replaceChildren(h("h1", {}, "Models"), list);
  const cards = new Map();
  await every(async () => {
    const answer = await get("/models");
    if (!answer.registry_reachable) {
      list.dataset.registry = "unreachable";
    }
    if (!answer.models.length) {
      list.replaceChildren(h("p", { class: "muted" }, "No model is deployed yet."));
      cards.clear();
      return;
    }
    for (const [name, card] of cards) {
      if (!answer.models.some((m) => m.name === name)) { card.element.remove(); cards.delete(name); }
    }
    if (list.querySelector("p.muted")) list.replaceChildren();
    for (const model of answer.models) {
      if (!cards.has(model.name)) {
        const card = modelCard(model.name);
        cards.set(model.name, card);
        list.append(card.element);
      }
      await cards.get(model.name).update(model);
    }
  });
}

function modelCard(name) {
  const summary = h("div", { class: "model-summary" });
  const chart = new Sparkline(name);
  const rollout = h("div", { class: "model-rollout" });
  const select = h("select", { class: "rollback-version", "aria-label": "version" });
  const message = h("p", { class: "rollback-message" });
  const button = h("button", { type: "button", class: "rollback" }, "Roll back");
  button.addEventListener("click", async () => {
    const version = select.value;
    if (!version || !confirm(`Make version ${version} of ${name} active on every replica?`)) return;
    button.disabled = true;
    message.className = "rollback-message muted";
    message.textContent = `rolling back to version ${version}…`;
    try {
      const { body } = await api("POST", `/models/${encodeURIComponent(name)}/rollback`, { version });
      message.className = "rollback-message notice";
      message.textContent = `version ${body.active_version} is active (was ${body.previous_version || "none"})`;
    } catch (error) {
      message.className = "rollback-message error";
      message.textContent = error.message;
    }
    button.disabled = false;
  });
  const element = h("section", { class: "card model", "data-model": name },
    h("h2", {}, name), summary, chart.element,
    h("div", { class: "row" }, "Roll back to", select, button), message, rollout);
  let shownVersions = "";
  return {
    element,
    async update(model) {
      summary.replaceChildren(...modelSummary(model));
      const versions = model.versions.map((v) => v.version);
      if (versions.join() !== shownVersions) {
        shownVersions = versions.join();
        const chosen = select.value;
        select.replaceChildren(...versions.map((v) => h("option", { value: v, selected: v === chosen }, v)));
      }
      const [stats, current] = await Promise.all([
        get(`/models/${encodeURIComponent(name)}/stats`),
        api("GET", `/models/${encodeURIComponent(name)}/rollouts/current`).then((a) => a.body,
          (error) => { if (error.status === 404) return null; throw error; }),
      ]);
      chart.add(stats);
      rollout.replaceChildren(...(current ? rolloutPanel(name, current) : []));
    },
  };
}

function modelSummary(model) {
  const rows = model.versions.map((v) => h("tr", { "data-version": v.version },
    h("td", {}, v.version),
    h("td", {}, v.version === model.active_version ? h("strong", { class: "active-mark" }, "active")
      : model.warm_versions.includes(v.version) ? "warm" : ""),
    h("td", {}, v.status || ""), h("td", {}, when(v.created_at))));
  const replicas = model.replicas.map((r) => h("tr", { "data-replica": r.replica_id },
    h("td", { class: "mono" }, r.replica_id), h("td", {}, r.active || "none"),
    h("td", {}, r.loaded.join(", ")),
    h("td", { class: "error" }, Object.entries(r.failed).map(([v, why]) => `${v}: ${why}`).join("; "))));
  return [
    h("p", {}, "Active version ", h("strong", { class: "active-version" }, model.active_version || "none"),
      model.candidate ? ` · candidate ${model.candidate.version} at ${Math.round(model.candidate.weight * 100)}%` : ""),
    h("table", {}, h("thead", {}, h("tr", {}, ["Version", "", "Registry", "Registered"].map((t) => h("th", {}, t)))),
      h("tbody", {}, rows)),
    h("h2", {}, "Replicas"),
    h("table", {}, h("thead", {}, h("tr", {}, ["Replica", "Serves", "Loaded", "Failed to load"].map((t) => h("th", {}, t)))),
      h("tbody", {}, replicas.length ? replicas : h("tr", {}, h("td", { colspan: 4, class: "muted" }, "No live replica.")))),
  ];
}

function rolloutPanel(name, rollout) {
  const act = (what) => async () => {
    if (!confirm(`${what === "promote" ? "Promote" : "Abort"} the rollout of ${name} version ${rollout.candidate}?`)) return;
    try { await api("POST", `/models/${encodeURIComponent(name)}/rollouts/current/${what}`); }
    catch (error) { alert(error.message); }
  };
  const figures = (f) => f ? h("span", { class: "figures" }, figuresText(f)) : "";
  return [
    h("h2", {}, `Rollout: version ${rollout.candidate} against ${rollout.champion} (${rollout.strategy}, ${rollout.state})`),
    h("div", { class: "row" },
      h("button", { type: "button", class: "promote", onclick: act("promote") }, "Promote"),
      h("button", { type: "button", class: "abort", onclick: act("abort") }, "Abort")),
    h("table", { class: "rollout-steps" },
      h("thead", {}, h("tr", {}, ["Step", "Weight", "Started", "Decision", "Reason", "Figures"].map((t) => h("th", {}, t)))),
      h("tbody", {}, rollout.steps.map((s, i) => h("tr", { class: i === rollout.step ? "current" : "" },
        h("td", {}, i + 1 + (i === rollout.step ? " (now)" : "")), h("td", {}, `${Math.round(s.weight * 100)}%`),
        h("td", {}, when(s.started_at)), h("td", {}, s.decision || ""), h("td", {}, s.reason || ""),
        h("td", {}, figures(i === rollout.step && rollout.live ? rollout.live : s.figures)))))),
    h("h2", {}, "Decisions"),
    h("ul", {}, rollout.decisions.map((d) => h("li", {}, `${when(d.at)} step ${d.step + 1}: ${d.action}: ${d.reason} `, figures(d.figures)))),
  ];
}

/** A step's figures (mlops_core.rollout_analysis.StepFigures.as_dict) in a line. */
function figuresText(f) {
  const side = (role, x) => x ? `${role} ${x.version}: ${x.requests} requests, ${x.errors} errors` +
    (x.p99_ms === null || x.p99_ms === undefined ? "" : `, p99 ${x.p99_ms.toFixed(2)} ms`) : "";
  const parts = [side("champion", f.champion), side("candidate", f.candidate)];
  if (f.agreement && f.agreement.compared) {
    parts.push(`agreement ${(f.agreement.share * 100).toFixed(1)}% of ${f.agreement.compared}`);
  }
  const text = parts.filter(Boolean).join("; ");
  return text || JSON.stringify(f);
}

/** Requests/s and p99 of a model over the last CHART_POINTS samples, from the differences
 * between consecutive reads of its counters (a replica restart resets them: a drop reads 0). */
class Sparkline {
  constructor(name) {
    this.last = null;
    this.points = [];
    this.plot = svg("svg", { width: 360, height: 60, viewBox: "0 0 360 60", role: "img",
      "aria-label": `${name} requests per second and p99` });
    this.label = h("span", { class: "muted chart-label" }, "collecting…");
    this.element = h("div", { class: "chart row" }, this.plot, this.label);
  }

  add(sample) {
    const totals = sumVersions(sample);
    if (this.last) {
      const elapsed = sample.at - this.last.at;
      const requests = Math.max(0, totals.requests - this.last.totals.requests);
      const buckets = totals.latency.map((count, i) => Math.max(0, count - (this.last.totals.latency[i] || 0)));
      if (elapsed > 0) {
        this.points.push({ rate: requests / elapsed, p99: percentileMs(buckets, 0.99, sample.latency_buckets_s) });
        this.points = this.points.slice(-CHART_POINTS);
      }
    }
    this.last = { at: sample.at, totals };
    this.draw();
  }

  draw() {
    const line = (values, cls) => {
      const top = Math.max(...values, 1e-9);
      const step = 360 / (CHART_POINTS - 1);
      // The newest sample at the right edge.
      const offset = CHART_POINTS - values.length;
      const coordinates = values.map((v, i) => `${((offset + i) * step).toFixed(1)},${(57 - (v / top) * 54).toFixed(1)}`);
      return svg("polyline", { class: cls, points: coordinates.join(" ") });
    };
    const latest = this.points[this.points.length - 1];
    this.plot.replaceChildren(line(this.points.map((p) => p.rate), "rate"),
      line(this.points.map((p) => p.p99 || 0), "p99"));
    if (latest) {
      this.label.replaceChildren(h("span", { class: "rate-value" }, `${latest.rate.toFixed(1)} req/s`), " · ",
        h("span", { class: "p99-value" }, latest.p99 === null ? "p99 –" : `p99 ${latest.p99.toFixed(1)} ms`),
        h("span", { class: "muted" }, ` (last ${Math.round(REFRESH_MS / 1000)} s; ${CHART_POINTS * REFRESH_MS / 1000 / 60} min shown)`));
    }
  }
}

function sumVersions(sample) {
  const latency = new Array(sample.latency_buckets_s.length + 1).fill(0);
  let requests = 0;
  for (const counters of Object.values(sample.versions)) {
    requests += counters.requests;
    counters.latency.forEach((count, i) => { latency[i] += count; });
  }
  return { requests, latency };
}

/** As mlops_core.rollout_analysis.percentile_ms: the quantile, interpolated in its bucket. */
function percentileMs(buckets, quantile, bounds) {
  const total = buckets.reduce((a, b) => a + b, 0);
  if (!total) return null;
  const rank = quantile * total;
  let seen = 0;
  for (let i = 0; i < buckets.length; i += 1) {
    const count = buckets[i];
    if (count && seen + count >= rank) {
      if (i >= bounds.length) return bounds[bounds.length - 1] * 1000;
      const lower = i > 0 ? bounds[i - 1] : 0;
      return (lower + (bounds[i] - lower) * (rank - seen) / count) * 1000;
    }
    seen += count;
  }
  return bounds[bounds.length - 1] * 1000;
}

// --- repositories ------------------------------------------------------------------------

async function reposPage() {
  const message = h("p", { id: "repo-message" });
  const field = (name, label, attrs) => [h("label", { for: `repo-${name}` }, label),
    h("input", { id: `repo-${name}`, name, ...attrs })];
  const form = h("form", { class: "register", id: "register-repo", autocomplete: "off" },
    field("github_url", "Repository URL", { required: true, placeholder: "https://github.com/owner/name" }),
    field("branch", "Branch", { value: "main" }),
    field("notebook_path", "Notebook", { required: true, placeholder: "notebooks/train.ipynb" }),
    field("github_token", "Token (private)", { type: "password" }),
    h("span"), h("button", { type: "submit" }, "Register"));
  const body = h("tbody", { id: "repo-rows" });
  view().replaceChildren(h("h1", {}, "Repositories"), h("div", { class: "card" }, form, message),
    h("table", {}, h("thead", {}, h("tr", {}, ["Id", "Repository", "Branch", "Notebook", "Token", ""].map((t) => h("th", {}, t)))), body));

  const say = (text, ok, link) => {
    message.className = ok ? "notice" : "error";
    message.replaceChildren(text, link ? h("a", { href: link }, " open it") : "");
  };
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const values = Object.fromEntries(new FormData(form));
    if (!values.github_token) delete values.github_token;
    try {
      const { body: repo } = await api("POST", "/repos", values);
      say(`registered ${repo.full_name} (id ${repo.id})`, true);
      form.reset();
      await refresh();
    } catch (error) {
      if (!(error instanceof Unauthorized)) say(error.message, false);
    }
  });

  async function refresh() {
    const repos = await get("/repos");
    body.replaceChildren(...repos.map((r) => h("tr", { "data-repo-id": r.id },
      h("td", {}, r.id), h("td", {}, h("span", { title: r.github_url }, r.full_name)), h("td", {}, r.branch),
      h("td", { class: "mono" }, r.notebook_path), h("td", {}, r.has_token ? "yes" : ""),
      h("td", {},
        h("button", { type: "button", class: "trigger", onclick: async () => {
          try {
            const { body: p } = await api("POST", `/repos/${r.id}/trigger`);
            say(`pipeline ${p.id} queued${p.note ? ` (${p.note})` : ""}`, true, `#/pipelines/${p.id}`);
          } catch (error) { if (!(error instanceof Unauthorized)) say(error.message, false); }
        } }, "Trigger"), " ",
        h("button", { type: "button", class: "delete", onclick: async () => {
          if (!confirm(`Forget ${r.full_name} (${r.branch}, ${r.notebook_path})? Its pipelines stay.`)) return;
          try { await api("DELETE", `/repos/${r.id}`); say(`deleted ${r.full_name}`, true); await refresh(); }
          catch (error) { if (!(error instanceof Unauthorized)) say(error.message, false); }
        } }, "Delete")))));
    if (!repos.length) body.append(h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No repository registered.")));
  }
  await refresh();
}

setUpKeyPrompt();
window.addEventListener("hashchange", route);
route();
