// The devmesh dashboard: everything comes over one WebSocket (/v1/events) that the control
// worker pushes to; the page never polls. No framework, no build step, nothing from elsewhere.
"use strict";

(() => {
  const HISTORY = 60; // points per sparkline: a minute of one-a-second stats
  const LOG_LINES = 1000; // lines kept in the log pane
  const BACKOFF_MIN = 500;
  const BACKOFF_MAX = 10000;
  const SVG_NS = "http://www.w3.org/2000/svg";
  const STARTABLE = new Set(["stopped", "exited", "failed"]);
  const STOPPABLE = new Set(["starting", "running", "backoff"]);

  let socket = null;
  let backoff = BACKOFF_MIN;
  let subscribed = "";
  let picked = false; // the log pane chose its first service (later, the user chooses)
  let lastServices = [];
  const serviceRows = new Map(); // name -> {tr, cells, buttons}
  const trafficRows = new Map(); // name -> {tr, ...}
  const series = new Map(); // name -> {rps: [], errors: []}
  const usage = new Map(); // name -> {cpu, rss}
  const pending = new Set(); // "name/action" requests in flight

  const $ = (id) => document.getElementById(id);

  // ---- small DOM helpers (text only: nothing from the server is parsed as HTML) ----

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function setText(node, text) {
    const value = text === null || text === undefined ? "" : String(text);
    if (node.textContent !== value) node.textContent = value;
  }

  function setClass(node, value) {
    if (node.className !== value) node.className = value;
  }

  function bytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) {
      n /= 1024;
      i += 1;
    }
    return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
  }

  function number(n, digits) {
    if (n === null || n === undefined) return "–";
    return Number(n).toFixed(digits);
  }

  function clock(iso) {
    if (!iso) return "";
    const when = new Date(iso);
    return Number.isNaN(when.getTime()) ? "" : when.toLocaleTimeString([], { hour12: false });
  }

  function ago(seconds) {
    if (seconds === null || seconds === undefined) return "";
    if (seconds < 1) return "just now";
    if (seconds < 90) return `${Math.round(seconds)} s ago`;
    return `${Math.round(seconds / 60)} min ago`;
  }

  function shortId(id) {
    return id ? String(id).slice(0, 8) : "";
  }

  function notice(text) {
    const box = $("notice");
    setText(box, text || "");
    box.hidden = !text;
  }

  // ---- the connection ----

  function connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}/v1/events`);
    socket = ws;
    ws.addEventListener("open", () => {
      if (subscribed) send({ subscribe: subscribed });
    });
    ws.addEventListener("message", (event) => {
      backoff = BACKOFF_MIN; // it works: the next drop retries quickly again
      setConnected(true);
      let msg;
      try {
        msg = JSON.parse(event.data);
      } catch {
        return;
      }
      const handler = HANDLERS[msg.type];
      if (handler) handler(msg);
    });
    ws.addEventListener("close", () => {
      if (socket !== ws) return;
      socket = null;
      setConnected(false);
      const delay = backoff * (0.8 + Math.random() * 0.4);
      backoff = Math.min(backoff * 2, BACKOFF_MAX);
      setTimeout(connect, delay);
    });
  }

  function send(msg) {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(msg));
  }

  function setConnected(live) {
    const badge = $("connection");
    setText(badge, live ? "live" : "disconnected");
    setClass(badge, live ? "connection on" : "connection off");
    document.body.classList.toggle("stale", !live);
  }

  // ---- state: header, services, peers, routes, graph ----

  function onState(msg) {
    const status = msg.status || {};
    const peers = msg.peers || {};
    const routes = (msg.routes || {}).routes || [];
    const node = status.node || {};
    setText($("project"), node.project || "");
    setText($("namespace"), node.namespace || "");
    setText($("node"), peers.node ? shortId(peers.node) : "(discovery off)");
    $("node").title = peers.node || "";
    setText($("proxy"), node.proxy ? `:${node.proxy.port}` : "");
    setText($("version"), node.version || "");
    document.title = `devmesh · ${node.project || ""}`;
    if (node.shutting_down) notice("devmesh is shutting down");
    else if (node.config_error && node.config_error.length) {
      notice(`devmesh.toml not applied: ${node.config_error.join("; ")}`);
    } else if ($("notice").dataset.kind !== "action") notice("");
    lastServices = status.services || [];
    renderServices(lastServices);
    renderLogChoices(lastServices);
    renderPeers(peers);
    renderRoutes(routes);
    renderGraph(node, peers, lastServices, routes);
  }

  function makeServiceRow(name) {
    const cell = (key, cls) => el("td", { class: cls, "data-testid": `service-${key}-${name}` });
    const cells = {
      name: el("td", { class: "name", text: name }),
      state: el("td", {}, el("span", { class: "badge", "data-testid": `service-state-${name}` })),
      health: cell("health", ""),
      restarts: cell("restarts", "num"),
      pid: cell("pid", "num"),
      cpu: cell("cpu", "num"),
      memory: cell("memory", "num"),
      port: cell("port", "num"),
      version: cell("version", ""),
      url: el("td", {}, el("a", { target: "_blank", rel: "noopener noreferrer" })),
      actions: el("td", { class: "actions" }),
    };
    const buttons = {};
    for (const action of ["start", "stop", "restart"]) {
      const button = el("button", { type: "button", "data-testid": `${action}-${name}` });
      button.textContent = action[0].toUpperCase() + action.slice(1);
      button.addEventListener("click", () => act(name, action));
      buttons[action] = button;
      cells.actions.append(button);
    }
    const tr = el("tr", { "data-testid": `service-row-${name}` }, ...Object.values(cells));
    return { tr, cells, buttons };
  }

  function renderServices(services) {
    const body = $("services");
    const seen = new Set();
    services.forEach((svc, index) => {
      seen.add(svc.name);
      let row = serviceRows.get(svc.name);
      if (!row) {
        row = makeServiceRow(svc.name);
        serviceRows.set(svc.name, row);
      }
      if (body.children[index] !== row.tr) body.insertBefore(row.tr, body.children[index] || null);
      const c = row.cells;
      const badge = c.state.firstChild;
      setText(badge, svc.state);
      setClass(badge, `badge state-${svc.state}`);
      const why = [svc.reason, exitText(svc)].filter(Boolean).join("; ");
      badge.title = why;
      const health = svc.health;
      // A service checked by its port only is ready or not listening, never "healthy".
      const said = health && health.check === "port"
        ? (health.status === "healthy" ? "ready" : "not listening")
        : health && health.status;
      setText(c.health, health ? said : "–");
      setClass(c.health, health ? `health-${health.status}` : "muted");
      c.health.title = health ? [health.check, health.detail].filter(Boolean).join(": ") : "";
      setText(c.restarts, svc.restarts);
      setText(c.pid, svc.pid || "–");
      setText(c.port, svc.port || "–");
      setText(c.version, svc.version || "–");
      const link = c.url.firstChild;
      if (link.getAttribute("href") !== svc.url) link.setAttribute("href", svc.url || "#");
      setText(link, svc.url ? svc.url.replace(/^https?:\/\//, "").replace(/\/$/, "") : "");
      // No command: run by hand. Stop takes it out of the mesh, Start puts it back; devmesh
      // cannot restart what it does not run.
      const byHand = svc.command === null || svc.command === undefined;
      for (const [action, button] of Object.entries(row.buttons)) {
        const allowed =
          action === "start"
            ? STARTABLE.has(svc.state)
            : action === "stop"
              ? STOPPABLE.has(svc.state) || svc.state === "external"
              : !byHand && svc.state !== "stopping";
        button.disabled = !allowed || pending.has(`${svc.name}/${action}`);
      }
      renderUsage(svc.name);
    });
    for (const [name, row] of serviceRows) {
      if (!seen.has(name)) {
        row.tr.remove();
        serviceRows.delete(name);
      }
    }
    $("no-services").hidden = services.length > 0;
  }

  function exitText(svc) {
    if (svc.exit_signal) return `killed by signal ${svc.exit_signal}`;
    if (svc.exit_code !== null && svc.exit_code !== undefined) return `exit code ${svc.exit_code}`;
    return "";
  }

  function renderUsage(name) {
    const row = serviceRows.get(name);
    if (!row) return;
    const svc = lastServices.find((s) => s.name === name);
    // A figure of a process that has ended would be stale (stats arrive once a second).
    const u = svc && svc.pid ? usage.get(name) || {} : {};
    setText(row.cells.cpu, u.cpu === null || u.cpu === undefined ? "–" : `${number(u.cpu, 1)} %`);
    setText(row.cells.memory, bytes(u.rss));
  }

  async function act(name, action) {
    const key = `${name}/${action}`;
    pending.add(key);
    renderServices(lastServices);
    try {
      const response = await fetch(
        `/v1/services/${encodeURIComponent(name)}/${encodeURIComponent(action)}`,
        { method: "POST", headers: { Accept: "application/json" } },
      );
      if (response.ok) {
        if ($("notice").dataset.kind === "action") clearActionNotice();
      } else {
        const body = await response.json().catch(() => ({}));
        actionNotice(`${action} ${name}: ${body.error || response.statusText}`);
      }
    } catch (error) {
      actionNotice(`${action} ${name}: ${error}`);
    } finally {
      pending.delete(key);
      renderServices(lastServices);
    }
  }

  function actionNotice(text) {
    $("notice").dataset.kind = "action";
    notice(text);
  }

  function clearActionNotice() {
    delete $("notice").dataset.kind;
    notice("");
  }

  function renderPeers(doc) {
    const list = $("peers");
    const peers = doc.peers || [];
    const discovery = doc.discovery || {};
    setText(
      $("discovery"),
      discovery.enabled ? `discovery on UDP ${discovery.port}` : "discovery is off",
    );
    list.replaceChildren(
      ...peers.map((p) => {
        const services = el(
          "ul",
          { class: "chips" },
          ...(p.services || []).map((s) =>
            el(
              "li",
              {
                class: `chip state-${s.state}`,
                "data-testid": `peer-service-${p.node}-${s.name}`,
                title: s.state,
              },
              s.version ? `${s.name}@${s.version}` : s.name,
            ),
          ),
        );
        const rtt = p.rtt_ms === null || p.rtt_ms === undefined ? "" : ` · ${p.rtt_ms} ms`;
        return el(
          "li",
          { class: p.stale ? "peer stale-peer" : "peer", "data-testid": `peer-${p.node}` },
          el(
            "div",
            { class: "peer-head" },
            el("strong", { text: p.name || "(unnamed)" }),
            el("code", { text: shortId(p.node), title: p.node }),
            el("span", { class: "muted", text: `${p.address}:${p.proxy_port}${rtt}` }),
            p.stale ? el("span", { class: "badge state-backoff", text: "stale" }) : null,
            el("span", { class: "muted right", text: ago(p.seen_ago) }),
          ),
          services,
        );
      }),
    );
    $("no-peers").hidden = peers.length > 0;
  }

  function place(where) {
    if (!where) return "nowhere";
    if (where.node === "local") return `this node (${where.address})`;
    const rtt = where.rtt_ms === null || where.rtt_ms === undefined ? "" : `, ${where.rtt_ms} ms`;
    return `${where.name} (${where.address}${rtt})`;
  }

  function renderRoutes(routes) {
    $("routes").replaceChildren(
      ...routes.map((r) =>
        el(
          "tr",
          { "data-testid": `route-${r.service}` },
          el("td", { class: "name", text: r.service }),
          el("td", { text: place(r.served_by) + (r.pinned ? " 📌" : "") }),
          el("td", { class: "muted", text: r.why }),
          el("td", { class: "muted", text: (r.fallbacks || []).map(place).join(", ") || "–" }),
        ),
      ),
    );
    $("no-routes").hidden = routes.length > 0;
  }

  // ---- the mesh graph: nodes on a circle, services around each, routes as edges ----

  function renderGraph(node, peers, services, routes) {
    const graph = $("graph");
    const W = 480;
    const H = 320;
    const nodes = [
      {
        id: "local",
        label: `${node.project || "this node"} (here)`,
        local: true,
        services: services.map((s) => ({ name: s.name, state: s.state })),
      },
      ...(peers.peers || [])
        .slice()
        .sort((a, b) => (a.node < b.node ? -1 : 1))
        .map((p) => ({
          id: p.node,
          label: p.name || shortId(p.node),
          local: false,
          stale: p.stale,
          services: (p.services || []).map((s) => ({ name: s.name, state: s.state })),
        })),
    ];
    const n = nodes.length;
    const rx = n === 1 ? 0 : Math.min(160, W / 2 - 80);
    const ry = n === 1 ? 0 : Math.min(95, H / 2 - 70);
    const where = new Map(); // "node/service" -> [x, y]
    nodes.forEach((nd, i) => {
      const angle = Math.PI + (2 * Math.PI * i) / n;
      nd.x = W / 2 + rx * Math.cos(angle);
      nd.y = H / 2 + ry * Math.sin(angle);
      const k = nd.services.length;
      const r = k > 6 ? 52 : 42;
      nd.services.forEach((s, j) => {
        const a = -Math.PI / 2 + (2 * Math.PI * j) / Math.max(k, 1);
        s.x = nd.x + r * Math.cos(a);
        s.y = nd.y + r * Math.sin(a);
        where.set(`${nd.id}/${s.name}`, [s.x, s.y]);
      });
    });
    const local = nodes[0];
    const parts = [];
    const defs = svg("defs");
    const marker = svg("marker", {
      id: "arrow",
      viewBox: "0 0 10 10",
      refX: 9,
      refY: 5,
      markerWidth: 6,
      markerHeight: 6,
      orient: "auto-start-reverse",
    });
    marker.append(svg("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrowhead" }));
    defs.append(marker);
    parts.push(defs);
    // Routes to a peer: from this node to the copy it uses (dashed: the fallbacks).
    for (const r of routes) {
      const edges = [[r.served_by, "route"]].concat((r.fallbacks || []).map((f) => [f, "fallback"]));
      for (const [target, kind] of edges) {
        if (!target || target.node === "local") continue;
        const to = where.get(`${target.node}/${r.service}`);
        if (!to) continue;
        // From the rim of this node's circle to the rim of the service's dot.
        const dx = to[0] - local.x;
        const dy = to[1] - local.y;
        const length = Math.hypot(dx, dy) || 1;
        parts.push(
          svg("line", {
            x1: local.x + (dx / length) * 18,
            y1: local.y + (dy / length) * 18,
            x2: to[0] - (dx / length) * 9,
            y2: to[1] - (dy / length) * 9,
            class: `edge ${kind}`,
            "marker-end": "url(#arrow)",
            "data-testid": `edge-${r.service}-${target.node}`,
          }),
        );
      }
    }
    for (const nd of nodes) {
      for (const s of nd.services) {
        parts.push(svg("line", { x1: nd.x, y1: nd.y, x2: s.x, y2: s.y, class: "tie" }));
      }
    }
    for (const nd of nodes) {
      const g = svg("g", {
        class: `gnode${nd.local ? " local" : ""}${nd.stale ? " stale-peer" : ""}`,
        "data-testid": `graph-node-${nd.id}`,
      });
      g.append(svg("circle", { cx: nd.x, cy: nd.y, r: 16 }));
      g.append(svg("text", { x: nd.x, y: nd.y + 4, class: "glabel" }, nd.local ? "●" : "◆"));
      const lowest = Math.max(nd.y, ...nd.services.map((s) => s.y));
      const below = lowest > nd.y + 10 ? lowest - nd.y + 22 : 32;
      g.append(svg("text", { x: nd.x, y: nd.y + below, class: "gname" }, nd.label));
      for (const s of nd.services) {
        const sg = svg("g", { class: `gsvc state-${s.state}` });
        sg.append(svg("circle", { cx: s.x, cy: s.y, r: 7 }));
        const right = s.x >= nd.x;
        sg.append(
          svg(
            "text",
            { x: s.x + (right ? 10 : -10), y: s.y + 4, class: right ? "gsname" : "gsname end" },
            s.name,
          ),
        );
        sg.append(svg("title", {}, `${s.name}: ${s.state}`));
        g.append(sg);
      }
      parts.push(g);
    }
    graph.replaceChildren(...parts);
  }

  // ---- stats: CPU / memory in the table, rates as sparklines ----

  function onStats(msg) {
    const services = msg.services || {};
    for (const [name, s] of Object.entries(services)) {
      usage.set(name, { cpu: s.cpu, rss: s.rss });
      renderUsage(name);
      let points = series.get(name);
      if (!points) {
        points = { rps: [], errors: [] };
        series.set(name, points);
      }
      points.rps.push(s.rps || 0);
      points.errors.push(s.errors || 0);
      if (points.rps.length > HISTORY) points.rps.shift();
      if (points.errors.length > HISTORY) points.errors.shift();
      renderTraffic(name, s);
    }
    for (const [name, row] of trafficRows) {
      if (!(name in services)) {
        row.tr.remove();
        trafficRows.delete(name);
        series.delete(name);
      }
    }
    $("no-traffic").hidden = trafficRows.size > 0;
  }

  function renderTraffic(name, s) {
    let row = trafficRows.get(name);
    if (!row) {
      const rpsChart = svg("svg", { class: "spark", viewBox: "0 0 120 24", preserveAspectRatio: "none" });
      const errChart = svg("svg", { class: "spark err", viewBox: "0 0 120 24", preserveAspectRatio: "none" });
      const rps = el("td", { class: "num", "data-testid": `rps-${name}` });
      const errors = el("td", { class: "num", "data-testid": `errors-${name}` });
      const tr = el(
        "tr",
        { "data-testid": `traffic-${name}` },
        el("td", { class: "name", text: name }),
        el("td", { "data-testid": `rps-chart-${name}` }, rpsChart),
        rps,
        el("td", { "data-testid": `errors-chart-${name}` }, errChart),
        errors,
      );
      row = { tr, rpsChart, errChart, rps, errors };
      trafficRows.set(name, row);
      const body = $("traffic");
      const after = [...trafficRows.keys()].sort().find((other) => other > name);
      body.insertBefore(tr, after ? trafficRows.get(after).tr : null);
    }
    const points = series.get(name);
    spark(row.rpsChart, points.rps, 1);
    spark(row.errChart, points.errors, 100);
    setText(row.rps, number(s.rps, s.rps >= 10 ? 0 : 1));
    setText(row.errors, `${number(s.errors, 0)} %`);
  }

  function spark(chart, values, floor) {
    const W = 120;
    const H = 24;
    const top = Math.max(floor, ...values);
    const step = W / (HISTORY - 1);
    const start = W - step * (values.length - 1);
    const pts = values.map((v, i) => [start + i * step, H - 1 - (v / top) * (H - 3)]);
    const line = pts.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" ");
    const area = pts.length
      ? `M ${pts[0][0].toFixed(1)},${H} L ${line.replaceAll(" ", " L ")} L ${W},${H} Z`
      : "";
    chart.replaceChildren(
      svg("line", { x1: 0, y1: H - 0.5, x2: W, y2: H - 0.5, class: "base" }),
      svg("path", { d: area, class: "area" }),
      svg("polyline", { points: line, class: "line" }),
      svg("title", {}, `peak ${number(Math.max(0, ...values), 1)} in the last minute`),
    );
  }

  // ---- the log tail ----

  function renderLogChoices(services) {
    const select = $("log-service");
    const names = services.map((s) => s.name);
    const have = [...select.options].slice(1).map((o) => o.value);
    if (have.join("\n") !== names.join("\n")) {
      select.replaceChildren(
        el("option", { value: "", text: "(choose a service)" }),
        ...names.map((name) => el("option", { value: name, text: name })),
      );
      select.value = names.includes(subscribed) ? subscribed : "";
    }
    if (!picked && names.length) {
      picked = true;
      choose(names[0]);
    }
  }

  function choose(name) {
    subscribed = name;
    $("log-service").value = name;
    $("log").replaceChildren();
    send({ subscribe: name || null });
  }

  function onLog(msg) {
    if (msg.service !== subscribed) return;
    const pane = $("log");
    if (msg.reset) pane.replaceChildren();
    const atBottom = pane.scrollHeight - pane.scrollTop - pane.clientHeight < 24;
    const lines = (msg.lines || []).map((line) =>
      el(
        "div",
        { class: line.system ? "line system" : "line" },
        el("span", { class: "time", text: clock(line.time) }),
        line.text,
      ),
    );
    pane.append(...lines);
    while (pane.childElementCount > LOG_LINES) pane.firstElementChild.remove();
    if ($("log-follow").checked && (atBottom || msg.reset)) pane.scrollTop = pane.scrollHeight;
  }

  const HANDLERS = { state: onState, stats: onStats, log: onLog };

  document.addEventListener("DOMContentLoaded", () => {
    $("log-service").addEventListener("change", (event) => choose(event.target.value));
    setConnected(false);
    setText($("connection"), "connecting…");
    connect();
  });
})();
