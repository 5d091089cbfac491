"""The web side: share links students open, and the routes platform webhooks post to.

Files are served by Starlette's FileResponse (Range requests with 206 and 416, HEAD,
Accept-Ranges, so a video seeks), only from inside the media root, only the files named in
SHARED_FILES, and only for a link whose signature and expiry check out and that has not
been revoked. Bad links get a plain page: 404 for a forged, tampered, malformed or expired
link, 403 for a revoked one.
"""

from __future__ import annotations

import html
import json

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

from engine.settings import Settings
from engine.share import ShareLink, is_revoked, media_file, verify

SHARED_FILES = {
    "video.mp4": "video/mp4", "preview.mp4": "video/mp4", "poster.jpg": "image/jpeg",
    "captions.vtt": "text/vtt", "captions.srt": "application/x-subrip",
}
PAGE = """<!doctype html>
<html lang="{lang}"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;margin:0;background:#111;color:#eee}}
main{{max-width:960px;margin:auto;padding:1rem}}video{{width:100%;background:#000}}
a{{color:#9cf}}</style>
</head><body><main><h1>{title}</h1>
<video controls preload="metadata"{poster} src="{base}/video.mp4">
<track kind="captions" src="{base}/captions.vtt" srclang="{lang}" label="{lang}" default>
</video><p>{audience}</p>
<p class="downloads"><a href="{base}/video.mp4?download=1" download>Download MP4</a>{srt}</p>
<section class="transcript"><h2>Transcript</h2>
{transcript}</section></main></body></html>
"""
PLAIN = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{heading}</title></head>
<body><h1>{heading}</h1><p>{text}</p></body></html>
"""
GONE = "This link has expired or is not valid. Ask your teacher for a new one."
REVOKED = "This link was withdrawn. Ask your teacher for a new one."
NO_STORE = {"Cache-Control": "private, no-store", "Referrer-Policy": "no-referrer"}


def plain_page(status: int, text: str) -> HTMLResponse:
    heading = "Link withdrawn" if status == 403 else "Not found"
    return HTMLResponse(PLAIN.format(heading=heading, text=html.escape(text)),
                        status_code=status, headers=NO_STORE)


def share_routes(settings: Settings, secret: bytes) -> list[Route]:
    def check(request: Request) -> ShareLink | Response:
        link = verify(secret, request.path_params["token"])
        if link is None:
            return plain_page(404, GONE)
        if is_revoked(settings, link):
            return plain_page(403, REVOKED)
        return link

    async def page(request: Request) -> Response:
        link = check(request)
        if isinstance(link, Response):
            return link
        if media_file(settings, link.folder, "video.mp4") is None:
            return plain_page(404, GONE)
        board = _storyboard(settings, link.folder)
        title = str(board.get("title") or "lessonreel")
        lang = str(board.get("language") or "en")
        lines = [str(scene.get("narration") or "") for scene in board.get("scenes") or []
                 if isinstance(scene, dict)]
        transcript = "\n".join(f"<p>{html.escape(line)}</p>" for line in lines if line)
        base = html.escape(f"/v/{request.path_params['token']}")
        has = {name: media_file(settings, link.folder, name) is not None
               for name in ("poster.jpg", "captions.srt")}
        return HTMLResponse(PAGE.format(
            title=html.escape(title), audience=html.escape(str(board.get("audience") or "")),
            lang=html.escape(lang), base=base,
            poster=f' poster="{base}/poster.jpg"' if has["poster.jpg"] else "",
            srt=(f' · <a href="{base}/captions.srt?download=1" download>Download subtitles '
                 "(SRT)</a>") if has["captions.srt"] else "",
            transcript=transcript or "<p>(no narration)</p>"), headers=NO_STORE)

    async def file(request: Request) -> Response:
        link = check(request)
        if isinstance(link, Response):
            return link
        name = request.path_params["name"]
        path = media_file(settings, link.folder, name) if name in SHARED_FILES else None
        if path is None:
            return plain_page(404, GONE)
        download = "download" in request.query_params
        # Short-lived private caching, so a revoked link stops working soon on a device too.
        return FileResponse(path, media_type=SHARED_FILES[name],
                            filename=name if download else None,
                            headers={"Cache-Control": "private, max-age=300",
                                     "Referrer-Policy": "no-referrer",
                                     "X-Content-Type-Options": "nosniff"})

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    return [Route("/v/{token}", page), Route("/v/{token}/{name}", file),
            Route("/healthz", health)]


def _storyboard(settings: Settings, folder: str) -> dict:
    board = media_file(settings, folder, "storyboard.json")
    if board is None:
        return {}
    try:
        data = json.loads(board.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def share_app(settings: Settings, secret: bytes, extra: list[Route] | None = None) -> Starlette:
    return Starlette(routes=[*share_routes(settings, secret), *(extra or [])])
