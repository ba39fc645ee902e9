// Fermion's dashboard: plain DOM, no framework, no network but this server's API.
// Every value from the API goes in as text (el() never parses HTML), so nothing a user named can run here.
"use strict";

const TOKEN_KEY = "fermion-token";
const state = { token: sessionStorage.getItem(TOKEN_KEY), view: "overview", stream: null, timer: null, tick: null, openLogs: new Set() };
const $ = (selector) => document.querySelector(selector);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "style") Object.assign(node.style, value); // CSSOM: allowed by the page's CSP, unlike a style attribute
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

class Refused extends Error {}

async function api(path) {
  const response = await fetch(`/api/v1${path}`, { headers: { Authorization: `Bearer ${state.token}` } });
  if (response.status === 401) throw new Refused("that token was refused");
  const body = await response.json();
  if (!response.ok) throw new Error(body.error ? body.error.message : response.statusText);
  return body;
}

const money = (x) => `$${x.toFixed(x < 1 ? 4 : 2)}/h`;
const when = (t) => new Date(t * 1000).toLocaleTimeString();
const badge = (text) => el("span", { class: `badge ${text}` }, text);

// -- views -------------------------------------------------------------------------------
const views = {
  async overview() {
    const o = await api("/overview");
    const attention = o.attention.length
      ? el("div", { class: "card attention", id: "attention" }, el("ul", {}, o.attention.map((a) => el("li", {}, a))))
      : el("p", { class: "muted", id: "attention" }, "Nothing is failing.");
    const clouds = o.clouds.map((c) => {
      const share = c.capacity.cpus ? Math.min(100, (100 * c.used.cpus) / c.capacity.cpus) : 0;
      return el("div", { class: "card cloud", "data-cloud": c.name },
        el("div", {}, el("strong", {}, c.name), " ", badge(c.health), " ", el("span", { class: "muted" }, c.kind)),
        c.health_reason ? el("div", { class: "muted" }, c.health_reason) : null,
        el("div", { class: "bar" }, el("span", { style: { width: `${share.toFixed(0)}%` } })),
        el("div", { class: "muted" }, `${c.used.cpus} of ${c.capacity.cpus} CPUs in use`),
        el("div", {}, `${c.replicas} replicas · `, el("span", { class: "cost" }, money(c.cost_per_hour))));
    });
    return [
      el("h1", {}, "Overview"),
      el("div", { class: "grid" },
        el("div", { class: "card" }, el("div", { class: "muted" }, "running cost"), el("div", { class: "stat", id: "total-cost" }, money(o.cost_per_hour))),
        el("div", { class: "card" }, el("div", { class: "muted" }, "deployments"), el("div", { class: "stat" }, o.deployments.length)),
        el("div", { class: "card" }, el("div", { class: "muted" }, "replicas ready"),
          el("div", { class: "stat" }, `${o.deployments.reduce((n, d) => n + d.ready, 0)} / ${o.deployments.reduce((n, d) => n + d.replicas, 0)}`))),
      el("h2", {}, "Needs attention"), attention,
      el("h2", {}, "Clouds"), el("div", { class: "grid", id: "clouds" }, clouds),
      el("h2", {}, "Recent events"), eventTable(o.events.slice().reverse().slice(0, 15)),
    ];
  },

  async deployments() {
    const [list, overview, series, events] = await Promise.all([api("/deployments"), api("/overview"), api("/series?since_s=3600"),
      api("/events?limit=500")]);
    const cost = Object.fromEntries(overview.deployments.map((d) => [d.name, d.cost_per_hour]));
    if (!list.length) return [el("h1", {}, "Deployments"), el("p", { class: "muted" }, "No deployments yet: fermion deploy PHOTON --name NAME")];
    // its decisions: scaling, rollout steps and each replica's placement (with why), newest first
    const decisions = (d) => {
      const mine = new Set(d.replica_list.map((r) => r.id));
      return events.filter((e) => (e.kind === "deployment" && e.object_id === d.name) || (e.kind === "replica" && mine.has(e.object_id)
        && (e.new === "PROVISIONING" || e.new === "FAILED" || e.new === "STOPPED"))).slice(-6).reverse();
    };
    return [el("h1", {}, "Deployments"), list.map((d) => deploymentCard(d, cost[d.name] || 0, series[d.name] || [], decisions(d)))];
  },

  async jobs() {
    const jobs = (await api("/jobs")).reverse();
    if (!jobs.length) return [el("h1", {}, "Jobs"), el("p", { class: "muted" }, "No jobs yet: fermion job run, fermion finetune")];
    return [el("h1", {}, "Jobs"), jobs.map(jobCard)];
  },

  async models() {
    const [models, graph] = await Promise.all([api("/models"), api("/lineage")]);
    const rows = models.map((m) => el("tr", { "data-model": `${m.name}:${m.version}` },
      el("td", {}, `${m.name}:${m.version}`), el("td", {}, m.stage ? badge(m.stage) : "–"),
      el("td", {}, metricText(m.metrics)), el("td", {}, m.lineage && m.lineage.job ? `job ${m.lineage.job}` : m.lineage && m.lineage.parent ? `from ${m.lineage.parent}` : "–"),
      el("td", {}, when(m.created_at))));
    return [el("h1", {}, "Models"),
      models.length ? el("table", {}, el("tr", {}, ["version", "stage", "metrics", "made by", "created"].map((h) => el("th", {}, h))), rows)
        : el("p", { class: "muted" }, "No model versions yet: fermion finetune registers one"),
      el("h2", {}, "Lineage"), lineageGraph(graph)];
  },

  async datasets() {
    const list = await api("/datasets");
    if (!list.length) return [el("h1", {}, "Datasets"), el("p", { class: "muted" }, "No datasets yet: fermion dataset push NAME PATH")];
    const shown = await Promise.all(list.map((d) => api(`/datasets/${encodeURIComponent(d.name)}`)));
    return [el("h1", {}, "Datasets"), shown.map((d) => {
      const clouds = Object.keys(d.stores).sort();
      return el("div", { class: "card deployment", "data-dataset": d.name },
        el("div", { class: "head" }, el("span", { class: "name" }, d.name), d.encrypted ? badge("encrypted") : null,
          el("span", { class: "muted" }, `home ${d.cloud} · project ${d.project}`)),
        el("table", {}, el("tr", {}, el("th", {}, "version"), el("th", {}, "files"), el("th", {}, "size"), el("th", {}, "message"), clouds.map((c) => el("th", {}, c))),
          d.versions.slice().reverse().map((v) => el("tr", {}, el("td", {}, `v${v.number}`), el("td", {}, v.files), el("td", {}, bytes(v.size)), el("td", {}, v.message || ""),
            clouds.map((c) => el("td", { "data-held": `${c}:${v.number}` }, d.stores[c].error ? "?" : d.stores[c].versions.includes(v.number) ? "✓" : "–"))))));
    })];
  },

  async pipelines() {
    const list = await api("/pipelines");
    if (!list.length) return [el("h1", {}, "Pipelines"), el("p", { class: "muted" }, "No pipelines yet: fermion pipeline run FILE")];
    const runs = await Promise.all(list.map((p) => (p.runs ? api(`/pipelines/${encodeURIComponent(p.name)}/runs`) : [])));
    return [el("h1", {}, "Pipelines"), list.map((p, i) => pipelineCard(p, runs[i]))];
  },

  async cost() {
    const c = await api("/costs?window_s=86400&points=48");
    const clouds = Object.keys(c.by_cloud);
    const table = (title, entries) => el("div", { class: "card" }, el("h2", {}, title),
      el("table", {}, Object.entries(entries).sort((a, b) => b[1] - a[1]).map(([k, v]) => el("tr", {}, el("td", {}, k), el("td", { class: "num" }, dollars(v))))));
    return [el("h1", {}, "Cost"),
      el("div", { class: "grid" },
        el("div", { class: "card" }, el("div", { class: "muted" }, "spent in the last 24 h"), el("div", { class: "stat", id: "cost-total" }, dollars(c.total))),
        el("div", { class: "card" }, el("div", { class: "muted" }, "spending now"), el("div", { class: "stat" }, money(c.per_hour_now)))),
      el("h2", {}, "Cumulative spend per cloud"),
      el("div", { class: "charts" }, clouds.map((cloud) => chart(c.series.map((p) => ({ at: p.at, v: p.by_cloud[cloud] || 0 })), `${cloud} $`, "v", ""))),
      el("div", { class: "grid" }, table("per cloud", c.by_cloud), table("per deployment", c.by_deployment), table("per job", c.by_job))];
  },

  async events() {
    const events = await api("/events?limit=200");
    return [el("h1", {}, "Events"), el("p", { class: "muted" }, "Live: new events appear at the top."), eventTable(events.reverse(), "event-log")];
  },
};

// a line chart of points[key] (and points[key2], dashed) over time, as inline SVG
function chart(points, title, key, unit, key2 = null) {
  const W = 260, H = 64, svgNS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(svgNS, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("class", "chart");
  const values = points.flatMap((p) => [p[key], key2 ? p[key2] : null]).filter((v) => v !== null && v !== undefined);
  const top = Math.max(...values, 1e-9);
  const t0 = points.length ? points[0].at : 0, t1 = points.length ? points[points.length - 1].at : 1;
  const line = (k, cls) => {
    const pts = points.filter((p) => p[k] !== null && p[k] !== undefined)
      .map((p) => `${(((p.at - t0) / Math.max(t1 - t0, 1)) * (W - 2) + 1).toFixed(1)},${(H - 2 - (p[k] / top) * (H - 6)).toFixed(1)}`);
    const poly = document.createElementNS(svgNS, "polyline");
    poly.setAttribute("points", pts.join(" "));
    poly.setAttribute("class", cls);
    svg.append(poly);
  };
  line(key, "series");
  if (key2) line(key2, "series second");
  const last = points.length ? points[points.length - 1] : null;
  const fmt = (v) => (Number.isInteger(v) ? String(v) : Number(v.toPrecision(3)).toString());
  const now = last && last[key] !== null && last[key] !== undefined ? `${fmt(last[key])}${unit}` : "–";
  const now2 = key2 && last && last[key2] !== null && last[key2] !== undefined ? ` / ${fmt(last[key2])}${unit}` : "";
  return el("figure", { class: "figure", "data-chart": key }, el("figcaption", {}, `${title} `, el("strong", {}, now + now2)), svg);
}

function deploymentCard(d, costPerHour, points = [], decisions = []) {
  const byCloud = {};
  for (const r of d.replica_list) (byCloud[r.cloud || "unplaced"] ||= []).push(r);
  const rows = Object.entries(byCloud).sort().map(([cloud, replicas]) => el("tr", {},
    el("td", {}, cloud),
    el("td", {}, el("div", { class: "chips" }, replicas.map((r) => el("span", { class: `badge ${r.state}`, "data-replica": r.id, title: r.reason || r.id },
      `${r.id} · v${r.generation} · ${r.state}${r.spot ? " · spot" : ""}`))))));
  const placement = d.placement && d.placement.reason ? d.placement.reason : null;
  return el("div", { class: "card deployment", "data-deployment": d.name },
    el("div", { class: "head" },
      el("span", { class: "name" }, d.name), badge(d.status),
      el("span", { class: "muted" }, `${d.ready}/${d.replicas} ready · v${d.generation} · ${d.photon_name} · ${money(costPerHour)}`)),
    d.status_reason ? el("div", { class: "muted" }, d.status_reason) : null,
    d.last_error ? el("div", { class: "error" }, d.last_error) : null,
    d.canary ? el("div", {}, `canary v${d.canary.generation}: ${d.canary.ready}/${d.canary.replicas} ready, ${d.canary.weight}% of traffic`) : null,
    d.autoscale ? el("div", { class: "muted" }, `autoscaling ${d.autoscale.min}–${d.autoscale.max} replicas`) : null,
    placement ? el("div", { class: "muted" }, `placement: ${placement}`) : null,
    points.length > 1
      ? el("div", { class: "charts" }, chart(points, "requests/s", "qps", ""), chart(points, "p50 / p99", "p50_ms", " ms", "p99_ms"),
        chart(points, "errors/s", "errors", ""))
      : el("div", { class: "muted charts-pending" }, "traffic charts appear after two scrapes of its replicas (every 10 s)"),
    el("table", { class: "replicas" }, el("tr", {}, el("th", {}, "cloud"), el("th", {}, "replicas")), rows),
    decisions.length ? el("ul", { class: "handovers decisions" }, decisions.map((e) => el("li", {},
      `${when(e.at)} ${e.kind} ${e.object_id}: ${e.old ? `${e.old} → ` : ""}${e.new} — ${e.reason}`))) : null);
}

const dollars = (x) => `$${x.toFixed(4)}`;
const bytes = (n) => (n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(1)} MiB` : n >= 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${n} B`);

function metricText(metrics) {
  if (!metrics) return "–";
  const final = metrics.final || metrics;
  return ["accuracy", "loss", "f1_macro"].filter((k) => typeof final[k] === "number").map((k) => `${k} ${final[k].toFixed(3)}`).join(" · ") || "–";
}

function jobCard(j) {
  const t0 = Math.min(...j.attempts.map((a) => a.started_at || j.created_at), j.created_at);
  const t1 = Math.max(...j.attempts.map((a) => a.ended_at || Date.now() / 1000), t0 + 1);
  const lanes = {};
  for (const a of j.attempts) (lanes[a.cloud || "unplaced"] ||= []).push(a);
  const timeline = el("div", { class: "timeline" }, Object.entries(lanes).map(([cloud, attempts]) => el("div", { class: "lane" },
    el("span", { class: "lane-name" }, cloud),
    el("span", { class: "lane-track" }, attempts.map((a) => {
      const from = ((a.started_at || t0) - t0) / (t1 - t0), to = ((a.ended_at || t1) - t0) / (t1 - t0);
      return el("span", { class: `attempt badge ${a.state}`, "data-attempt": a.number, title: `attempt ${a.number}: ${a.state} — ${a.reason}`,
        style: { left: `${(100 * from).toFixed(1)}%`, width: `${Math.max(2, 100 * (to - from)).toFixed(1)}%` } }, `#${a.number}`);
    })))));
  const handovers = j.attempts.filter((a) => a.reason).map((a) => el("li", {}, `attempt ${a.number} on ${a.cloud}: ${a.state} — ${a.reason}`));
  const curve = trainingCurve(j.metrics || []);
  const logs = el("pre", { class: "logs", hidden: true });
  const showLogs = async () => {
    const got = await api(`/jobs/${encodeURIComponent(j.name)}/logs?tail=200`);
    logs.textContent = Object.entries(got).map(([k, v]) => `== ${k}\n${v}`).join("\n");
    logs.hidden = false;
  };
  const toggle = el("button", { type: "button", class: "small", onclick: () => {
    if (state.openLogs.has(j.name)) { state.openLogs.delete(j.name); logs.hidden = true; return; }
    state.openLogs.add(j.name);
    showLogs();
  } }, "logs");
  if (state.openLogs.has(j.name)) showLogs(); // open logs stay open across redraws, and follow the job
  return el("div", { class: "card deployment", "data-job": j.name },
    el("div", { class: "head" }, el("span", { class: "name" }, j.name), badge(j.status),
      el("span", { class: "muted" }, `${j.kind} · ${j.attempts.length} attempt(s) · ${j.restarts} restart(s)`), toggle),
    j.reason ? el("div", { class: "muted" }, j.reason) : null,
    timeline, handovers.length ? el("ul", { class: "handovers" }, handovers) : null, curve, logs);
}

// a pipeline: its triggers, its latest run's steps in order (state, cloud, why), and its earlier runs
function pipelineCard(p, runs) {
  const triggers = p.triggers.map((t) => (t.dataset ? `new version of ${t.dataset}` : `cron ${t.cron}`)).join(", ");
  const last = runs.length ? runs[runs.length - 1] : null;
  return el("div", { class: "card deployment", "data-pipeline": p.name },
    el("div", { class: "head" }, el("span", { class: "name" }, p.name), last ? badge(last.status) : null,
      el("span", { class: "muted" }, `project ${p.project} · ${p.steps} steps · ${runs.length} runs` + (triggers ? ` · on ${triggers}` : ""))),
    last ? el("div", {}, el("div", { class: "muted" }, `run ${last.number}: ${last.reason} (${last.trigger})`),
      el("div", { class: "steps" }, last.steps.map((s) => el("div", { class: `step ${s.status}`, "data-step": s.step, title: s.reason },
        el("div", {}, el("strong", {}, s.step), " ", badge(s.status)),
        el("div", { class: "muted" }, s.kind + (s.cloud ? ` · ${s.cloud}` : last.plan[s.step] ? ` · ${last.plan[s.step]}` : "")),
        el("div", { class: "why" }, s.reason))))) : el("p", { class: "muted" }, "Not run yet."),
    runs.length > 1 ? el("table", {}, el("tr", {}, ["run", "status", "trigger", "started"].map((h) => el("th", {}, h))),
      runs.slice(0, -1).reverse().slice(0, 8).map((r) => el("tr", {}, el("td", {}, r.number), el("td", {}, badge(r.status)),
        el("td", {}, r.trigger), el("td", {}, when(r.created_at))))) : null);
}

function trainingCurve(rows) {
  const keys = ["train_loss", "eval_loss", "eval_accuracy", "loss", "accuracy"].filter((k) => rows.some((r) => typeof r[k] === "number"));
  if (!keys.length) return null;
  const byStep = (k) => rows.filter((r) => typeof r[k] === "number").map((r, i) => ({ at: typeof r.step === "number" ? r.step : i, [k]: r[k] }));
  return el("div", { class: "charts training", "data-curve": "true" }, keys.map((k) => chart(byStep(k), k, k, "")));
}

// the lineage as columns, left to right: data, jobs, models, deployments (a variant right of its parent)
function lineageGraph(graph) {
  const svgNS = "http://www.w3.org/2000/svg";
  if (!graph.nodes.length) return el("p", { class: "muted" }, "Nothing registered yet.");
  const depth = {};
  const incoming = {};
  for (const e of graph.edges) (incoming[e.to] ||= []).push(e.from);
  const level = (id, seen = new Set()) => {
    if (depth[id] !== undefined) return depth[id];
    if (seen.has(id)) return 0;
    seen.add(id);
    depth[id] = Math.max(-1, ...(incoming[id] || []).map((f) => level(f, seen))) + 1;
    return depth[id];
  };
  graph.nodes.forEach((n) => level(n.id));
  const columns = {};
  for (const n of graph.nodes) (columns[depth[n.id]] ||= []).push(n);
  const W = 190, H = 34, GX = 60, GY = 16;
  const pos = {};
  const ncol = Math.max(...Object.keys(columns).map(Number)) + 1;
  let rows = 0;
  for (const [c, nodes] of Object.entries(columns)) {
    nodes.forEach((n, i) => { pos[n.id] = { x: 10 + Number(c) * (W + GX), y: 10 + i * (H + GY) }; });
    rows = Math.max(rows, nodes.length);
  }
  const svg = document.createElementNS(svgNS, "svg");
  const width = 20 + ncol * (W + GX), height = 20 + rows * (H + GY);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("width", width);
  svg.setAttribute("class", "lineage");
  for (const e of graph.edges) {
    const a = pos[e.from], b = pos[e.to];
    if (!a || !b) continue;
    const path = document.createElementNS(svgNS, "path");
    path.setAttribute("d", `M${a.x + W},${a.y + H / 2} C${a.x + W + GX / 2},${a.y + H / 2} ${b.x - GX / 2},${b.y + H / 2} ${b.x},${b.y + H / 2}`);
    path.setAttribute("class", "edge");
    path.setAttribute("data-edge", `${e.from}>${e.to}`);
    svg.append(path);
  }
  for (const n of graph.nodes) {
    const g = document.createElementNS(svgNS, "g");
    g.setAttribute("class", `node ${n.kind}`);
    g.setAttribute("data-node", n.id);
    const rect = document.createElementNS(svgNS, "rect");
    for (const [k, v] of Object.entries({ x: pos[n.id].x, y: pos[n.id].y, width: W, height: H, rx: 6 })) rect.setAttribute(k, v);
    const text = document.createElementNS(svgNS, "text");
    text.setAttribute("x", pos[n.id].x + 10);
    text.setAttribute("y", pos[n.id].y + H / 2 + 4);
    text.textContent = n.label.length > 28 ? `${n.label.slice(0, 27)}…` : n.label;
    const title = document.createElementNS(svgNS, "title");
    title.textContent = n.label;
    g.append(rect, text, title);
    svg.append(g);
  }
  return el("div", { class: "card graph" }, svg);
}

function eventTable(events, id = null) {
  return el("table", { id }, el("tr", {}, el("th", {}, "time"), el("th", {}, "object"), el("th", {}, "change"), el("th", {}, "why")),
    events.map((e) => el("tr", { "data-event": e.id },
      el("td", {}, when(e.at)), el("td", {}, `${e.kind} ${e.object_id}`),
      el("td", {}, e.old ? `${e.old} → ${e.new}` : e.new), el("td", {}, e.reason))));
}

// -- rendering, login, live updates --------------------------------------------------------
async function render() {
  const view = views[state.view] ? state.view : "overview";
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.view === view);
  const seq = (state.seq = (state.seq || 0) + 1);
  try {
    const content = await views[view]();
    if (seq !== state.seq) return; // a newer render started meanwhile: its answer is the fresher one
    $("#view").replaceChildren(...content.flat());
    $("#view").dataset.rendered = String(Date.now());
  } catch (err) {
    if (err instanceof Refused) return logout(err.message);
    $("#view").replaceChildren(el("p", { class: "error" }, `could not load: ${err.message}`));
  }
}

function refreshSoon() {
  clearTimeout(state.timer);
  state.timer = setTimeout(render, 150);
}

async function follow() {
  const controller = new AbortController();
  state.stream = controller;
  let lastId = null; // a reconnect resumes after it: what happened meanwhile still arrives
  while (state.stream === controller) {
    let pause = 1000; // the server restarted, or ended the stream: follow it again
    try {
      const query = lastId === null ? "" : `?after=${lastId}`;
      const response = await fetch(`/api/v1/stream${query}`, { headers: { Authorization: `Bearer ${state.token}` }, signal: controller.signal });
      if (response.status === 401) return logout("that token was refused");
      if (response.status === 429) { // too many streams open for this token: as long as the server asks
        pause = 1000 * Math.max(1, Number(response.headers.get("Retry-After")) || 5);
        throw new Error("too many streams");
      }
      $("#live").hidden = false;
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const lines = block.split("\n");
          const id = lines.find((l) => l.startsWith("id: "));
          if (id && /^\d+$/.test(id.slice(4))) lastId = id.slice(4);
          const data = lines.filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
          if (data) refreshSoon();
        }
      }
    } catch (err) {
      if (controller.signal.aborted) return;
    }
    $("#live").hidden = true;
    await new Promise((resolve) => setTimeout(resolve, pause));
  }
}

async function login(token) {
  state.token = token;
  try {
    const me = await api("/whoami");
    sessionStorage.setItem(TOKEN_KEY, token);
    $("#who").textContent = `${me.user}${me.server_admin ? " · server admin" : me.role ? ` · ${me.role}` : ""}`;
  } catch (err) {
    return logout(err instanceof Refused ? "that token was refused" : `cannot reach the server: ${err.message}`);
  }
  $("#login").hidden = true;
  for (const id of ["#nav", "#view", "#logout"]) $(id).hidden = false;
  state.view = (location.hash.slice(2) || "overview");
  await render();
  follow();
  clearInterval(state.tick);
  state.tick = setInterval(render, 10000); // capacity and cost move without events too
}

function logout(message = "") {
  sessionStorage.removeItem(TOKEN_KEY);
  clearInterval(state.tick);
  if (state.stream) state.stream.abort();
  state.stream = null;
  state.token = null;
  $("#login").hidden = false;
  for (const id of ["#nav", "#view", "#logout", "#live"]) $(id).hidden = true;
  $("#who").textContent = "";
  $("#login-error").textContent = message;
}

window.addEventListener("hashchange", () => { state.view = location.hash.slice(2) || "overview"; if (state.token) render(); });
document.addEventListener("DOMContentLoaded", () => {
  $("#login").addEventListener("submit", (event) => { event.preventDefault(); login($("#token").value.trim()); });
  $("#logout").addEventListener("click", () => logout());
  if (state.token) login(state.token);
});
