"""How the running mesh looks in a terminal: the tables and drawings of `devmesh status`,
`status --routes`, `peers` and `graph`, made from the control API's JSON documents."""

from __future__ import annotations

import json
from typing import Any


def _place(where: dict[str, Any] | None) -> str:
    if where is None:
        return "-"
    if where["node"] == "local":
        return f"local {where['address']}"
    rtt = f", {where['rtt_ms']} ms" if where.get("rtt_ms") is not None else ""
    return f"{where['name']} {where['address']}{rtt}"


def render_routes(doc: dict[str, Any]) -> str:
    """`devmesh status --routes`: one row per name."""
    rows: list[tuple[str, ...]] = [("SERVICE", "SERVED BY", "WHY", "THEN")]
    for r in doc["routes"]:
        then = ", ".join(_place(w) for w in r["fallbacks"]) or "-"
        rows.append((r["service"], _place(r["served_by"]), r["why"], then))
    return "\n".join(_table(rows))


def render_graph(doc: dict[str, Any]) -> str:
    """The graph as text: the nodes with their services, then where each name goes."""
    names = {n["node"]: n["name"] for n in doc["nodes"]}
    lines = [f"namespace {doc['namespace']}", ""]
    for n in doc["nodes"]:
        lines.append(f"[{n['name']}]" + (f" {n['address']}" if n.get("address") else ""))
        for s in n["services"]:
            lines.append(f"  - {s['name']} ({s['state']})")
    lines += ["", "routes from this node:"]
    for r in doc["routes"]:
        arrow = f"--> {names.get(r['to'], r['to'])}" if r["served"] else "--x"
        lines.append(f"  {r['service']} {arrow}  ({r['why']})")
    return "\n".join(lines)


def render_dot(doc: dict[str, Any]) -> str:
    """The graph in Graphviz's dot language: one cluster per node, an edge per route."""

    def q(text: str) -> str:
        return json.dumps(text)  # a double-quoted string with escapes dot understands

    lines = ["digraph devmesh {", "  rankdir=LR;", f"  label={q('namespace ' + doc['namespace'])};"]
    for i, n in enumerate(doc["nodes"]):
        lines.append(f"  subgraph cluster_{i} {{ label={q(n['name'])};")
        for s in n["services"]:
            label = f"{s['name']} ({s['state']})"
            lines.append(f"    {q(n['node'] + '/' + s['name'])} [label={q(label)}];")
        lines.append("  }")
    for r in doc["routes"]:
        if r["served"]:
            lines.append(
                f"  {q('route/' + r['service'])} [shape=plaintext,label={q(r['service'])}];"
            )
            lines.append(
                f"  {q('route/' + r['service'])} -> {q(r['to'] + '/' + r['service'])}"
                f" [tooltip={q(r['why'])}];"
            )
    lines.append("}")
    return "\n".join(lines)


def render_peers(data: dict[str, Any]) -> str:
    """The peers table (`devmesh peers`)."""
    disc = data["discovery"]
    if not disc["enabled"]:
        return "discovery is off ([discovery] enabled = false, or DEVMESH_DISCOVERY=off)"
    head = f"node {data['node']}  namespace {data['namespace']}  udp port {disc['port']}"
    if not data["peers"]:
        return f"{head}\n\nno peers found yet (they announce every {disc['interval']:g}s)"
    rows: list[tuple[str, ...]] = [("PEER", "NAME", "ADDRESS", "SEEN", "SERVICES")]
    for p in data["peers"]:
        services = ", ".join(
            s["name"] + (f"@{s['version']}" if s["version"] else "") + f" ({s['state']})"
            for s in p["services"]
        )
        rows.append(
            (
                p["node"],
                p["name"],
                f"{p['address']}:{p['proxy_port']}",
                f"{p['seen_ago']:.1f}s ago",
                services or "-",
            )
        )
    return "\n".join([head, "", *_table(rows)])


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _health(h: dict[str, Any] | None) -> str:
    """`healthy`, `unhealthy (HTTP 503)`, `unknown`; `ready` / `not listening` for a service
    checked only by its port; `-` when nothing runs."""
    if not h:
        return "-"
    if h.get("check") == "port":
        return "ready" if h["status"] == "healthy" else "not listening"
    if h["status"] == "unhealthy" and h.get("detail"):
        return f"unhealthy ({h['detail']})"
    return str(h["status"])


def render_status(data: dict[str, Any]) -> str:
    """The status table (`devmesh status`)."""
    node = data["node"]
    lines = [f"project {node['project']}  namespace {node['namespace']}  pid {node['pid']}"]
    dashboard = node.get("dashboard") or {}
    if dashboard.get("url"):
        lines.append(f"dashboard {dashboard['url']}  metrics {dashboard['metrics']}")
    lines.append("")
    rows: list[tuple[str, ...]] = [
        ("SERVICE", "STATE", "HEALTH", "PID", "PORT", "RESTARTS", "UPTIME", "URL", "INFO")
    ]
    for s in data["services"]:
        rows.append(
            (
                s["name"],
                s["state"],
                _health(s.get("health")),
                str(s["pid"] or "-"),
                str(s["port"] or "-"),
                str(s["restarts"]),
                _age(s["uptime"]),
                s.get("url") or "-",
                s["reason"] or "",
            )
        )
    lines += _table(rows)
    workers = ", ".join(
        f"{w['name']} {w['state']} (pid {w['pid'] or '-'}, restarts {w['restarts']})"
        for w in data["workers"]
    )
    lines += ["", f"workers: {workers}"]
    for error in node.get("config_error") or []:
        lines.append(f"config not applied: {error}")
    return "\n".join(lines)


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
