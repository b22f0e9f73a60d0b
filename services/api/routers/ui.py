"""The web UI: one HTML page, a script and a stylesheet, served without a token.

The page holds no data; every data call it makes carries the user's bearer token, so serving
the files openly reveals nothing. They ship inside the package (services/web), so running
the UI needs no build step and loads nothing from outside the API's origin.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse

from services.core.errors import NotFound

WEB_DIR = Path(__file__).resolve().parents[2] / "web"

# Only these files are served: a fixed map rather than a directory mount, so nothing else
# that lands in the package directory (caches, editor files) becomes reachable.
ASSETS: dict[str, str] = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}

# Scripts only from our own files, so an injected string can never run. Inline styles are
# allowed because the audit report, shown in a blob: frame, inherits this policy and carries
# its own <style> block and style attributes; the UI's own code sets none. frame-src blob: is
# that report frame; img-src data: is the empty favicon that keeps the browser from asking
# for /favicon.ico.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-src blob:; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidate each time so a new release's script is never mixed with an old page.
    "Cache-Control": "no-cache",
}

router = APIRouter(prefix="/ui", include_in_schema=False)


@router.get("")
def ui_root() -> RedirectResponse:
    # The page refers to its files relatively, which needs the trailing slash; relative
    # paths keep the UI working behind a proxy that mounts the API under a prefix.
    return RedirectResponse("ui/", status_code=307)


@router.get("/")
def ui_index() -> FileResponse:
    return FileResponse(
        WEB_DIR / "index.html", media_type="text/html; charset=utf-8", headers=HEADERS
    )


@router.get("/static/{name}")
def ui_asset(name: str) -> FileResponse:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise NotFound(f"no UI file '{name}'")
    return FileResponse(WEB_DIR / name, media_type=media_type, headers=HEADERS)
