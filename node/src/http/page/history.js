"use strict";
// History without fiction: the 90-day bars of the grid and a component's timeline view
// (`#/timeline/{service}/{component}`). A day before the component's first observation is
// "no data", never 0%: the node's history answer says when the component was first observed
// and over how many days it knew anything.
(() => {
  // `esc` and `when` are page.js's (one lexical scope for the page's classic scripts).
  const loaded = new Map();
  const MAX_AGE_MS = 60000;
  const pct = (u, digits) => `${(u * 100).toFixed(digits)}%`;
  const dayWord = (n) => n === 1 ? "1 day" : `${n} days`;

  async function load(key, force) {
    const cached = loaded.get(key);
    if (!force && cached && Date.now() - cached.at < MAX_AGE_MS) return cached.data;
    const [service, component] = key.split("/");
    const res = await fetch(SM.url(`/v1/status/${encodeURIComponent(service)}/${encodeURIComponent(component)}/history?days=90`), { signal: AbortSignal.timeout(5000) });
    if (!res.ok) throw new Error(`history of ${key}: HTTP ${res.status}`);
    const data = await res.json();
    loaded.set(key, { at: Date.now(), data });
    return data;
  }

  function summary(data) {
    if (data.uptime == null) return "no data yet";
    return `${pct(data.uptime, 3)} uptime over ${dayWord(data.days_with_data)} with data`;
  }

  function dayText(d) {
    const day = new Date(d.from_ms).toDateString();
    if (d.uptime == null) return `${day}: no data`;
    return `${day}: ${pct(d.uptime, 2)} up${d.worst ? `, worst: ${d.worst}` : ""}`;
  }

  function paintBar(key, data) {
    if (!data || !Array.isArray(data.days)) return;
    const spans = data.days.map((d) => {
      const cls = d.uptime == null ? "nodata" : `u-${d.worst || "operational"}`;
      return `<span class="${cls}" title="${esc(dayText(d))}"></span>`;
    }).join("");
    const nodata = data.days.filter((d) => d.uptime == null).length;
    for (const bar of document.querySelectorAll(`[data-bar="${CSS.escape(key)}"]`)) {
      bar.innerHTML = spans;
      bar.setAttribute("aria-label", `uptime history: ${summary(data)}; ${dayWord(nodata)} without data`);
    }
    for (const label of document.querySelectorAll(`[data-uptime="${CSS.escape(key)}"]`)) label.textContent = summary(data);
  }

  async function paintBars() {
    for (const bar of document.querySelectorAll("[data-bar]")) {
      const key = bar.dataset.bar;
      try { paintBar(key, await load(key, false)); } catch (_) { /* the bar stays grey while reconnecting */ }
    }
  }

  // A new observation changes today's bar: forget the cached answer of that component.
  SM.on("status", (ev) => loaded.delete(`${ev.service}/${ev.component}`));
  SM.on("render", () => { paintBars(); });

  function route() {
    const match = /^#\/timeline\/([^/]+)\/([^/]+)$/.exec(location.hash);
    const view = document.getElementById("timeline");
    const grid = document.getElementById("grid");
    if (!match) { view.hidden = true; grid.hidden = false; return; }
    const key = `${decodeURIComponent(match[1])}/${decodeURIComponent(match[2])}`;
    grid.hidden = true;
    view.hidden = false;
    showTimeline(key);
  }

  async function showTimeline(key) {
    const body = document.getElementById("timeline-body");
    document.getElementById("timeline-h").textContent = `Timeline of ${key}`;
    document.getElementById("timeline-h").focus();
    body.innerHTML = `<p class="muted">Loading…</p>`;
    let data;
    try { data = await load(key, true); } catch (e) { body.innerHTML = `<p class="error" role="alert">${esc(e.message)}</p>`; return; }
    const regions = (data.regions || []).map((r) => `<tr><th scope="row">${esc(r.region)}</th><td>${r.uptime == null ? "no data" : esc(pct(r.uptime, 3))}</td><td>${esc(r.worst || "")}</td></tr>`).join("");
    const nodata = data.days.filter((d) => d.uptime == null).length;
    body.innerHTML =
      `<p id="timeline-summary">${esc(summary(data))}. ` +
      (data.first_observed_ms ? `First observed ${esc(when(data.first_observed_ms))}; the ${esc(dayWord(nodata))} before it are no data, not downtime.` : "Never observed.") + `</p>` +
      `<div class="bar big" data-bar="${esc(key)}" role="img"></div>` +
      `<h3>Per region</h3><table><thead><tr><th scope="col">Region</th><th scope="col">Uptime (days with data)</th><th scope="col">Worst</th></tr></thead><tbody>${regions || `<tr><td colspan="3">no data</td></tr>`}</tbody></table>` +
      `<h3>Transitions (newest first)</h3><ol class="transitions">` +
      (data.transitions || []).map((t) => `<li><strong>${esc(t.region)}</strong>: ${esc(t.previous || "—")} → ${esc(t.state)} <span class="muted">${esc(when(t.at_ms))} · ${esc(t.reporter)}${t.origin_node ? " via " + esc(t.origin_node) : ""}</span>${t.message ? `<div class="msg">${esc(t.message)}</div>` : ""}</li>`).join("") +
      `</ol>`;
    paintBar(key, data);
  }

  window.addEventListener("hashchange", route);
  route();
})();
