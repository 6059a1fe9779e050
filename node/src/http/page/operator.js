"use strict";
// Operator mode: sign in with a token (kept in sessionStorage, sent only as a bearer header,
// never in a URL), then act from the page. The node tells the page what the token may do
// (GET /v1/whoami); controls it may not use are hidden or disabled, and the node still
// checks every write.
//
// Every action is optimistic: its value shows at once, marked pending, through an overlay
// on the model that survives re-reads. It is confirmed only when both the node's answer and
// the event carrying the answer's cursor (or the write's own transition) have arrived, so the
// page shows that the change is in the mesh, not merely accepted. A 4xx, no answer in time,
// no event in time or a concurrent write that won reverts it, with the reason next to the
// control and said to screen readers.
(() => {
  const TOKEN_KEY = "statusmesh.operator.token";
  const ANSWER_TIMEOUT_MS = 15000;  // the node's answer (an ?ack= wait is at most 5 s of it)
  const EVENT_TIMEOUT_MS = 10000;   // the event after the answer
  const ACK_TIMEOUT_MS = 5000;
  const OPS_MAX = 64;               // actions pending at once
  const $ = (id) => document.getElementById(id);
  let session = null;
  let nextOp = 1;
  const ops = new Map();

  // ---- sign in ----------------------------------------------------------------------

  async function signIn(token, quiet) {
    const result = $("signin-result");
    result.textContent = quiet ? "" : "Checking the token…";
    let res, body;
    try {
      res = await fetch(SM.url("/v1/whoami"), { headers: { Authorization: `Bearer ${token}` }, signal: AbortSignal.timeout(5000) });
      body = await res.json().catch(() => ({}));
    } catch (e) {
      result.textContent = `Could not reach the node: ${e.message}`;
      return;
    }
    if (!res.ok) {
      sessionStorage.removeItem(TOKEN_KEY);
      result.textContent = `${res.status}: ${body.detail || body.error || res.statusText}`;
      SM.alert(`Sign-in failed: ${result.textContent}`);
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    session = { token, name: body.name, scope: body.scope, may: body.may };
    result.textContent = "";
    $("token").value = "";
    showSession();
    SM.announce(`Signed in as ${body.name}`);
    if (!quiet) $("operator-h").focus();
  }

  function signOut() {
    sessionStorage.removeItem(TOKEN_KEY);
    session = null;
    showSession();
    SM.announce("Signed out");
    $("token").focus();
  }

  function scopeText(scope) {
    const parts = [];
    parts.push(scope.services ? `services ${scope.services.join(", ")}` : "every service");
    parts.push(scope.regions ? `regions ${scope.regions.join(", ")}` : "every region");
    parts.push(scope.operator ? "incidents, maintenance, overrides and checks" : "observations only");
    return parts.join("; ");
  }

  function showSession() {
    const on = !!session;
    $("signin-form").hidden = on;
    $("signed-in").hidden = !on;
    $("operator").hidden = !on;
    document.body.classList.toggle("operator-mode", on);
    if (!on) return;
    $("auth-name").textContent = session.name;
    $("auth-scope").textContent = `(may write ${scopeText(session.scope)})`;
    const operator = !!session.may.operator;
    for (const id of ["op-incidents", "op-maintenance", "op-checks"]) {
      $(id).hidden = !operator;
      $(id).disabled = !operator;
    }
    $("op-denied").hidden = operator;
    $("op-status-fields").disabled = !session.may.status;
    fillChoices();
    if (operator) loadChecks();
  }

  // ---- choices the scope allows ----------------------------------------------------

  function allowedService(name) {
    return !session || !session.scope.services || session.scope.services.includes(name);
  }

  function setOptions(select, options) {
    const before = select.value;
    select.innerHTML = options.map(([value, text]) => `<option value="${esc(value)}">${esc(text)}</option>`).join("");
    if (options.some(([value]) => value === before)) select.value = before;
  }

  function fillChoices() {
    if (!session) return;
    const services = SM.model.services.map((s) => s.name).filter(allowedService);
    $("services-list").innerHTML = services.map((s) => `<option value="${esc(s)}">`).join("");
    const components = [...new Set(SM.model.services.flatMap((s) => s.components.map((c) => c.name)))];
    $("components-list").innerHTML = components.map((c) => `<option value="${esc(c)}">`).join("");
    const regions = (SM.regions.length ? SM.regions : [...new Set(SM.model.services.flatMap((s) => s.components.flatMap((c) => c.regions.map((r) => r.region))))])
      .filter((r) => !session.scope.regions || session.scope.regions.includes(r));
    const targets = regions.map((r) => [r, `region ${r}`]);
    if (session.may.operator) targets.push(["__override__", "override (every region)"]);
    setOptions($("op-status-target"), targets);
    const open = SM.model.services.flatMap((s) => (s.incidents || []).filter((i) => i.status !== "resolved" && !i._pending).map((i) => [JSON.stringify([s.name, i.id]), `${s.name}: ${i.title}`]));
    setOptions($("op-incident-id"), open);
    $("op-incident-update-fields").disabled = !open.length;
    const windows = SM.model.services.flatMap((s) => (s.scheduled_maintenances || []).filter((m) => !m._pending).map((m) => [JSON.stringify([s.name, m.id]), `${s.name}: ${m.title}`]));
    setOptions($("op-maint-id"), windows);
    $("op-maint-cancel-fields").disabled = !windows.length;
  }

  // ---- the pending → confirmed / reverted engine -----------------------------------

  function setResult(op, state, text) {
    const el = $(op.result);
    el.dataset.state = state;
    el.dataset.op = String(op.id);
    el.textContent = text;
    const control = $(op.control);
    if (control) control.setAttribute("aria-describedby", op.result);
  }

  const nodeName = () => SM.conn.following.id || new URL(SM.conn.following.url).host;

  async function run(op) {
    if (!session) return;
    if (ops.size >= OPS_MAX) { $(op.result).textContent = `At most ${OPS_MAX} actions may be pending at once.`; return; }
    op.id = nextOp++;
    op.sentAt = performance.now();
    ops.set(op.id, op);
    const target = nodeName();
    setResult(op, "pending", `Pending: sent to ${target}…`);
    SM.render();
    const query = op.ack ? `?ack=${op.ack}&ack_timeout_ms=${ACK_TIMEOUT_MS}` : "";
    let res, body;
    try {
      res = await fetch(SM.url(op.path + query), {
        method: op.method,
        headers: { Authorization: `Bearer ${session.token}`, "Content-Type": "application/json" },
        body: op.body === undefined ? undefined : JSON.stringify(op.body),
        signal: AbortSignal.timeout(ANSWER_TIMEOUT_MS),
      });
      body = await res.json().catch(() => ({}));
    } catch (e) {
      revert(op, e.name === "TimeoutError" ? `no answer from ${target} within ${ANSWER_TIMEOUT_MS / 1000} s` : `${target} could not be reached (${e.message})`);
      return;
    }
    if (!ops.has(op.id)) return;
    if (!res.ok) { revert(op, `${res.status} ${body.error || res.statusText}: ${body.detail || ""}`.trim()); return; }
    op.answer = body;
    op.via = target;
    // A write that changed nothing makes no event; one whose event came first is known by id.
    if (body.changed === false || (body.cursor && SM.sawEvent(body.cursor))) op.eventSeen = true;
    if (!confirmIfDone(op)) {
      setResult(op, "pending", `Pending: accepted by ${target}${heldText(op)}; waiting for its event from the mesh…`);
      op.timer = setTimeout(() => revert(op, `accepted by ${target}, but its event did not arrive within ${EVENT_TIMEOUT_MS / 1000} s`), EVENT_TIMEOUT_MS);
    }
  }

  function heldText(op) {
    if (!op.ack || !op.answer) return "";
    const k = op.answer.regions ?? 0;
    return op.answer.acked === false ? `, held by ${k} of ${op.ack} regions when the wait ended` : `, held by ${k} of ${op.ack} regions`;
  }

  function confirmIfDone(op) {
    if (!op.answer || !op.eventSeen) return false;
    clearTimeout(op.timer);
    // Once more with the answer (an incident's id), so the model holds what the node made.
    if (op.overlay) op.overlay(SM.model);
    ops.delete(op.id);
    const text = `Confirmed: ${op.what} is in the mesh${heldText(op)}.`;
    setResult(op, "confirmed", text);
    $(op.result).dataset.ms = String(Math.round(performance.now() - op.sentAt));
    SM.announce(text);
    clearMarks(op.id);
    SM.render();
    return true;
  }

  function revert(op, reason) {
    if (!ops.has(op.id)) return;
    clearTimeout(op.timer);
    ops.delete(op.id);
    if (op.undo) op.undo(SM.model);
    clearMarks(op.id);
    const text = `Reverted: ${reason}`;
    setResult(op, "reverted", text);
    SM.alert(`${op.what}: ${text}`);
    SM.render();
    // The node's view replaces whatever the page guessed.
    SM.refreshView();
  }

  // Every object an overlay marked for `id` loses its mark (it is the node's value now).
  function clearMarks(id) {
    for (const svc of SM.model.services) {
      for (const comp of svc.components) {
        for (const cell of comp.regions) if (cell._pending === id) delete cell._pending;
        if (comp.override && comp.override._pending === id) delete comp.override._pending;
      }
      for (const inc of svc.incidents || []) {
        if (inc._pending === id) delete inc._pending;
        for (const u of inc.updates || []) if (u._pending === id) delete u._pending;
      }
      for (const m of svc.scheduled_maintenances || []) {
        if (m._pending === id) delete m._pending;
        if (m._cancelling === id) delete m._cancelling;
      }
    }
  }

  // The stream is in causal order: a value that replaces ours comes after our own event,
  // so the only conflict to catch is a concurrent write that won over ours (our event then
  // carries the winning value).
  SM.on("*", (data, id, kind) => {
    for (const op of [...ops.values()]) {
      const mine = (op.answer && op.answer.cursor && id === op.answer.cursor) || (op.matches && op.matches(kind, data));
      if (!mine || op.eventSeen) continue;
      if (op.lost && op.lost(kind, data)) {
        revert(op, `a concurrent write won: ${data.state}${data.message ? ` (“${data.message}”)` : ""} from ${data.reporter}`);
        continue;
      }
      op.eventSeen = true;
      confirmIfDone(op);
    }
  });

  // Re-applied on every render, so a pending value survives the page re-reading the view.
  SM.overlays.push((model) => { for (const op of ops.values()) if (op.overlay) op.overlay(model); });
  SM.on("render", fillChoices);

  // ---- model helpers -----------------------------------------------------------------

  function serviceOf(model, name, create) {
    let svc = model.services.find((s) => s.name === name);
    if (!svc && create) {
      svc = { name, indicator: "none", components: [], incidents: [], scheduled_maintenances: [], _created: true };
      model.services.push(svc);
    }
    return svc;
  }

  function componentOf(svc, name, create) {
    let comp = svc.components.find((c) => c.name === name);
    if (!comp && create) {
      comp = { name, status: "operational", freshness: "fresh", regions: [], _created: true };
      svc.components.push(comp);
    }
    return comp;
  }

  function dropEmpty(model) {
    for (const svc of model.services) svc.components = svc.components.filter((c) => !(c._created && !c.regions.length && !c.override));
    model.services = model.services.filter((s) => !(s._created && !s.components.length && !(s.incidents || []).length));
  }

  const words = (text) => text.split(",").map((s) => s.trim()).filter(Boolean);
  const field = (id) => $(id).value.trim();

  // ---- the actions ---------------------------------------------------------------------

  function setStatus(e) {
    e.preventDefault();
    const service = field("op-status-service"), component = field("op-status-component");
    const target = $("op-status-target").value, state = $("op-status-state").value, message = field("op-status-message");
    const ack = $("op-status-ack").checked ? Math.max(1, SM.regions.length) : 0;
    const enc = encodeURIComponent;
    if (target === "__override__") {
      let saved;
      run({
        what: `override of ${service}/${component}`, result: "op-status-result", control: "op-status-submit", ack,
        method: "PUT", path: `/v1/overrides/${enc(service)}/${enc(component)}`, body: { state, reason: message },
        overlay(model) {
          const comp = componentOf(serviceOf(model, service, true), component, true);
          if (saved === undefined) saved = comp.override ? { ...comp.override } : null;
          comp.override = { state, reason: message, _pending: this.id };
          comp.status = state;
        },
        undo(model) {
          const comp = componentOf(serviceOf(model, service, false) || { components: [] }, component, false);
          if (comp) comp.override = saved;
          dropEmpty(model);
        },
      });
      return;
    }
    const region = target;
    let saved;
    run({
      what: `${service}/${component} in ${region}`, result: "op-status-result", control: "op-status-submit", ack,
      method: "PUT", path: `/v1/status/${enc(service)}/${enc(component)}/${enc(region)}`, body: { state, message },
      overlay(model) {
        const comp = componentOf(serviceOf(model, service, true), component, true);
        let cell = comp.regions.find((r) => r.region === region);
        if (saved === undefined) saved = cell ? { ...cell } : null;
        if (!cell) { cell = { region }; comp.regions.push(cell); }
        Object.assign(cell, { state, message, reporter: session.name, last_seen_ms: Date.now(), ttl_ms: 60000, _pending: this.id });
      },
      undo(model) {
        const svc = serviceOf(model, service, false);
        const comp = svc && componentOf(svc, component, false);
        if (comp) {
          const i = comp.regions.findIndex((r) => r.region === region);
          if (i >= 0) { if (saved) comp.regions[i] = saved; else comp.regions.splice(i, 1); }
        }
        dropEmpty(model);
      },
      matches: (kind, d) => kind === "status" && d.service === service && d.component === component && d.region === region && d.state === state && d.message === message && d.reporter === session.name,
      lost: (kind, d) => kind === "status" && (d.state !== state || d.message !== message),
    });
  }

  function openIncident(e) {
    e.preventDefault();
    const service = field("op-incident-service"), title = field("op-incident-title"), message = field("op-incident-message");
    const impact = $("op-incident-impact").value, components = words($("op-incident-components").value);
    const placeholder = `pending-${nextOp}`;
    run({
      what: `incident “${title}”`, result: "op-incident-open-result", control: "op-incident-open-submit",
      method: "POST", path: "/v1/incidents", body: { service, title, impact, components, message },
      overlay(model) {
        const svc = serviceOf(model, service, true);
        svc.incidents = svc.incidents || [];
        const id = (this.answer && this.answer.id) || placeholder;
        const mine = svc.incidents.find((i) => i._pending === this.id);
        if (mine) { mine.id = id; return; }
        if (svc.incidents.some((i) => i.id === id)) return;
        svc.incidents.unshift({ id, title, impact, status: "investigating", components, opened_at_ms: Date.now(), updates: [{ status: "investigating", text: message, author: session.name, at_ms: Date.now() }], _pending: this.id });
      },
      undo(model) {
        const svc = serviceOf(model, service, false);
        if (svc) svc.incidents = (svc.incidents || []).filter((i) => i._pending !== this.id);
        dropEmpty(model);
      },
    });
  }

  function updateIncident(resolve) {
    let service, id;
    try { [service, id] = JSON.parse($("op-incident-id").value); } catch (_) { return; }
    const status = resolve ? "resolved" : $("op-incident-status").value;
    const message = field("op-incident-update-message") || (resolve ? "Resolved." : "");
    let saved;
    run({
      what: resolve ? `resolving incident ${id}` : `update of incident ${id}`, result: "op-incident-update-result", control: resolve ? "op-incident-resolve" : "op-incident-update-submit",
      method: "POST", path: `/v1/incidents/${encodeURIComponent(id)}/updates`, body: { service, message, status },
      overlay(model) {
        const inc = (serviceOf(model, service, false)?.incidents || []).find((i) => i.id === id);
        if (!inc) return;
        if (saved === undefined) saved = inc.status;
        inc.status = status;
        inc.updates = inc.updates || [];
        if (!inc.updates.some((u) => u._pending === this.id)) inc.updates.push({ status, text: message, author: session.name, at_ms: Date.now(), _pending: this.id });
      },
      undo(model) {
        const inc = (serviceOf(model, service, false)?.incidents || []).find((i) => i.id === id);
        if (!inc) return;
        if (saved !== undefined) inc.status = saved;
        inc.updates = (inc.updates || []).filter((u) => u._pending !== this.id);
      },
    });
  }

  function toMs(id) {
    const ms = Date.parse($(id).value);
    return Number.isFinite(ms) ? ms : null;
  }

  function scheduleMaintenance(e) {
    e.preventDefault();
    const service = field("op-maint-service"), title = field("op-maint-title"), components = words($("op-maint-components").value);
    const starts = toMs("op-maint-starts"), ends = toMs("op-maint-ends");
    if (starts == null || ends == null) { $("op-maint-new-result").textContent = "Give a start and an end."; return; }
    const id = `m${Date.now().toString(36)}`;
    run({
      what: `maintenance “${title}”`, result: "op-maint-new-result", control: "op-maint-new-submit",
      method: "PUT", path: `/v1/maintenance/${encodeURIComponent(service)}/${id}`, body: { title, components, starts_at_ms: starts, ends_at_ms: ends },
      overlay(model) {
        const svc = serviceOf(model, service, true);
        svc.scheduled_maintenances = svc.scheduled_maintenances || [];
        if (!svc.scheduled_maintenances.some((m) => m.id === id)) svc.scheduled_maintenances.push({ id, title, components, starts_at_ms: starts, ends_at_ms: ends, active: false, _pending: this.id });
      },
      undo(model) {
        const svc = serviceOf(model, service, false);
        if (svc) svc.scheduled_maintenances = (svc.scheduled_maintenances || []).filter((m) => m._pending !== this.id);
        dropEmpty(model);
      },
    });
  }

  function cancelMaintenance(e) {
    e.preventDefault();
    let service, id;
    try { [service, id] = JSON.parse($("op-maint-id").value); } catch (_) { return; }
    run({
      what: `cancelling maintenance ${id}`, result: "op-maint-cancel-result", control: "op-maint-cancel-submit",
      method: "DELETE", path: `/v1/maintenance/${encodeURIComponent(service)}/${encodeURIComponent(id)}`,
      overlay(model) {
        const m = (serviceOf(model, service, false)?.scheduled_maintenances || []).find((w) => w.id === id);
        if (m) m._cancelling = this.id;
      },
    });
  }

  function addCheck(e) {
    e.preventDefault();
    const service = field("op-check-service"), component = field("op-check-component");
    const body = { kind: $("op-check-kind").value, target: field("op-check-target") };
    const interval = Number(field("op-check-interval"));
    if (interval > 0) body.interval_s = interval;
    const key = `${service}/${component}`;
    run({
      what: `probe check of ${key}`, result: "op-check-result", control: "op-check-submit",
      method: "PUT", path: `/v1/checks/${encodeURIComponent(service)}/${encodeURIComponent(component)}`, body,
      overlay() { pendingChecks.set(key, { ...body, _pending: this.id }); paintChecks(); },
      undo() { pendingChecks.delete(key); paintChecks(); },
    });
  }

  // ---- probe checks list (reads need the token: a target may be an internal address) ----

  const pendingChecks = new Map();
  let checks = [];

  async function loadChecks() {
    if (!session || !session.may.operator) return;
    try {
      const res = await fetch(SM.url("/v1/checks"), { headers: { Authorization: `Bearer ${session.token}` }, signal: AbortSignal.timeout(5000) });
      if (!res.ok) return;
      checks = (await res.json()).checks || [];
      for (const c of checks) {
        const p = pendingChecks.get(`${c.service}/${c.component}`);
        if (p && !ops.has(p._pending)) pendingChecks.delete(`${c.service}/${c.component}`);
      }
      paintChecks();
    } catch (_) { /* listed again on the next check event */ }
  }

  function paintChecks() {
    const rows = checks.map((c) => [`${c.service}/${c.component}`, c.check.kind, c.check.target, false]);
    for (const [key, p] of pendingChecks) if (ops.has(p._pending)) rows.push([key, p.kind, p.target, true]);
    $("checks-list").innerHTML = rows.length
      ? `<ul>${rows.map(([key, kind, target, pending]) => `<li data-check="${esc(key)}">${esc(key)}: ${esc(kind)} ${esc(target)}${pending ? '<span class="tag pending-tag">pending</span>' : ""}</li>`).join("")}</ul>`
      : `<p class="muted">No probe checks.</p>`;
  }
  SM.on("check", () => loadChecks());

  // A cell of the grid fills the form, so an operator can act on what they are looking at.
  document.getElementById("services").addEventListener("click", (e) => {
    const td = e.target.closest("td.cell[data-key]");
    if (!td || !session) return;
    const [service, component, region] = td.dataset.key.split("/");
    $("op-status-service").value = service;
    $("op-status-component").value = component;
    if ([...$("op-status-target").options].some((o) => o.value === region)) $("op-status-target").value = region;
    $("op-status-state").focus();
  });

  $("signin-form").addEventListener("submit", (e) => { e.preventDefault(); const t = $("token").value.trim(); if (t) signIn(t, false); });
  $("signout").addEventListener("click", signOut);
  $("op-status").addEventListener("submit", setStatus);
  $("op-incident-open").addEventListener("submit", openIncident);
  $("op-incident-update").addEventListener("submit", (e) => { e.preventDefault(); updateIncident(false); });
  $("op-incident-resolve").addEventListener("click", () => updateIncident(true));
  $("op-maint-new").addEventListener("submit", scheduleMaintenance);
  $("op-maint-cancel").addEventListener("submit", cancelMaintenance);
  $("op-check").addEventListener("submit", addCheck);
  SM.on("mesh", fillChoices);

  const kept = sessionStorage.getItem(TOKEN_KEY);
  if (kept) signIn(kept, true);
})();
