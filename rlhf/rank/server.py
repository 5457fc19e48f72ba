"""`rlhf-rank --web FILE`: the labelling page and its JSON API (FastAPI on uvicorn).

Every request but the page's own files and the sign-in carries a labeller's token in the
`Authorization: Bearer` header: a header, not a cookie, so another site cannot make a browser
write on the labeller's behalf (CSRF), and the labeller is whoever the token names, never a name
a request claims. The file is fixed when the server starts: no request names a path. Bodies over
MAX_BODY bytes are refused before they are read. The page shows every answer as text (the script
sets textContent; the Content-Security-Policy forbids inline script besides), so markup in an
answer is shown, never run.
"""

from __future__ import annotations

import hmac
import random
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, Header, HTTPException
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict

from rlhf.rank import collected
from rlhf.rank.store import FLAGS, LabelError, LabelStore, export

STATIC = Path(__file__).parent / "static"
MAX_BODY = 64 * 1024
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a field the API does not know (a path, say) is refused


class SignIn(_Strict):
    name: str
    token: str


class Label(_Strict):
    key: str
    ranks: list[int]
    ratings: list[int]
    flags: list[list[str]]


class Skip(_Strict):
    key: str


def create_app(path: Path, store: LabelStore, *, export_on_stop: bool = True) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app):
        yield
        if export_on_stop:  # a clean stop writes the file; a killed server loses nothing either (the database)
            summary = export(path, store)
            print(f"rlhf-rank: wrote {summary['exported']} labelled prompts into {path}", flush=True)

    app = FastAPI(title="rlhf-rank", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.add_middleware(_Guard)

    async def labeller(authorization: str = Header(default="")) -> str:
        token = authorization.removeprefix("Bearer ").strip()
        for name, known in store.labellers().items():
            if token and hmac.compare_digest(token.encode(), known.encode()):
                return name
        raise HTTPException(401, "sign in: a labeller's token in the Authorization header (Bearer <token>)")

    @app.exception_handler(LabelError)
    async def refused(request, e: LabelError):
        return JSONResponse({"detail": str(e)}, status_code=422)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():
        return Response(status_code=204)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/health")
    async def health():
        return {"ok": True, "file": path.name}

    @app.post("/api/login")
    async def login(body: SignIn):
        known = store.labellers().get(body.name)
        if known is None or not hmac.compare_digest(body.token.encode(), known.encode()):
            raise HTTPException(401, "no labeller with that name and token: use the ones rlhf-rank printed at start")
        return {"name": body.name}

    @app.get("/api/next")
    async def next_item(me: str = Depends(labeller)):
        key = store.next_item(me)
        return {"labeller": me, "item": _item(key, me) if key else None, "progress": store.progress(me),
                "flags": FLAGS}

    @app.post("/api/labels")
    async def submit(body: Label, me: str = Depends(labeller)):
        store.submit(me, body.key, body.ranks, body.ratings, body.flags)
        return {"ok": True, "progress": store.progress(me)}

    @app.post("/api/skip")
    async def skip(body: Skip, me: str = Depends(labeller)):
        store.skip(me, body.key)
        return {"ok": True, "progress": store.progress(me)}

    @app.post("/api/undo")
    async def undo(me: str = Depends(labeller)):
        undone = store.undo(me)
        if undone is None:
            raise HTTPException(409, "nothing to undo")
        return undone

    @app.get("/api/summary")
    async def summary(me: str = Depends(labeller)):
        return store.summary()

    def _item(key: str, me: str) -> dict:
        record = store.records[key]
        # Answers in an order of their own for each labeller and prompt: the order collect wrote
        # them in (policy by policy) would otherwise bias every labeller alike.
        order = list(range(len(record["responses"])))
        random.Random(f"{me}:{key}").shuffle(order)
        return {"key": key, "prompt": collected.prompt_text(record), "order": order,
                "answers": [r["text"] for r in record["responses"]]}

    return app


class _Guard:
    """Plain ASGI (Starlette's decorator middleware costs a task per request): refuses a body over
    MAX_BODY bytes (413) or a write that does not say its length (411) before any of it is read,
    and adds HEADERS to every response."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []),
                                      *((k.lower().encode(), v.encode()) for k, v in HEADERS.items())]
            await send(message)

        if scope["method"] in ("POST", "PUT", "PATCH"):
            length = dict(scope["headers"]).get(b"content-length")
            status = 411 if length is None else 413 if not length.isdigit() or int(length) > MAX_BODY else None
            if status:
                detail = "say the body's length (Content-Length)" if status == 411 else f"body over {MAX_BODY} bytes"
                return await JSONResponse({"detail": detail}, status_code=status)(scope, receive, send_with_headers)
        await self.app(scope, receive, send_with_headers)
