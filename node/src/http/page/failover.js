"use strict";
// The page's connection: one EventSource on the node it follows, and failover. When that
// node stops answering, the page measures the round-trip time to every other node it knows
// (from /v1/nodes, which gives each node's public URL), follows the nearest one that answers
// and resumes there with `?last_event_id=` set to the last event it saw: the cursor is
// mesh-wide, so nothing is missed. Events are told apart by their transition identity (the
// same on every node), so one delivered twice is dropped, and counted.
(() => {
  const KINDS = ["snapshot", "status", "incident", "maintenance", "override", "check", "membership"];
  const SEEN_MAX = 4096;      // transition identities remembered against duplicates
  const LOG_MAX = 2000;       // received events kept for tests and the operator's eyes
  const PROBE_TIMEOUT_MS = 1500;
  const BACKOFF_MAX_MS = 10000;
  const ATTEMPTS_MAX = 10000; // about a day of retries at the longest backoff

  const state = {
    es: null,
    following: { id: null, url: location.origin, rtt_ms: null },
    lastEventId: null,
    seen: new Set(),
    seenOrder: [],
    ids: new Set(),
    idOrder: [],
    received: [],
    duplicates: 0,
    failovers: 0,
    attempts: 0,
    recovering: false,
    lostAt: null,
    lastGapMs: null,
  };
  SM.conn = state;

  function remember(set, order, value, max) {
    set.add(value);
    order.push(value);
    if (order.length > max) set.delete(order.shift());
  }

  // Whether an event with this id has been delivered (operator.js confirms writes by it).
  SM.sawEvent = (id) => state.ids.has(id);

  function setConn(kind, text) {
    const el = document.getElementById("conn");
    el.dataset.state = kind;
    el.textContent = text;
  }

  function showFollowing() {
    const f = state.following;
    const el = document.getElementById("following");
    el.dataset.node = f.id || "";
    el.dataset.url = f.url;
    el.textContent = `following ${f.id || new URL(f.url).host}${f.rtt_ms != null ? ` (${f.rtt_ms} ms)` : ""}`;
  }

  function deliver(kind, e) {
    let data;
    try { data = JSON.parse(e.data); } catch (_) { return; }
    const identity = data && data.transition;
    if (identity && state.seen.has(identity)) { state.duplicates += 1; return; }
    if (identity) remember(state.seen, state.seenOrder, identity, SEEN_MAX);
    if (e.lastEventId) {
      state.lastEventId = e.lastEventId;
      remember(state.ids, state.idOrder, e.lastEventId, SEEN_MAX);
    }
    if (kind !== "snapshot" && kind !== "membership") {
      state.received.push({ kind, id: e.lastEventId, transition: identity || null, service: data.service, component: data.component, region: data.region, state: data.state, message: data.message, via: state.following.id });
      if (state.received.length > LOG_MAX) state.received.shift();
    }
    SM.emit(kind, data, e.lastEventId);
  }

  function open(node) {
    if (state.es) state.es.close();
    state.following = node;
    SM.base = node.url === location.origin ? "" : node.url;
    showFollowing();
    const resume = state.lastEventId ? `?last_event_id=${encodeURIComponent(state.lastEventId)}` : "";
    const es = new EventSource(`${node.url}/v1/events${resume}`);
    state.es = es;
    es.addEventListener("open", () => {
      state.attempts = 0;
      // How long the page was without a stream: shown to the operator, read by the tests.
      if (state.lostAt != null) { state.lastGapMs = Math.round(performance.now() - state.lostAt); state.lostAt = null; }
      setConn("live", "live");
    });
    es.addEventListener("error", () => {
      if (state.es !== es) return;
      // The browser would retry the same node forever; the page decides where to go.
      es.close();
      if (state.lostAt == null) state.lostAt = performance.now();
      recover();
    });
    for (const kind of KINDS) es.addEventListener(kind, (e) => { if (state.es === es) deliver(kind, e); });
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // The round-trip time of one GET /healthz, or null when the node does not answer in time.
  async function rtt(url) {
    const started = performance.now();
    try {
      const res = await fetch(`${url}/healthz`, { cache: "no-store", signal: AbortSignal.timeout(PROBE_TIMEOUT_MS) });
      if (!res.ok) return null;
      return Math.max(0, Math.round(performance.now() - started));
    } catch (_) { return null; }
  }

  async function recover() {
    if (state.recovering) return;
    state.recovering = true;
    setConn("reconnecting", "reconnecting…");
    try {
      while (state.attempts < ATTEMPTS_MAX) {
        state.attempts += 1;
        // The first attempt is at once (a failover should be quick); a node that keeps
        // refusing the stream (a full node answers 503) is not asked again in a tight loop.
        if (state.attempts > 1) await sleep(Math.min(BACKOFF_MAX_MS, 250 * 2 ** Math.min(state.attempts - 1, 6)));
        const current = state.following;
        const again = await rtt(current.url);
        if (again != null) { open({ ...current, rtt_ms: again }); return; }
        const others = SM.nodes.filter((n) => n.url !== current.url);
        const measured = await Promise.all(others.map(async (n) => ({ id: n.id, url: n.url, rtt_ms: await rtt(n.url) })));
        const alive = measured.filter((n) => n.rtt_ms != null).sort((a, b) => a.rtt_ms - b.rtt_ms);
        if (alive.length) {
          state.failovers += 1;
          SM.announce(`${current.id || current.url} is unreachable; following ${alive[0].id} (${alive[0].rtt_ms} ms) from the last event seen`);
          open(alive[0]);
          SM.loadMesh();
          return;
        }
        setConn("offline", "no node answers; retrying");
      }
      setConn("offline", "disconnected");
    } finally {
      state.recovering = false;
    }
  }

  // The node that served the page is followed first; its id comes with the first /v1/nodes.
  SM.on("mesh", (mesh) => {
    if (!state.following.id && SM.base === "") {
      state.following = { ...state.following, id: mesh.node };
      showFollowing();
    }
  });
  setConn("connecting", "connecting…");
  open(state.following);
  rtt(location.origin).then((ms) => { if (ms != null && state.following.url === location.origin) { state.following.rtt_ms = ms; showFollowing(); } });
})();
