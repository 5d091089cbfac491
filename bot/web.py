"""The web side: share links students open, and the routes platform webhooks post to.

Files are served by Starlette's FileResponse (Range requests with 206 and 416, HEAD,
Accept-Ranges, so a video seeks), only from inside the media root, only the files named in
SHARED_FILES, and only for a link whose signature and expiry check out and that has not
been revoked. Bad links get a plain page: 404 for a forged, tampered, malformed or expired
link, 403 for a revoked one.

There is one web app (`web_app`): the share pages, /healthz, /metrics (Prometheus text
format, engine/metrics.py), and the parts platforms add — the Slack events endpoint, the
Telegram webhook — each with what must run while the app serves (its bot's event relay).
`lessonreel serve` mounts what the environment configures (`serve_app`); `lessonreel bot
slack --http` and `bot telegram --webhook` serve the same app with their one part.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import html
import json
import os
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

import redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from bot.runtime import build_runtime, use_bot_executor
from engine.connection import connect
from engine.metrics import exposition
from engine.settings import Settings, load_settings
from engine.share import BUNDLE_SUFFIX, ShareLink, is_revoked, media_file, share_secret, verify

SHARED_FILES = {
    "video.mp4": "video/mp4", "preview.mp4": "video/mp4", "poster.jpg": "image/jpeg",
    "captions.vtt": "text/vtt", "captions.srt": "application/x-subrip",
}
# The export bundle is the teacher's, with links of its own (engine/share.BUNDLE_SUFFIX).
BUNDLE_FILES = {"bundle.zip": "application/zip"}
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
NOT_READY = ("This video is not ready yet, or it was removed. Try again later, or ask your "
             "teacher.")
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
            # A good link to a video still being made (a batch hands links out at once), or
            # to one deleted since.
            return plain_page(404, NOT_READY)
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
        folder, files = link.folder, SHARED_FILES
        if folder.endswith(BUNDLE_SUFFIX):
            folder, files = folder.removesuffix(BUNDLE_SUFFIX), BUNDLE_FILES
        path = media_file(settings, folder, name) if name in files else None
        if path is None:
            return plain_page(404, GONE)
        download = "download" in request.query_params
        # Short-lived private caching, so a revoked link stops working soon on a device too.
        return FileResponse(path, media_type=files[name],
                            filename=name if download else None,
                            headers={"Cache-Control": "private, max-age=300",
                                     "Referrer-Policy": "no-referrer",
                                     "X-Content-Type-Options": "nosniff"})

    return [Route("/v/{token}", page), Route("/v/{token}/{name}", file)]


def _storyboard(settings: Settings, folder: str) -> dict:
    board = media_file(settings, folder, "storyboard.json")
    if board is None:
        return {}
    try:
        data = json.loads(board.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def health_route(connection: redis.Redis) -> Route:
    """GET /healthz, for docker's health check: 200 "ok" while Redis answers a PING, else 503
    and why. (Nothing here works for long without Redis: queue, sessions, the bots' news.)"""

    async def health(request: Request) -> Response:
        try:
            await asyncio.to_thread(connection.ping)  # redis-py gives up after 5 s
        except redis.RedisError as exc:
            return PlainTextResponse(f"Redis does not answer ({exc.__class__.__name__})",
                                     status_code=503)
        return PlainTextResponse("ok")

    return Route("/healthz", health)


def metrics_route(settings: Settings, connection: redis.Redis) -> Route:
    """GET /metrics, for Prometheus: the queue, the jobs' stage times and outcomes, the
    workers and their GPUs, read from Redis at each scrape (engine/metrics.py). With
    metrics.token set, only for "Authorization: Bearer <token>"."""
    token = settings.metrics.token.encode()

    async def metrics(request: Request) -> Response:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if token and not (scheme.lower() == "bearer"
                          and hmac.compare_digest(given.strip().encode(), token)):
            return PlainTextResponse("This needs the metrics token (metrics.token).",
                                     status_code=401, headers={"WWW-Authenticate": "Bearer"})
        try:
            body, content_type = await asyncio.to_thread(exposition, connection, settings)
        except redis.RedisError as exc:
            return PlainTextResponse(f"Redis does not answer ({exc.__class__.__name__})",
                                     status_code=503)
        return Response(body, media_type=content_type, headers={"Cache-Control": "no-store"})

    return Route("/metrics", metrics)


@dataclass(frozen=True)
class WebPart:
    """What a platform adds to the web app: its routes, a few words for the start-up line,
    and `running`, a context manager the app holds open while it serves (the bot's event
    relay, its webhook registration)."""

    description: str
    routes: list[BaseRoute]
    running: Callable[[], AbstractAsyncContextManager[None]]


def web_app(settings: Settings, secret: bytes, connection: redis.Redis,
            parts: Sequence[WebPart] = ()) -> Starlette:
    """The one web app: share pages, /healthz, /metrics, and each part's routes. The parts
    start in order when the app starts, and stop in the reverse order when it stops."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette):
        use_bot_executor()
        async with contextlib.AsyncExitStack() as running:
            for part in parts:
                await running.enter_async_context(part.running())
            yield

    routes = [*share_routes(settings, secret), health_route(connection),
              metrics_route(settings, connection),
              *(route for part in parts for route in part.routes)]
    return Starlette(routes=routes, lifespan=lifespan)


def share_app(settings: Settings, secret: bytes) -> Starlette:
    """The share pages alone, without Redis: what a test of the pages needs."""
    return Starlette(routes=share_routes(settings, secret))


def serve_app(*, slack: bool = True, telegram: bool = True) -> tuple[Starlette, str]:
    """`lessonreel serve`: the web app with the bots the environment sets up for HTTP, and a
    line saying what is mounted and why a bot is not (names of variables, never values).

    Slack is mounted with SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET, unless SLACK_APP_TOKEN
    says it runs in Socket Mode (its own service, `lessonreel bot slack`); Telegram with
    TELEGRAM_BOT_TOKEN and LESSONREEL_TELEGRAM_WEBHOOK_SECRET (without the secret it polls, as
    `lessonreel bot telegram`). A bot half set up for HTTP stops start-up with one sentence,
    before Redis or the model start."""
    env = os.environ
    slack_config = telegram_config = None
    notes = []
    if not slack:
        notes.append("Slack left out (--no-slack)")
    elif not env.get("SLACK_BOT_TOKEN"):
        notes.append("no Slack (SLACK_BOT_TOKEN is not set)")
    elif env.get("SLACK_APP_TOKEN"):
        notes.append("no Slack route: SLACK_APP_TOKEN is set, so the Slack bot runs in Socket "
                     "Mode as its own service ('lessonreel bot slack')")
    elif not env.get("SLACK_SIGNING_SECRET"):
        notes.append("no Slack route: SLACK_SIGNING_SECRET is not set (HTTP mode needs it; "
                     "Socket Mode needs SLACK_APP_TOKEN)")
    else:
        from bot.slack import slack_settings

        slack_config = slack_settings(http=True)
    if not telegram:
        notes.append("Telegram left out (--no-telegram)")
    elif not env.get("TELEGRAM_BOT_TOKEN"):
        notes.append("no Telegram (TELEGRAM_BOT_TOKEN is not set)")
    elif not env.get("LESSONREEL_TELEGRAM_WEBHOOK_SECRET"):
        notes.append("no Telegram webhook: LESSONREEL_TELEGRAM_WEBHOOK_SECRET is not set, so "
                     "the Telegram bot polls as its own service ('lessonreel bot telegram')")
    else:
        from bot.telegram import telegram_settings

        telegram_config = telegram_settings(webhook=True)  # also wants LESSONREEL_PUBLIC_URL

    parts = []
    if slack_config is None and telegram_config is None:
        settings = load_settings()
        secret = share_secret(settings)  # a bad secret stops start-up before Redis starts
        connection = connect(settings)
    else:
        runtime = build_runtime()
        settings, secret, connection = runtime.settings, runtime.secret, runtime.connection
        if slack_config is not None:
            from bot.slack import http_part, slack_bot

            parts.append(http_part(slack_bot(runtime, slack_config)))
        if telegram_config is not None:
            from bot.telegram import telegram_bot

            parts.append(telegram_bot(runtime, telegram_config).webhook_part(
                telegram_config["webhook_secret"], settings.public_url))
    mounted = ", ".join(["share links", "/healthz", *(part.description for part in parts)])
    return web_app(settings, secret, connection, parts), "; ".join([mounted, *notes])


def run_web(app: Starlette, host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM. uvicorn logs through the root logger's handlers (no
    log_config of its own), where bot tokens are redacted; warnings only, so no access lines
    (a share link's token is in its path)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning", log_config=None)
