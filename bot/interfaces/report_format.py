"""The post-incident report as Markdown or HTML (the JSON is the report itself)."""

from __future__ import annotations

from html import escape
from typing import Any

COLUMNS = (
    "audience",
    "channel",
    "total",
    "sent",
    "delivered",
    "acknowledged",
    "failed",
    "first_delivery_s",
    "ack_90_s",
)


def _cell(value: Any) -> str:
    return "—" if value is None else str(value)


def to_markdown(report: dict[str, Any]) -> str:
    """A review-ready Markdown document."""
    inc = report["incident"]
    lines = [
        f"# {inc['id']} — {inc['title']}",
        "",
        f"- Severity: {inc['severity']}; status: {inc['status']}",
        f"- Affected: {', '.join(inc['systems'])}; unaffected: "
        f"{', '.join(inc['unaffected']) or '—'}",
        f"- Declared {inc['declared_at']} by {inc['declared_by']}; resolved "
        f"{inc['resolved_at'] or '—'}",
        "",
        "## Timeline",
        "",
    ]
    lines += [f"- {e['at']} **{e['action']}** by {e['actor']}" for e in report["timeline"]]
    lines += [
        "",
        "## Deliveries",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += [
        "| " + " | ".join(_cell(g[c]) for c in COLUMNS) + " |"
        for g in report["deliveries"]["groups"]
    ]
    d = report["deliveries"]
    lines += [
        "",
        f"Total {d['total']}; failovers {d['failovers']}; re-routed {d['rerouted']}; "
        f"escalations {d['escalations']}; possible duplicates {d['possible_duplicates']}.",
        "",
        "## Sites",
        "",
    ]
    lines += [
        f"- {s['site']}: {s['confirmed']} confirmed"
        + (f" ({', '.join(b['name'] for b in s['by'])})" if s["by"] else "")
        + (" — escalated" if s["escalated"] else "")
        for s in report["sites"]
    ]
    lines += ["", "## Claims", ""]
    lines += [
        f"- `{c['key']}` ({c['status']}): {c['text']} — {', '.join(c['audiences'])}, "
        f"{c['recipients']} recipient(s)" + (f"; retracted: {c['reason']}" if c["reason"] else "")
        for c in report["claims"]
    ]
    lines += ["", "## Statements", ""]
    for s in report["statements"]:
        approved = f", approved by {s['approved_by']}" if s["approved_by"] else ""
        lines += [
            f"### {s['kind']} ({s['locale']}, {s['event']}, v{s['version']}, "
            f"{s['status']}{approved})",
            "",
            f"Sent to: {', '.join(s['sent_to']) or '—'}",
            "",
            s["text"],
            "",
        ]
    return "\n".join(lines) + "\n"


def to_html(report: dict[str, Any]) -> str:
    """A standalone HTML page (every value escaped)."""
    inc = report["incident"]
    e = escape
    rows = "".join(
        "<tr>" + "".join(f"<td>{e(_cell(g[c]))}</td>" for c in COLUMNS) + "</tr>"
        for g in report["deliveries"]["groups"]
    )
    timeline = "".join(
        f"<li><time>{e(t['at'])}</time> <b>{e(t['action'])}</b> — {e(t['actor'])}</li>"
        for t in report["timeline"]
    )
    sites = "".join(
        f"<li>{e(s['site'])}: {s['confirmed']} confirmed"
        f"{' — escalated' if s['escalated'] else ''}</li>"
        for s in report["sites"]
    )
    claims = "".join(
        f"<li><code>{e(c['key'])}</code> ({e(c['status'])}): {e(c['text'])}</li>"
        for c in report["claims"]
    )
    statements = "".join(
        f"<section><h3>{e(s['kind'])} ({e(s['locale'])}, {e(s['event'])}, v{s['version']}, "
        f"{e(s['status'])})</h3><pre>{e(s['text'])}</pre></section>"
        for s in report["statements"]
    )
    d = report["deliveries"]
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>Report {e(inc['id'])}</title><style>body{{font-family:system-ui;margin:2rem;"
        "max-width:60rem}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;"
        "padding:.2rem .5rem}}pre{{white-space:pre-wrap}}</style></head><body>"
        f"<h1>{e(inc['id'])} — {e(inc['title'])}</h1>"
        f"<p>Severity {e(inc['severity'])}, status {e(inc['status'])}. Affected: "
        f"{e(', '.join(inc['systems']))}.</p><h2>Deliveries</h2><table><thead><tr>"
        + "".join(f"<th>{c}</th>" for c in COLUMNS)
        + f"</tr></thead><tbody>{rows}</tbody>"
        f"</table><p>Total {d['total']}; failovers {d['failovers']}; re-routed "
        f"{d['rerouted']}; escalations {d['escalations']}; possible duplicates "
        f"{d['possible_duplicates']}.</p><h2>Sites</h2><ul>{sites}</ul>"
        f"<h2>Timeline</h2><ol>{timeline}</ol><h2>Claims</h2><ul>{claims}</ul>"
        f"<h2>Statements</h2>{statements}</body></html>"
    )
