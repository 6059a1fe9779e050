"use strict";
// The page's model and grid: the last snapshot, patched by `status` events at once, with the
// derived view (maintenance, overrides, indicator) re-read shortly after. Other scripts hook
// in through `SM`: failover.js owns the connection and calls `SM.emit`; operator.js adds
// pending values through `SM.overlays`; history.js paints the uptime bars and the timeline.
const STATES = {
  operational: { sym: "✓", text: "Operational" },
  degraded_performance: { sym: "▲", text: "Degraded" },
  partial_outage: { sym: "◐", text: "Partial outage" },
  major_outage: { sym: "✕", text: "Major outage" },
  under_maintenance: { sym: "⚒", text: "Maintenance" },
};
const IMPACT = { none: "none", minor: "minor", major: "major", critical: "critical" };
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const ago = (ms) => {
  if (!ms) return "never";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return s + "s ago";
  if (s < 3600) return Math.round(s / 60) + "m ago";
  return Math.round(s / 3600) + "h ago";
};
const when = (ms) => ms ? new Date(ms).toLocaleString() : "";

const SM = window.SM = {
  model: { page: { indicator: "none", description: "" }, services: [] },
  // The node the page reads from and writes to: "" is the node that served the page.
  base: "",
  url: (path) => SM.base + path,
  nodes: [],
  regions: [],
  lastEventAt: 0,
  listeners: new Map(),
  overlays: [],
  on(kind, fn) {
    if (!SM.listeners.has(kind)) SM.listeners.set(kind, []);
    SM.listeners.get(kind).push(fn);
  },
  emit(kind, data, id) {
    SM.lastEventAt = Date.now();
    for (const fn of SM.listeners.get(kind) || []) fn(data, id, kind);
    for (const fn of SM.listeners.get("*") || []) fn(data, id, kind);
  },
  // Said to screen readers: confirmations politely, errors at once.
  announce(text) { $("announce").textContent = text; },
  alert(text) { $("alert").textContent = text; },
};

let refreshTimer = null;

function stateHtml(state) {
  const s = STATES[state] || { sym: "?", text: state };
  return `<span class="state s-${esc(state)}"><span class="sym" aria-hidden="true">${s.sym}</span>${esc(s.text)}</span>`;
}

const pendingTag = (x) => x && x._pending ? `<span class="tag pending-tag">pending</span>` : "";

function isStale(cell) {
  return !cell._pending && Date.now() - (cell.last_seen_ms || 0) > (cell.ttl_ms || 0);
}

function regionsOf(service) {
  const set = new Set();
  for (const c of service.components) for (const r of c.regions) set.add(r.region);
  return [...set].sort();
}

function cellHtml(cell) {
  if (!cell) return `<td class="cell"><span class="muted">—</span></td>`;
  const stale = isStale(cell);
  const title = `${cell.message || ""}\nreporter: ${cell.reporter}\nlast heard: ${when(cell.last_seen_ms)}`;
  return `<td class="cell${stale ? " stale" : ""}${cell._pending ? " pending" : ""}" data-key="${esc(cell._key)}" title="${esc(title)}">` +
    stateHtml(cell.state) + (stale ? `<span class="tag">stale</span>` : "") + pendingTag(cell) +
    (cell.conflicts && cell.conflicts.length ? `<span class="tag" title="concurrent writes">conflict</span>` : "") +
    `<div class="msg">${esc(cell.message)}</div></td>`;
}

function incidentHtml(inc) {
  return `<div class="incident${inc._pending ? " pending" : ""}" data-incident="${esc(inc.id)}"><h3>${esc(inc.title)} <span class="tag">${esc(inc.status)}</span> <span class="tag">impact: ${esc(IMPACT[inc.impact] || inc.impact)}</span>${pendingTag(inc)}</h3>` +
    `<div class="muted">${esc((inc.components || []).join(", "))} · opened ${esc(when(inc.opened_at_ms))}${inc.resolved_at_ms ? " · resolved " + esc(when(inc.resolved_at_ms)) : ""}</div><ol>` +
    (inc.updates || []).slice().reverse().map((u) => `<li${u._pending ? ' class="pending"' : ""}><strong>${esc(u.status)}</strong> — ${esc(u.text)} <span class="muted">(${esc(u.author)}, ${esc(when(u.at_ms))})</span>${pendingTag(u)}</li>`).join("") +
    `</ol></div>`;
}

function render() {
  const model = SM.model;
  for (const overlay of SM.overlays) overlay(model);
  const page = model.page || { indicator: "none", description: "" };
  $("banner").dataset.indicator = page.indicator;
  $("banner-text").textContent = model.services.length ? page.description : "No status has been reported yet";
  const html = [];
  for (const svc of model.services) {
    const regions = regionsOf(svc);
    html.push(`<section class="card" aria-label="${esc(svc.name)}"><h2><span>${esc(svc.name)}</span><span class="muted">${esc(svc.indicator)}</span></h2><div class="scroll"><table>`);
    html.push(`<thead><tr><th scope="col">Component</th><th scope="col">Status</th>${regions.map((r) => `<th scope="col">${esc(r)}</th>`).join("")}<th scope="col">90 days</th></tr></thead><tbody>`);
    for (const comp of svc.components) {
      const byRegion = Object.fromEntries(comp.regions.map((r) => [r.region, r]));
      for (const r of comp.regions) r._key = `${svc.name}/${comp.name}/${r.region}`;
      const key = `${svc.name}/${comp.name}`;
      const extra = (comp.override ? `<span class="tag" title="${esc(comp.override.reason)}">override</span>${pendingTag(comp.override)}` : "") +
        (comp.maintenance && comp.maintenance.length ? `<span class="tag">maintenance</span>` : "") +
        (comp.freshness === "stale" ? `<span class="tag">stale</span>` : "") +
        (comp.agreement ? `<span class="tag" title="probed from ${comp.agreement.regions_probing} regions; major outage when ${comp.agreement.down_when} agree">probed ${comp.agreement.down_when}/${comp.agreement.regions_probing}</span>` : "") +
        (comp.advisories || []).map((a) => `<div class="msg advisory" role="note">${esc(a.text)}</div>`).join("");
      html.push(`<tr><th scope="row"><a href="#/timeline/${encodeURIComponent(svc.name)}/${encodeURIComponent(comp.name)}" data-timeline="${esc(key)}" title="timeline of ${esc(key)}">${esc(comp.name)}</a></th><td data-status="${esc(key)}">${stateHtml(comp.status)}${extra}</td>` +
        regions.map((r) => cellHtml(byRegion[r])).join("") +
        `<td><div class="bar" data-bar="${esc(key)}" role="img" aria-label="uptime history: loading"></div><div class="uptime" data-uptime="${esc(key)}"></div></td></tr>`);
    }
    html.push(`</tbody></table></div>`);
    const incidents = svc.incidents || [];
    if (incidents.length) html.push(`<div aria-label="incidents">${incidents.map(incidentHtml).join("")}</div>`);
    html.push(`</section>`);
  }
  $("services").innerHTML = html.join("");
  const maint = model.services.flatMap((s) => (s.scheduled_maintenances || []).map((m) => ({ service: s.name, ...m })));
  $("maintenance").innerHTML = maint.length
    ? maint.map((m) => `<div class="incident${m._pending ? " pending" : ""}${m._cancelling ? " cancelling" : ""}" data-maintenance="${esc(m.service)}/${esc(m.id)}"><h3>${esc(m.title)}${m.active ? ' <span class="tag">in progress</span>' : ""}${pendingTag(m)}${m._cancelling ? '<span class="tag pending-tag">cancelling</span>' : ""}</h3><div class="muted">${esc(m.service)}: ${esc((m.components || []).join(", "))}<br>${esc(when(m.starts_at_ms))} → ${esc(when(m.ends_at_ms))}</div></div>`).join("")
    : `<div class="empty">None scheduled.</div>`;
  for (const fn of SM.listeners.get("render") || []) fn(model);
}
SM.render = render;

async function refreshView() {
  try {
    const res = await fetch(SM.url("/v1/status"), { cache: "no-cache", signal: AbortSignal.timeout(5000) });
    if (res.ok) { SM.model = await res.json(); render(); }
  } catch (_) { /* shown by the connection pill */ }
}
SM.refreshView = refreshView;

function scheduleRefresh() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(refreshView, 300);
}

function applyStatus(ev) {
  const svc = SM.model.services.find((s) => s.name === ev.service);
  if (!svc) { scheduleRefresh(); return; }
  const comp = svc.components.find((c) => c.name === ev.component);
  if (!comp) { scheduleRefresh(); return; }
  const cell = comp.regions.find((r) => r.region === ev.region);
  const value = { region: ev.region, state: ev.state, message: ev.message, reporter: ev.reporter,
    observed_at_ms: ev.observed_at_ms, ttl_ms: ev.ttl_ms, last_seen_ms: Math.max(ev.observed_at_ms || 0, Date.now()), freshness: "fresh" };
  if (ev.state == null) { comp.regions = comp.regions.filter((r) => r.region !== ev.region); }
  else if (cell) Object.assign(cell, value); else comp.regions.push(value);
  render();
  const td = document.querySelector(`td[data-key="${CSS.escape(`${ev.service}/${ev.component}/${ev.region}`)}"]`);
  if (td) td.classList.add("flash");
  scheduleRefresh();
}

async function loadMesh() {
  try {
    const res = await fetch(SM.url("/v1/nodes"), { signal: AbortSignal.timeout(3000) });
    if (!res.ok) return;
    const mesh = await res.json();
    // An address bound to every interface is reached by the host the page came from.
    SM.nodes = mesh.nodes.filter((n) => n.url).map((n) => ({ ...n, url: n.url.replace(/^http:\/\/(0\.0\.0\.0|\[::\])/, `http://${location.hostname}`) }));
    SM.regions = mesh.regions || [];
    $("where").textContent = `— ${mesh.node} (${mesh.region}), cluster ${mesh.cluster}`;
    const unseen = mesh.unreachable_regions || [];
    $("mesh").innerHTML = `<table><thead><tr><th scope="col">Node</th><th scope="col">Region</th><th scope="col">State</th><th scope="col">Last contact</th><th scope="col">Lag</th></tr></thead><tbody>` +
      mesh.nodes.map((n) => `<tr><th scope="row">${esc(n.id)}${n.self ? ' <span class="tag">this node</span>' : ""}</th><td>${esc(n.region)}</td><td>${esc(n.state)}</td><td>${n.self ? "" : esc(ago(n.last_contact_ms))}</td><td>${n.lag_changes != null ? esc(n.lag_changes) : ""}</td></tr>`).join("") +
      `</tbody></table>` + (unseen.length ? `<div class="empty">Cannot see from here: ${esc(unseen.join(", "))}</div>` : "");
    for (const fn of SM.listeners.get("mesh") || []) fn(mesh);
  } catch (_) { /* retried on the next tick */ }
}
SM.loadMesh = loadMesh;

SM.on("snapshot", (data) => { SM.model = data; render(); });
SM.on("status", applyStatus);
for (const kind of ["incident", "maintenance", "override", "check"]) SM.on(kind, scheduleRefresh);
SM.on("membership", loadMesh);

setInterval(() => {
  // Freshness moves with time even when nothing is written.
  for (const td of document.querySelectorAll("td.cell[data-key]")) {
    const [s, c, r] = td.dataset.key.split("/");
    const cell = SM.model.services.find((x) => x.name === s)?.components.find((x) => x.name === c)?.regions.find((x) => x.region === r);
    if (cell && isStale(cell) !== td.classList.contains("stale")) { render(); break; }
  }
  $("updated").textContent = SM.lastEventAt ? `Last event ${ago(SM.lastEventAt)}.` : "";
}, 1000);
setInterval(loadMesh, 5000);
loadMesh();
