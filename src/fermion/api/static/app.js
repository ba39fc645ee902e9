// Fermion's dashboard: plain DOM, no framework, no network but this server's API.
// Every value from the API goes in as text (el() never parses HTML), so nothing a user named can run here.
"use strict";

const TOKEN_KEY = "fermion-token";
const state = { token: sessionStorage.getItem(TOKEN_KEY), view: "overview", stream: null, timer: null, tick: null };
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
    const [list, overview, series] = await Promise.all([api("/deployments"), api("/overview"), api("/series?since_s=3600")]);
    const cost = Object.fromEntries(overview.deployments.map((d) => [d.name, d.cost_per_hour]));
    if (!list.length) return [el("h1", {}, "Deployments"), el("p", { class: "muted" }, "No deployments yet: fermion deploy PHOTON --name NAME")];
    return [el("h1", {}, "Deployments"), list.map((d) => deploymentCard(d, cost[d.name] || 0, series[d.name] || []))];
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
  const now = last && last[key] !== null ? `${last[key]}${unit}` : "–";
  const now2 = key2 && last && last[key2] !== null ? ` / ${last[key2]}${unit}` : "";
  return el("figure", { class: "figure", "data-chart": key }, el("figcaption", {}, `${title} `, el("strong", {}, now + now2)), svg);
}

function deploymentCard(d, costPerHour, points = []) {
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
    el("table", { class: "replicas" }, el("tr", {}, el("th", {}, "cloud"), el("th", {}, "replicas")), rows));
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
  try {
    const content = await views[view]();
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
  while (state.stream === controller) {
    try {
      const response = await fetch("/api/v1/stream", { headers: { Authorization: `Bearer ${state.token}` }, signal: controller.signal });
      if (response.status === 401) return logout("that token was refused");
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
          const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
          if (data) refreshSoon();
        }
      }
    } catch (err) {
      if (controller.signal.aborted) return;
    }
    $("#live").hidden = true;
    await new Promise((resolve) => setTimeout(resolve, 1000)); // the server restarted: follow it again
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
