"use strict";
// The page keeps the last snapshot as its model, patches cells from `status` events at once,
// and re-reads the derived view (maintenance, overrides, indicator) shortly after.
const STATES = {
  operational: { sym: "✓", text: "Operational" },
  degraded_performance: { sym: "▲", text: "Degraded" },
  partial_outage: { sym: "◐", text: "Partial outage" },
  major_outage: { sym: "✕", text: "Major outage" },
  under_maintenance: { sym: "⚒", text: "Maintenance" },
};
const IMPACT = { none: "none", minor: "minor", major: "major", critical: "critical" };
let model = { page: { indicator: "none", description: "" }, services: [] };
let lastEventAt = 0;
let refreshTimer = null;
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

function stateHtml(state) {
  const s = STATES[state] || { sym: "?", text: state };
  return `<span class="state s-${esc(state)}"><span class="sym" aria-hidden="true">${s.sym}</span>${esc(s.text)}</span>`;
}

function isStale(cell) {
  return Date.now() - (cell.last_seen_ms || 0) > (cell.ttl_ms || 0);
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
  return `<td class="cell${stale ? " stale" : ""}" data-key="${esc(cell._key)}" title="${esc(title)}">` +
    stateHtml(cell.state) + (stale ? `<span class="tag">stale</span>` : "") +
    (cell.conflicts && cell.conflicts.length ? `<span class="tag" title="concurrent writes">conflict</span>` : "") +
    `<div class="msg">${esc(cell.message)}</div></td>`;
}

function render() {
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
      const extra = (comp.override ? `<span class="tag" title="${esc(comp.override.reason)}">override</span>` : "") +
        (comp.maintenance && comp.maintenance.length ? `<span class="tag">maintenance</span>` : "") +
        (comp.freshness === "stale" ? `<span class="tag">stale</span>` : "") +
        (comp.agreement ? `<span class="tag" title="probed from ${comp.agreement.regions_probing} regions; major outage when ${comp.agreement.down_when} agree">probed ${comp.agreement.down_when}/${comp.agreement.regions_probing}</span>` : "") +
        (comp.advisories || []).map((a) => `<div class="msg advisory" role="note">${esc(a.text)}</div>`).join("");
      html.push(`<tr><th scope="row">${esc(comp.name)}</th><td>${stateHtml(comp.status)}${extra}</td>` +
        regions.map((r) => cellHtml(byRegion[r])).join("") +
        `<td><div class="bar" data-bar="${esc(svc.name)}/${esc(comp.name)}" aria-label="uptime history"></div><div class="uptime" data-uptime="${esc(svc.name)}/${esc(comp.name)}"></div></td></tr>`);
    }
    html.push(`</tbody></table></div>`);
    const incidents = svc.incidents || [];
    if (incidents.length) {
      html.push(`<div aria-label="incidents">`);
      for (const inc of incidents) {
        html.push(`<div class="incident"><h3>${esc(inc.title)} <span class="tag">${esc(inc.status)}</span> <span class="tag">impact: ${esc(IMPACT[inc.impact] || inc.impact)}</span></h3>` +
          `<div class="muted">${esc(inc.components.join(", "))} · opened ${esc(when(inc.opened_at_ms))}${inc.resolved_at_ms ? " · resolved " + esc(when(inc.resolved_at_ms)) : ""}</div><ol>` +
          inc.updates.slice().reverse().map((u) => `<li><strong>${esc(u.status)}</strong> — ${esc(u.text)} <span class="muted">(${esc(u.author)}, ${esc(when(u.at_ms))})</span></li>`).join("") +
          `</ol></div>`);
      }
      html.push(`</div>`);
    }
    html.push(`</section>`);
  }
  $("services").innerHTML = html.join("");
  const maint = model.services.flatMap((s) => (s.scheduled_maintenances || []).map((m) => ({ service: s.name, ...m })));
  $("maintenance").innerHTML = maint.length
    ? maint.map((m) => `<div class="incident"><h3>${esc(m.title)}${m.active ? ' <span class="tag">in progress</span>' : ""}</h3><div class="muted">${esc(m.service)}: ${esc(m.components.join(", "))}<br>${esc(when(m.starts_at_ms))} → ${esc(when(m.ends_at_ms))}</div></div>`).join("")
    : `<div class="empty">None scheduled.</div>`;
  loadHistories();
}

// Uptime bars: one request per component, refreshed at most once a minute.
const historyLoaded = new Map();
async function loadHistories() {
  for (const bar of document.querySelectorAll("[data-bar]")) {
    const key = bar.dataset.bar;
    const cached = historyLoaded.get(key);
    if (cached && Date.now() - cached.at < 60000) { paintBar(key, cached.data); continue; }
    const [service, component] = key.split("/");
    try {
      const res = await fetch(`/v1/status/${encodeURIComponent(service)}/${encodeURIComponent(component)}/history?days=90`);
      if (!res.ok) continue;
      const data = await res.json();
      historyLoaded.set(key, { at: Date.now(), data });
      paintBar(key, data);
    } catch (_) { /* the bar stays grey: history is a nice-to-have while reconnecting */ }
  }
}

function paintBar(key, data) {
  const bar = document.querySelector(`[data-bar="${CSS.escape(key)}"]`);
  const label = document.querySelector(`[data-uptime="${CSS.escape(key)}"]`);
  if (!bar || !data || !Array.isArray(data.days)) return;
  bar.innerHTML = data.days.map((d) => {
    const cls = d.worst ? `u-${d.worst}` : "";
    const text = d.uptime == null ? "no data" : `${(d.uptime * 100).toFixed(2)}% up` + (d.worst ? `, worst: ${d.worst}` : "");
    return `<span class="${cls}" title="${esc(new Date(d.from_ms).toDateString())}: ${esc(text)}"></span>`;
  }).join("");
  if (label) label.textContent = data.uptime == null ? "" : `${(data.uptime * 100).toFixed(3)}% uptime`;
}

async function refreshView() {
  try {
    const res = await fetch("/v1/status", { cache: "no-cache" });
    if (res.ok) { model = await res.json(); render(); }
  } catch (_) { /* shown by the connection pill */ }
}

function scheduleRefresh() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(refreshView, 300);
}

function applyStatus(ev) {
  let svc = model.services.find((s) => s.name === ev.service);
  if (!svc) { scheduleRefresh(); return; }
  let comp = svc.components.find((c) => c.name === ev.component);
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
    const res = await fetch("/v1/nodes");
    if (!res.ok) return;
    const mesh = await res.json();
    $("where").textContent = `— ${mesh.node} (${mesh.region}), cluster ${mesh.cluster}`;
    const unseen = mesh.unreachable_regions || [];
    $("mesh").innerHTML = `<table><thead><tr><th scope="col">Node</th><th scope="col">Region</th><th scope="col">State</th><th scope="col">Last contact</th><th scope="col">Lag</th></tr></thead><tbody>` +
      mesh.nodes.map((n) => `<tr><th scope="row">${esc(n.id)}${n.self ? ' <span class="tag">this node</span>' : ""}</th><td>${esc(n.region)}</td><td>${esc(n.state)}</td><td>${n.self ? "" : esc(ago(n.last_contact_ms))}</td><td>${n.lag_changes != null ? esc(n.lag_changes) : ""}</td></tr>`).join("") +
      `</tbody></table>` + (unseen.length ? `<div class="empty">Cannot see from here: ${esc(unseen.join(", "))}</div>` : "");
  } catch (_) { /* retried on the next tick */ }
}

function setConn(state, text) {
  const el = $("conn");
  el.dataset.state = state;
  el.textContent = text;
}

function connect() {
  // EventSource reconnects by itself and sends Last-Event-ID: the node resumes exactly
  // after the last event this page saw, on whichever node answers.
  const es = new EventSource("/v1/events");
  es.addEventListener("open", () => setConn("live", "live"));
  es.addEventListener("error", () => setConn(es.readyState === EventSource.CLOSED ? "offline" : "reconnecting", es.readyState === EventSource.CLOSED ? "disconnected" : "reconnecting…"));
  es.addEventListener("snapshot", (e) => { lastEventAt = Date.now(); model = JSON.parse(e.data); render(); setConn("live", "live"); });
  es.addEventListener("status", (e) => { lastEventAt = Date.now(); applyStatus(JSON.parse(e.data)); });
  for (const kind of ["incident", "maintenance", "override", "check"]) es.addEventListener(kind, () => { lastEventAt = Date.now(); scheduleRefresh(); });
  es.addEventListener("membership", () => loadMesh());
}

setInterval(() => {
  // Freshness moves with time even when nothing is written.
  for (const td of document.querySelectorAll("td.cell[data-key]")) {
    const [s, c, r] = td.dataset.key.split("/");
    const cell = model.services.find((x) => x.name === s)?.components.find((x) => x.name === c)?.regions.find((x) => x.region === r);
    if (cell && isStale(cell) !== td.classList.contains("stale")) { render(); break; }
  }
  $("updated").textContent = lastEventAt ? `Last event ${ago(lastEventAt)}.` : "";
}, 1000);
setInterval(loadMesh, 5000);
loadMesh();
connect();
