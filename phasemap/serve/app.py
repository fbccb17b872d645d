"""`phasemap serve ROOT`: a sweep's progress and figures in the browser, updated as records land.

An aiohttp application: the page (`static/`), which polls `/api/status` and redraws when a
sweep's records change, and the JSON API it and scripts use (`api`, `readonly`). The
records are read incrementally (`query.LiveRecords`), at most once a second, on one thread
that also draws the figures (matplotlib is not thread-safe); queries run on their own
threads with a time limit. Errors are JSON with a message (400 for a bad request, 401
without the token), never a traceback page.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiohttp import web

from ..analysis.query import LiveRecords
from ..sweep.status import stored_sweeps
from . import api, readonly

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
COOKIE = "phasemap_token"


def needs_token(host: str, token: str | None) -> str | None:
    """The token a server on `host` requires: the one given; else, on any host but loopback, a
    new one (printed in the URL); else none."""
    if token:
        return token
    return None if host in LOCAL_HOSTS else secrets.token_urlsafe(16)


class Server:
    """The records of one root and the application that shows them."""

    def __init__(self, root: str, token: str | None = None, sql_timeout: float = 10.0, refresh_every: float = 1.0):
        self.live = LiveRecords(root)
        self.token = token
        self.sql_timeout = sql_timeout
        self.refresh_every = refresh_every
        self.data = ThreadPoolExecutor(1, thread_name_prefix="phasemap-data")
        self.queries = ThreadPoolExecutor(2, thread_name_prefix="phasemap-sql")
        self.progress: dict[str, api.Progress] = defaultdict(api.Progress)
        self.refreshed = -float("inf")

    async def _on_data(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.data, fn, *args)

    async def fresh(self) -> None:
        """Read what changed under the root, at most every `refresh_every` seconds."""
        if time.monotonic() - self.refreshed >= self.refresh_every:
            self.refreshed = time.monotonic()
            read = await self._on_data(self.live.refresh)
            if read:
                log.info("read %d new or changed record file(s)", len(read))

    async def sweep(self, request: web.Request) -> str:
        """The request's `sweep`, checked; the only sweep when there is one and none is named."""
        await self.fresh()
        found = await self._sweeps()
        sweep = request.query.get("sweep")
        if sweep is None and len(found) == 1:
            return found[0]
        if sweep not in found:
            there = ", ".join(found) or "none yet"
            raise api.BadRequest(f"sweep: `a sweep under the root` must hold, but got {sweep!r} "
                                 f"(sweeps there: {there})")
        return sweep

    async def _sweeps(self) -> list[str]:
        """The sweeps under the root: each has a folder, from its driver's start (the stored config),
        before any of its runs has written records."""
        return await self._on_data(stored_sweeps, self.live.root)

    # ------------------------------------------------------------------------- handlers

    async def page(self, request: web.Request) -> web.StreamResponse:
        response = web.FileResponse(STATIC / "index.html")
        if self.token and request.query.get("token") == self.token:  # the printed URL: later requests by cookie
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="Strict")
        return response

    async def sweeps(self, request: web.Request) -> web.Response:
        await self.fresh()
        return web.json_response({"root": self.live.root, "sweeps": await self._sweeps()})

    async def status(self, request: web.Request) -> web.Response:
        sweep = await self.sweep(request)
        return web.json_response(await self._on_data(api.status, self.live, sweep, self.progress[sweep]))

    async def figure(self, request: web.Request) -> web.Response:
        sweep = await self.sweep(request)
        kind = request.query.get("kind", "phase-diagram")
        return web.json_response(await self._on_data(api.figure, self.live, sweep, kind, dict(request.query)))

    async def phase_grid(self, request: web.Request) -> web.Response:
        sweep = await self.sweep(request)
        return web.json_response(await self._on_data(api.phase_grid, self.live, sweep, dict(request.query)))

    async def networks(self, request: web.Request) -> web.Response:
        sweep = await self.sweep(request)
        try:
            cell = json.loads(request.query.get("cell", ""))
        except json.JSONDecodeError:
            cell = None
        if not isinstance(cell, dict) or not cell:
            raise api.BadRequest(f"cell: `a JSON object of column: value` must hold, but got "
                                 f"{request.query.get('cell')!r}")
        return web.json_response(await self._on_data(api.networks, self.live, sweep, cell, dict(request.query)))

    async def sql(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            raise api.BadRequest('body: `a JSON object {"query": "SELECT ..."}` must hold')
        await self.fresh()
        con = await self._on_data(self.live.connect)
        loop = asyncio.get_running_loop()
        df = await loop.run_in_executor(self.queries, readonly.run, con, body.get("query"), api.ROW_CAP,
                                        self.sql_timeout)
        if body.get("format") == "csv":
            return web.Response(text=df.head(api.ROW_CAP).to_csv(index=False), content_type="text/csv",
                                headers={"Content-Disposition": 'attachment; filename="query.csv"'})
        return web.json_response(readonly.answer(df))

    # ------------------------------------------------------------------------- the application

    @web.middleware
    async def _guard(self, request: web.Request, handler):
        """The token (query `token`, header `X-Phasemap-Token` or the page's cookie) where one
        is set, and errors as JSON messages."""
        if self.token:
            given = (request.query.get("token") or request.headers.get("X-Phasemap-Token")
                     or request.cookies.get(COOKIE) or "")
            if not secrets.compare_digest(given.encode(), self.token.encode()):
                return web.json_response({"error": "token: `the server's token` must be given (the URL printed at "
                                                   "start-up has it: ?token=...), but it was missing or wrong"},
                                         status=401)
        try:
            return await handler(request)
        except api.BadRequest as e:
            return web.json_response({"error": str(e)}, status=400)
        except web.HTTPException as e:  # 404, 405: aiohttp's own, as JSON
            return web.json_response({"error": f"{e.status} {e.reason}: {request.method} {request.path}"},
                                     status=e.status)
        except Exception as e:  # noqa: BLE001 - logged with its traceback; the page gets the message
            log.exception("serve: %s %s failed", request.method, request.path_qs)
            return web.json_response({"error": f"internal error: {type(e).__name__}: {e}"}, status=500)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard])
        app.add_routes([
            web.get("/", self.page),
            web.get("/api/sweeps", self.sweeps),
            web.get("/api/status", self.status),
            web.get("/api/figure", self.figure),
            web.get("/api/phase-grid", self.phase_grid),
            web.get("/api/networks", self.networks),
            web.post("/api/sql", self.sql),
            web.static("/static", STATIC),
        ])
        app.on_cleanup.append(self._close)
        return app

    async def _close(self, app) -> None:
        self.data.shutdown(wait=False, cancel_futures=True)
        self.queries.shutdown(wait=False, cancel_futures=True)


async def serve(root: str, host: str = "127.0.0.1", port: int = 8050, token: str | None = None,
                sweep: str | None = None, ready=print) -> None:
    """Serve until cancelled; `ready(url)` once listening (the URL has the token and sweep)."""
    token = needs_token(host, token)
    runner = web.AppRunner(Server(root, token).app(), access_log=log)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    try:
        bound = runner.addresses[0][1]
        name = f"[{host}]" if ":" in host else host
        query = "&".join(f"{k}={v}" for k, v in (("sweep", sweep), ("token", token)) if v)
        ready(f"http://{name}:{bound}/" + (f"?{query}" if query else ""))
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
