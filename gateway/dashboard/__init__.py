"""The dashboard: one static page, its script and its stylesheet, served at `/` and
`/dashboard/static/`. The page holds no data: its script reads the JSON API with the key the
user gives it (kept in the tab's sessionStorage, sent as `Authorization: Bearer`)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).with_name("static")
STATIC_URL = "/dashboard/static"

router = APIRouter(include_in_schema=False)


@router.get("/")
async def index() -> FileResponse:
    """The dashboard page (public: it contains no data)."""
    # NOTE: no-cache so a new version's script is fetched after an upgrade.
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


def install(app: FastAPI) -> None:
    app.include_router(router)
    app.mount(STATIC_URL, StaticFiles(directory=STATIC), name="dashboard")
