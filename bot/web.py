"""The web side: share links students open, and the routes platform webhooks post to.

Files are served by Starlette's FileResponse (Range requests, so a video seeks), only from
inside the media root and only for a link whose signature and expiry check out.
"""

from __future__ import annotations

import html
import json

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

from engine.settings import Settings
from engine.share import media_file, verify

SHARED_FILES = {
    "video.mp4": "video/mp4", "preview.mp4": "video/mp4", "poster.jpg": "image/jpeg",
    "captions.vtt": "text/vtt",
}
PAGE = """<!doctype html>
<html lang="{lang}"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;margin:0;background:#111;color:#eee}}
main{{max-width:960px;margin:auto;padding:1rem}}video{{width:100%;background:#000}}</style>
</head><body><main><h1>{title}</h1>
<video controls preload="metadata" poster="{base}/poster.jpg" src="{base}/video.mp4">
<track kind="captions" src="{base}/captions.vtt" srclang="{lang}" label="{lang}" default>
</video><p>{audience}</p></main></body></html>
"""
GONE = ("This link has expired or is not valid. Ask your teacher for a new one.")


def share_routes(settings: Settings, secret: bytes) -> list[Route]:
    def link_of(request: Request):
        return verify(secret, request.path_params["token"])

    async def page(request: Request) -> Response:
        link = link_of(request)
        if link is None or media_file(settings, link.folder, "video.mp4") is None:
            return PlainTextResponse(GONE, status_code=404)
        title, audience, lang = "lessonreel", "", "en"
        board = media_file(settings, link.folder, "storyboard.json")
        if board is not None:
            data = json.loads(board.read_text(encoding="utf-8"))
            title, audience = data.get("title", title), data.get("audience", "")
            lang = data.get("language", lang)
        base = f"/v/{request.path_params['token']}"
        return HTMLResponse(PAGE.format(title=html.escape(title), audience=html.escape(audience),
                                        lang=html.escape(lang), base=html.escape(base)),
                            headers={"Cache-Control": "private, no-store",
                                     "Referrer-Policy": "no-referrer"})

    async def file(request: Request) -> Response:
        link = link_of(request)
        name = request.path_params["name"]
        path = media_file(settings, link.folder, name) if link and name in SHARED_FILES else None
        if path is None:
            return PlainTextResponse(GONE, status_code=404)
        return FileResponse(path, media_type=SHARED_FILES[name],
                            headers={"Cache-Control": "private, max-age=3600"})

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    return [Route("/v/{token}", page), Route("/v/{token}/{name}", file),
            Route("/healthz", health)]


def share_app(settings: Settings, secret: bytes, extra: list[Route] | None = None) -> Starlette:
    return Starlette(routes=[*share_routes(settings, secret), *(extra or [])])
