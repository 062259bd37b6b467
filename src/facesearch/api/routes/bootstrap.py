from __future__ import annotations

import base64
import hashlib
import html
from typing import Annotated

from fastapi import APIRouter, Form
from fastapi.responses import HTMLResponse

from facesearch.api.deps import CtxDep
from facesearch.auth.totp import qr_svg
from facesearch.services.bootstrap import redeem_bootstrap

router = APIRouter(tags=["operations"])

_FORM = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>facesearch: first administrator</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head><body>
<main><h1>Create the first system administrator</h1>
<form method="post" action="/bootstrap">
<input type="hidden" name="token" id="token">
<p><label>User name <input name="username" required autocomplete="username"></label></p>
<p><label>Password (12+ characters) <input name="password" type="password" required minlength="12"
 autocomplete="new-password"></label></p>
<p><button type="submit">Create</button></p></form></main>
<script>{script}</script>
</body></html>"""
# The link's token travels in the URL's fragment (never sent to a server or a log); this script
# copies it into the form. The page's policy allows this one script by its hash, nothing else.
_SCRIPT = "document.getElementById('token').value = new URLSearchParams(location.hash.slice(1)).get('token') || '';"
_FORM = _FORM.replace("{script}", _SCRIPT)
_CSP = ("default-src 'none'; script-src 'sha256-"
        + base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode() + "'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
_HEADERS = {"Content-Security-Policy": _CSP, "Cache-Control": "no-store"}


@router.get("/bootstrap", response_class=HTMLResponse, include_in_schema=False)
def bootstrap_form() -> HTMLResponse:
    return HTMLResponse(_FORM, headers=_HEADERS)


@router.post("/bootstrap", response_class=HTMLResponse, include_in_schema=False)
def bootstrap(ctx: CtxDep, token: Annotated[str, Form()], username: Annotated[str, Form()],
              password: Annotated[str, Form()]) -> str:
    user = redeem_bootstrap(ctx, token, username, password)
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'><title>facesearch</title></head><body><main>"
            f"<h1>Administrator {html.escape(user.username)} created</h1>"
            "<p>Scan this code with an authenticator app now; it is shown only once. "
            "Every sign-in needs the password and a one-time code.</p>"
            f"{qr_svg(user.totp_uri)}<p>Secret: <code>{html.escape(user.totp_secret)}</code></p></main></body></html>")
