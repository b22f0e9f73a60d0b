"""HTTP responses for audit reports: the HTML page, or its PDF print."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Query
from fastapi.responses import HTMLResponse, Response

from services.core import report

ReportFormat = Annotated[
    Literal["html", "pdf"],
    Query(
        alias="format",
        description="html (default), or pdf printed by headless Chromium on the API host "
        f"(503 without it; by hand: {report.PDF_COMMAND})",
    ),
]


def respond(page: str, fmt: str, name: str) -> Response:
    if fmt == "pdf":
        return Response(
            report.to_pdf(page),
            media_type="application/pdf",
            headers={"Content-Disposition": f'inline; filename="{name}.pdf"'},
        )
    return HTMLResponse(page)
