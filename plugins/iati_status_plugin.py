"""The "IATI datasets" page of the Airflow UI, with its JSON API and Prometheus metrics.

An Airflow 3 plugin: a FastAPI app that the API server mounts under ``/iati-status`` and an
external view that puts the page in the UI's *Browse* menu (shown in a frame, same origin,
so the UI's login cookie comes along).

Routes (all under ``/iati-status``):

=========================== =========================================================
``GET /``                   the page: datasets with stage, datastore availability,
                            reasons, last error and timeline; filters ``publisher``,
                            ``state``, ``q``; paging ``limit``/``offset``
``GET /datasets/{key}``     one dataset (id or name) in detail
``GET /api/datasets``       the same list as JSON (same parameters)
``GET /api/datasets/{key}`` one dataset as JSON (a list: names are not unique)
``GET /api/summary``        state counts, stage backlogs, parked counts by stage and
                            code, flagged publishers, the last run's telemetry
``GET /metrics``            the pipeline gauges in Prometheus text format
=========================== =========================================================

Every route needs the Airflow login (a JWT as ``Authorization: Bearer`` or the UI's
``_token`` cookie) and read access to the ``iati_refresh`` DAG; the page redirects an
anonymous browser to the login page, the API answers 401.  The data comes from the
refresher database (connection ``refresher_db``); no connection detail is ever shown.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

import jinja2
import psycopg
from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails
from airflow.api_fastapi.core_api.security import GetUserDep
from airflow.configuration import conf
from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response

from iati_refresher import metrics, status
from iati_refresher.connections import ConnectionLookupFailed
from iati_refresher.db import repository as repo
from iati_refresher.db.connection import DatabaseNotConfigured, open_refresher_db
from iati_refresher.db.types import Db as Connection
from iati_refresher.settings import get_settings

log = logging.getLogger(__name__)

URL_PREFIX = "/iati-status"
DAG_ID = "iati_refresh"  # who may read this DAG may read its datasets
MAX_LIMIT = 500
ASSETS = Path(__file__).resolve().parent / "iati_status"
_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(ASSETS / "templates"),
    autoescape=jinja2.select_autoescape(default=True),
    undefined=jinja2.StrictUndefined,
)
_CSS = (ASSETS / "page.css").read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------
# dependencies: who is asking, and a database connection
# ---------------------------------------------------------------------------------------


def reader(user: GetUserDep) -> BaseUser:
    """The logged-in user (401 without a valid token), if allowed to read the ``iati_refresh``
    DAG (else 403)."""
    if not get_auth_manager().is_authorized_dag(method="GET", details=DagDetails(id=DAG_ID), user=user):
        raise HTTPException(403, "Forbidden: the IATI datasets need read access to the iati_refresh DAG")
    return user


Reader = Annotated[BaseUser, Depends(reader)]


def refresher_db(_user: Reader) -> Iterator[Connection]:
    """A refresher database connection for one request (read only; rolled back after).
    Depends on :func:`reader`, so no anonymous request ever reaches the database."""
    try:
        conn = open_refresher_db()
    except (DatabaseNotConfigured, ConnectionLookupFailed, psycopg.Error) as exc:
        # The reason goes to the server log only: it can name hosts and users.
        log.error("iati-status: refresher database unavailable: %s", exc)
        raise HTTPException(503, "The refresher database is not reachable; see the API server log.") from None
    try:
        conn.read_only = True
        yield conn
    finally:
        conn.rollback()
        conn.close()


Db = Annotated[Connection, Depends(refresher_db)]
PublisherQ = Annotated[str | None, Query(description="publisher org id or short name")]
StateQ = Annotated[str | None, Query(description=f"one of: {', '.join(status.STATES)}")]
TextQ = Annotated[str | None, Query(description="a substring of the dataset name or id")]
LimitQ = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
OffsetQ = Annotated[int, Query(ge=0)]


def _state(value: str | None) -> str | None:
    value = (value or "").strip() or None
    if value is not None and value not in status.STATES:
        raise HTTPException(422, f"unknown state {value!r}; expected one of {', '.join(status.STATES)}")
    return value


def _json(value: Any) -> JSONResponse:
    return JSONResponse(jsonable_encoder(value))


# ---------------------------------------------------------------------------------------
# data shared by the page and the API
# ---------------------------------------------------------------------------------------


def summary(conn: Connection) -> dict[str, Any]:
    """State counts, backlogs, parked counts, flagged publishers and the last run."""
    settings = get_settings()
    counts = repo.document_state_counts(conn)
    run_id = repo.latest_run_id(conn)
    stages = repo.run_summary(conn, run_id) if run_id else []
    return {
        "datasets": {"total": sum(counts.values()), "by_state": counts},
        "backlogs": repo.stage_backlogs(conn, safety_period_s=settings.safety_check_period_s),
        "parked": [dict(r) for r in repo.parked_counts(conn)],
        "flagged_publishers": [dict(r) for r in repo.flagged_publishers(conn)],
        "last_run": {
            "run_id": run_id,
            "finished_at": max((s["finished_at"] for s in stages), default=None),
            "stages": [dict(s) for s in stages],
        }
        if run_id
        else None,
    }


# ---------------------------------------------------------------------------------------
# the app
# ---------------------------------------------------------------------------------------

app = FastAPI(
    title="IATI dataset status",
    description="Per-dataset state of the IATI refresher pipeline (needs the Airflow login).",
    docs_url=None,
    redoc_url=None,
    openapi_url="/openapi.json",
)


@app.exception_handler(HTTPException)
async def _errors(request: Request, exc: HTTPException) -> Response:
    """An anonymous browser asking for a page goes to the login page; the API answers 401."""
    path = request.url.path[len(request.scope.get("root_path", "").rstrip("/")) :]
    if exc.status_code == 401 and not path.startswith(("/api/", "/metrics", "/openapi")):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(get_auth_manager().get_url_login(next_url=target), status_code=303)
    return await http_exception_handler(request, exc)


@app.get("/api/datasets", summary="Datasets with their status (paged)")
def api_datasets(
    _user: Reader,
    conn: Db,
    publisher: PublisherQ = None,
    state: StateQ = None,
    q: TextQ = None,
    limit: LimitQ = 50,
    offset: OffsetQ = 0,
) -> JSONResponse:
    page = status.list_datasets(
        conn, publisher=publisher or None, state=_state(state), query=q or None, limit=limit, offset=offset
    )
    return _json(page)


@app.get("/api/datasets/{key}", summary="One dataset by id or name")
def api_dataset(key: str, _user: Reader, conn: Db) -> JSONResponse:
    rows = status.dataset_status(conn, key)
    if not rows:
        raise HTTPException(404, f"no dataset with id or name {key!r}")
    return _json(rows)


@app.get("/api/summary", summary="Pipeline overview")
def api_summary(_user: Reader, conn: Db) -> JSONResponse:
    return _json(summary(conn))


@app.get("/metrics", summary="Pipeline gauges (Prometheus text format)", response_class=PlainTextResponse)
def prometheus_metrics(_user: Reader, conn: Db) -> PlainTextResponse:
    text = metrics.render_prometheus(metrics.collect(conn))
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")


def _when(value: Any) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    return "" if value is None else str(value)


def _render(request: Request, template: str, **context: Any) -> HTMLResponse:
    base = request.scope.get("root_path", "").rstrip("/")
    html = _templates.get_template(template).render(
        css=_CSS,
        base=base,
        when=_when,
        states=status.STATES,
        state_labels=status.STATE_LABELS,
        stage_words=status.STAGE_WORDS,
        ts_labels=status.TIMESTAMP_LABELS,
        **context,
    )
    # Same origin only: the Airflow UI frames this page; nobody else may.
    return HTMLResponse(
        html, headers={"Content-Security-Policy": "frame-ancestors 'self'", "Cache-Control": "no-store"}
    )


@app.get("/", response_class=HTMLResponse, include_in_schema=False)
def page(
    request: Request,
    _user: Reader,
    conn: Db,
    publisher: PublisherQ = None,
    state: StateQ = None,
    q: TextQ = None,
    limit: LimitQ = 50,
    offset: OffsetQ = 0,
) -> HTMLResponse:
    filters = {"publisher": (publisher or "").strip() or None, "state": _state(state), "q": (q or "").strip() or None}
    listing = status.list_datasets(
        conn, publisher=filters["publisher"], state=filters["state"], query=filters["q"], limit=limit, offset=offset
    )
    overview = summary(conn)
    counts = repo.document_state_counts(conn, publisher=filters["publisher"], query=filters["q"])
    base = request.scope.get("root_path", "").rstrip("/")

    def link(**changes: Any) -> str:
        params = {**filters, "limit": limit if limit != 50 else None, "offset": offset or None, **changes}
        query = urlencode({k: v for k, v in params.items() if v not in (None, "", 0)})
        return f"{base}/" + (f"?{query}" if query else "")

    return _render(
        request,
        "list.html",
        page=listing,
        filters=filters,
        counts=counts,
        backlogs=overview["backlogs"],
        flagged=overview["flagged_publishers"],
        last_run=overview["last_run"],
        link=link,
        checked_at=datetime.now(UTC),
    )


@app.get("/datasets/{key}", response_class=HTMLResponse, include_in_schema=False)
def dataset_page(key: str, request: Request, _user: Reader, conn: Db) -> HTMLResponse:
    rows = status.dataset_status(conn, key)
    if not rows:
        raise HTTPException(404, f"no dataset with id or name {key!r}")
    return _render(request, "detail.html", row=rows[0])


def _api_root() -> str:
    """The API server's path prefix (``[api] base_url`` may put Airflow under a sub-path)."""
    return urlsplit(conf.get("api", "base_url", fallback="") or "").path.rstrip("/")


class IatiStatusPlugin(AirflowPlugin):
    """Registers the app under ``/iati-status`` and the *Browse → IATI datasets* menu entry."""

    name = "iati_status"
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "IATI dataset status"}]
    external_views = [
        {
            "name": "IATI datasets",
            "href": f"{_api_root()}{URL_PREFIX}/",
            "url_route": "iati-datasets",
            "destination": "nav",
            "category": "browse",
        }
    ]
