"""Slack Socket Mode, the usual school set-up (no public URL), against a local stand-in for
Slack's Socket Mode endpoint: apps.connections.open hands out a WebSocket address, events
arrive as envelopes over it, and every envelope must be acknowledged by its id."""

from __future__ import annotations

import asyncio
import json
import time

from aiohttp import WSMsgType, web
from slack_sdk.web.async_client import AsyncWebClient

from bot.slack import SlackBot, socket_mode
from tests.fake_slack import FakeSlack, event_callback


class SocketModeServer:
    """apps.connections.open plus the WebSocket it points at; records the acks it receives."""

    def __init__(self) -> None:
        self.acks: dict[str, float] = {}
        self.sent: dict[str, float] = {}
        self.connected = asyncio.Event()
        self._socket: web.WebSocketResponse | None = None
        self._runner: web.AppRunner | None = None
        self.base = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/api/apps.connections.open", self._open)
        app.router.add_get("/link", self._link)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.base = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._socket is not None:
            await self._socket.close()
        await self._runner.cleanup()

    async def _open(self, request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == "Bearer xapp-test"
        return web.json_response({"ok": True, "url": self.base.replace("http", "ws") + "/link"})

    async def _link(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse(autoping=True)
        await socket.prepare(request)
        self._socket = socket
        await socket.send_json({"type": "hello", "num_connections": 1,
                                "connection_info": {"app_id": "A1"}})
        self.connected.set()
        async for message in socket:
            if message.type == WSMsgType.TEXT:
                envelope = json.loads(message.data)
                if "envelope_id" in envelope:
                    self.acks.setdefault(envelope["envelope_id"], time.monotonic())
        return socket

    async def send_event(self, envelope_id: str, payload: dict) -> None:
        self.sent[envelope_id] = time.monotonic()
        await self._socket.send_json({"envelope_id": envelope_id, "type": "events_api",
                                      "accepts_response_payload": False, "payload": payload,
                                      "retry_attempt": 0, "retry_reason": ""})


def test_socket_mode_acknowledges_envelopes_and_answers_in_the_thread(runtime):
    async def scenario(slack: FakeSlack) -> None:
        server = SocketModeServer()
        await server.start()
        bot = SlackBot(runtime, token="xoxb-test", api_url=slack.base_url)
        socket_client = AsyncWebClient(base_url=server.base + "/api/")
        running = asyncio.create_task(socket_mode(bot, "xapp-test", web_client=socket_client))
        try:
            await asyncio.wait_for(server.connected.wait(), 20)
            mention = {"type": "app_mention", "user": "U1", "channel": "C1", "ts": "100.1",
                       "text": "<@UBOT> Explain magnets to grade 5 in 20 seconds"}
            await server.send_event("env-1", event_callback(mention, "Ev1"))
            await server.send_event("env-2", event_callback(mention, "Ev1"))  # a redelivery
            for _ in range(200):
                if {"env-1", "env-2"} <= server.acks.keys() and slack.calls_to(
                        "chat.postMessage"):
                    break
                await asyncio.sleep(0.05)
            assert server.acks["env-1"] - server.sent["env-1"] < 3.0  # Slack's deadline
            await asyncio.sleep(0.5)  # time enough for a second (wrong) reply to show up
            cards = [call for call in slack.calls_to("chat.postMessage")
                     if call.args.get("blocks")]
            assert len(cards) == 1
            assert cards[0].args["thread_ts"] == "100.1" and cards[0].args["channel"] == "C1"
            assert "magnets" in json.dumps(cards[0].args["blocks"]).lower()
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
            await server.stop()

    with FakeSlack() as slack:
        asyncio.run(scenario(slack))
