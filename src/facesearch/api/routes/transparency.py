from __future__ import annotations

import html

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from facesearch.api.deps import CtxDep
from facesearch.services.transparency import transparency_notice

router = APIRouter(tags=["transparency"])


@router.get("/api/v1/transparency")
def transparency_json(ctx: CtxDep) -> dict[str, object]:
    """The public notice (no sign-in): holdings, legal bases, retention, how to ask for access or erasure."""
    return transparency_notice(ctx)


@router.get("/transparency", response_class=HTMLResponse, include_in_schema=False)
def transparency_page(ctx: CtxDep) -> HTMLResponse:
    n = transparency_notice(ctx)
    e = html.escape
    rows = "".join(
        f"<tr><td>{g['images']}</td><td>{g['faces']}</td><td>{e('; '.join(g['legal_bases']))}</td>"
        f"<td>{g['retention_days'] or 'until erased'}</td><td>{e(g['model_pack'])}</td></tr>"
        for g in n["holdings"]["by_gallery"])
    r = n["retention"]
    body = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>facesearch: transparency notice</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head><body><main>
<h1>Transparency notice</h1><p>{e(n['operator'])} runs a face search system for investigations.</p>
<h2>What is held</h2><p>{n['holdings']['galleries']} galleries, {n['holdings']['images']} images,
{n['holdings']['faces']} faces.</p>
<table><thead><tr><th>Images</th><th>Faces</th><th>Legal bases</th><th>Kept (days)</th><th>Model</th></tr></thead>
<tbody>{rows}</tbody></table>
<h2>How long</h2><ul><li>Probe images of searches: {r['probe_images_days']} days</li>
<li>Search records: {r['search_records_days']} days</li><li>Audit records: {e(r['audit_records'])}</li></ul>
<h2>Safeguards</h2><ul>{''.join(f'<li>{e(x)}</li>' for x in n['safeguards'])}</ul>
<h2>Your rights</h2><p>Contact: {e(n['your_rights']['contact'])}</p>
<p>{e(n['your_rights']['access'])}</p><p>{e(n['your_rights']['erasure'])}</p>
<p>{e(n['your_rights']['how_requests_are_handled'])}</p>
</main></body></html>"""
    return HTMLResponse(body, headers={"Content-Security-Policy": "default-src 'none'; style-src 'self'; "
                                                                  "frame-ancestors 'none'; base-uri 'none'"})
