"""The web view's routes, served by the HTTP endpoint (docs/web.md): GET /view (the page)
and GET /view/stream (server-sent events: fragments that changed).

Thin: the model is gathered here from the endpoint's control session (the same views
every protocol reads, the controllers' forecasts) and from the runner's control socket
(the actor tree, as `relevent status` gets it); the HTML is relevent/web/page.py's.

* Read only: the view writes nothing; a party sees the DERs it may read, and the actor tree
  only if it may read every DER (the tree names all of them).
* Live: every TICK_S the stream renders each fragment and sends those that changed.  A
  controller's view changing (a write, an enable, a switch) sets off a new forecast of it
  at once, so a schedule written over any protocol is on the chart within a second or two;
  forecasts are also refreshed every FORECAST_REFRESH_S as time passes.
* The measured power of the last hours is kept by this endpoint (`Samples`: sampled every
  TICK_S while it runs, one point per new measurement), so the chart needs no database.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qs

from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse, StreamingResponse

from relevent.clock import now_ms
from relevent.runtime.control import SiteNotRunning, control_socket_path, request
from relevent.runtime.status import walk, walk_depths
from relevent.scheduling.schedule import State
from relevent.web import page

log = logging.getLogger("relevent.web")

TICK_S = 0.5                   # how often a stream looks for changes
TREE_EVERY_S = 2.0             # how often the actor tree is asked of the runner
FORECAST_REFRESH_S = 60.0      # forecasts are redone this often even when nothing is written
FORECAST_TIMEOUT_S = 5.0
SAMPLES_KEPT = int(page.PAST_MS / 1000 / TICK_S)   # 3 h of points at most per DER
CONTROL_TIMEOUT_S = 5.0
TOKEN_COOKIE = "relevent_token"
LOGIN_MAX_BYTES = 4096
NO_STORE = {"Cache-Control": "no-store"}


class Samples:
    """Measured power per DER over the last hours: (at ms, W), one point per measurement."""

    def __init__(self) -> None:
        self.points: dict[str, deque] = {}

    def add(self, der: str, at: int, w: float | None) -> None:
        q = self.points.setdefault(der, deque(maxlen=SAMPLES_KEPT))
        if w is not None and (not q or q[-1][0] != at):
            q.append((at, w))

    def since(self, der: str, t0: int) -> list[tuple[int, float]]:
        return [p for p in self.points.get(der, ()) if p[0] >= t0]


def view_digest(view: dict | None) -> str:
    """What a forecast depends on: the schedules' settings and states (not the time)."""
    return json.dumps(view and view["schedules"], sort_keys=True, default=str)


class WebView:
    def __init__(self, ctx: Any, site_name: str) -> None:
        self.ctx, self.site = ctx, site_name
        self.samples = Samples()
        self.forecasts: dict[tuple[str, str], tuple[str, float, list]] = {}   # digest, when, events
        self.tree: dict | None = None
        self.commands: dict[str, dict] = {}
        self.rendered: dict[tuple, tuple[float, dict]] = {}   # per party: when, fragments
        self.tree_at = 0.0

    # -- the model ---------------------------------------------------------------------------------
    async def forecast(self, der: str, kind: str, view: dict | None) -> list:
        digest, key = view_digest(view), (der, kind)
        cached = self.forecasts.get(key)
        if cached and cached[0] == digest and time.monotonic() - cached[1] < FORECAST_REFRESH_S:
            return cached[2]
        fut = self.ctx.forecast(der, kind, page.FUTURE_MS)
        try:
            events = await asyncio.wait_for(asyncio.wrap_future(fut), FORECAST_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - a timeout or a restarting controller: the page keeps the last
            fut.cancel()
            log.warning("web view: forecast of %s/%s: %s", der, kind, exc or type(exc).__name__)
            return cached[2] if cached else []
        self.forecasts[key] = (digest, time.monotonic(), events)
        return events

    async def der_model(self, name: str, now: int) -> dict:
        der = self.ctx.ders[name]
        m = self.ctx.measurement(name)
        if m is not None:
            self.samples.add(name, m.at, m.w)
        functions = {}
        views = {kind: self.ctx.view(name, kind, now) for kind in der["functions"]}
        # Every function's controller computes its forecast at once (each is its own actor).
        forecasts = await asyncio.gather(*(self.forecast(name, kind, view) for kind, view in views.items()))
        for (kind, view), forecast in zip(views.items(), forecasts):
            schedules = []
            for sname, entry in (view or {}).get("schedules", {}).items():
                st, se = entry.get("status") or {}, entry["settings"]
                state = State(st.get("state", State.NOT_READY)).name
                schedules.append({"name": sname, "state": state, "prio": se["prio"], "party": se.get("writer", ""),
                                  "value": st.get("value"), "next_start": st.get("next_start"),
                                  "reserve": se["reserve"]})
            functions[kind] = {"output": view and view["output"], "source": view and view["source"],
                               "schedules": schedules, "forecast": forecast}
        return {"name": name, "type": der.get("type"), "rated_w": der.get("rated_power_w"),
                "measured": None if m is None else {"w": m.w, "at": m.at, "quality": m.quality},
                "command": self.commands.get(name),
                "history": self.samples.since(name, now - page.PAST_MS), "functions": functions}

    async def actor_tree(self) -> dict | None:
        if time.monotonic() - self.tree_at >= TREE_EVERY_S:
            self.tree_at = time.monotonic()
            try:
                reply = await asyncio.to_thread(request, control_socket_path(self.ctx.state_dir), {"op": "status"},
                                                CONTROL_TIMEOUT_S)
                self.tree = reply.get("tree") if reply.get("ok", True) else None
                # The DERs' device commands are in their nodes' detail (the session does not see them).
                self.commands = {n["name"]: n["detail"]["command"] for n in walk(self.tree or {})
                                 if n.get("role") == "der" and (n.get("detail") or {}).get("command")}
            except (SiteNotRunning, OSError, ValueError) as exc:
                log.debug("web view: no actor tree: %s", exc)
                self.tree = None
        return self.tree

    def readable(self, who: Any) -> tuple[list[str], bool]:
        """The DERs `who` may read, and whether it may see the whole tree."""
        names = [n for n in self.ctx.ders if self.ctx.may(who, "read", n).ok]
        return names, len(names) == len(self.ctx.ders)

    async def fragments(self, who: Any) -> dict[str, str]:
        """Every fragment `who` may see, rendered at most once per tick for all the streams
        of one party (a page open on ten phones costs one rendering)."""
        key = (who.party, who.recognised)
        cached = self.rendered.get(key)
        if cached is not None and time.monotonic() - cached[0] < TICK_S / 2:
            return cached[1]
        out = await self._render(who)
        self.rendered[key] = (time.monotonic(), out)
        return out

    async def _render(self, who: Any) -> dict[str, str]:
        now = now_ms()
        names, whole = self.readable(who)
        tree = await self.actor_tree()
        models = await asyncio.gather(*(self.der_model(name, now) for name in names))   # forecasts in parallel
        out = {page.dom_id("der-", name): page.der_card(model, now) for name, model in zip(names, models)}
        if whole:
            out["tree"] = page.tree_table(tree, walk_depths)
        return out

    # -- the responses -----------------------------------------------------------------------------
    async def html(self, who: Any, stream_url: str) -> str:
        now = now_ms()
        names, whole = self.readable(who)
        tree = page.tree_table(await self.actor_tree(), walk_depths) if whole else ""
        ders = list(await asyncio.gather(*(self.der_model(n, now) for n in names)))   # forecasts in parallel
        return page.page(self.site, ders, tree, now, stream_url)

    async def stream(self, who: Any, disconnected: Callable[[], Any]) -> AsyncIterator[bytes]:
        sent: dict[str, str] = {}
        yield b"retry: 2000\n\n"
        while not await disconnected():
            for fid, text in (await self.fragments(who)).items():
                if sent.get(fid) != text:
                    sent[fid] = text
                    yield f"data: {json.dumps({'id': fid, 'html': text})}\n\n".encode()
            await asyncio.sleep(TICK_S)


def mount(app: FastAPI, ctx: Any, caller: Any) -> WebView:
    """Add the web view to `app`; `caller` is the API's dependency that names the party of
    a request (its bearer token or the TOKEN_COOKIE the login form sets, else the
    endpoint's anonymous rule), so the view follows the same rules as every resource."""
    web = WebView(ctx, ctx.site_name)
    # A default, not Annotated: this module's annotations are strings, and FastAPI resolves
    # them in the module's globals, where a local alias would not be found.
    party = Depends(caller)

    @app.get("/view", response_class=HTMLResponse, include_in_schema=False)
    async def view(who: Any = party) -> HTMLResponse:
        # Relative: right behind a proxy that mounts the site under a prefix too.
        return HTMLResponse(await web.html(who, "view/stream"), headers=NO_STORE)

    @app.get("/view/stream", include_in_schema=False)
    async def view_stream(request: Request, who: Any = party) -> StreamingResponse:
        return StreamingResponse(web.stream(who, request.is_disconnected), media_type="text/event-stream",
                                 headers={**NO_STORE, "X-Accel-Buffering": "no"})

    @app.get("/view/login", response_class=HTMLResponse, include_in_schema=False)
    async def login_form() -> HTMLResponse:
        return HTMLResponse(page.login(ctx.site_name), headers=NO_STORE)

    @app.post("/view/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        """The token as a cookie (a browser's EventSource sends no Authorization header);
        whether it names a party is checked on every request, like a bearer token."""
        body = (await request.body())[:LOGIN_MAX_BYTES].decode("utf-8", "replace")
        token = (parse_qs(body).get("token") or [""])[0].strip()
        reply = RedirectResponse("../view", status_code=303, headers=NO_STORE)
        if token:
            reply.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict", path="/",
                             secure=request.url.scheme == "https")
        return reply

    return web
