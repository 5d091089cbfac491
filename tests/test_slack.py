"""The Slack adapter end to end: real slack-bolt and slack_sdk against the local Slack Web API
stand-in (tests/fake_slack.py), the bot's own HTTP app under uvicorn (its lifespan starts the
render-event relay), a real embedded Redis, and the real RQ worker rendering with the CPU
animatic renderer. Every test asserts what a teacher would see in Slack."""

from __future__ import annotations

import asyncio
import io
import json
import random
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from PIL import Image
from slack_sdk import WebClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route as WebRoute

from bot.runtime import Runtime, build_runtime
from bot.slack import SlackBot, http_app
from engine.jobs import render_queue
from engine.llm import LLMError
from tests.fake_slack import (
    BOT_USER_ID,
    FORM,
    FakeSlack,
    SignedResponse,
    block_actions_payload,
    event_callback,
    message_event,
    signed_post,
    slash_command_form,
    view_submission_payload,
)
from tests.local_server import LocalServer
from worker.runner import run_worker

TOKEN = "xoxb-test"
SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
REQUEST = "Explain photosynthesis to grade 7 in 30 seconds"
SHORT_REQUEST = "Explain fractions to grade 4 in 10 seconds"
BUTTONS = ["lr_render", "lr_preview", "lr_edit", "lr_cancel"]
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Bot:
    """A running Slack bot and the fake Slack it talks to, with what Slack would send it."""

    slack: FakeSlack
    runtime: Runtime
    bot: SlackBot
    server: LocalServer
    _ids: Iterator[int] = field(default_factory=lambda: iter(range(1, 1_000_000)))

    @property
    def url(self) -> str:
        return self.server.url + "/slack/events"

    def event_id(self) -> str:
        return f"Ev{next(self._ids):08d}"

    def deliver(self, event: dict, *, event_id: str | None = None, retry: int = 0,
                secret: str = SECRET, timestamp: int | None = None) -> SignedResponse:
        """Slack delivers an event; `retry` > 0 is its nth redelivery of the same event id."""
        headers = ({"X-Slack-Retry-Num": str(retry), "X-Slack-Retry-Reason": "http_timeout"}
                   if retry else {})
        return signed_post(self.url, event_callback(event, event_id or self.event_id()),
                           secret, headers=headers, timestamp=timestamp)

    def mention(self, text: str, *, channel: str = "C1", **kwargs: Any) -> str:
        """A teacher mentions the bot in a channel; the ts of their message (the thread)."""
        ts = self.slack.next_ts()
        response = self.deliver(mention_event(text, ts=ts, channel=channel), **kwargs)
        assert response.status == 200, response.text
        return ts

    def reply(self, text: str, thread: str, *, channel: str = "C1", **extra: Any) -> str:
        """A thread reply without a mention (a `message` event)."""
        ts = self.slack.next_ts()
        event = {**message_event(text, channel=channel, ts=ts, thread_ts=thread), **extra}
        response = self.deliver(event)
        assert response.status == 200, response.text
        return ts

    def press(self, card: dict, action: str, *, channel: str = "C1") -> SignedResponse:
        """Press a button of a storyboard card (the message as Slack shows it)."""
        [button] = [b for b in card["blocks"][-1]["elements"] if b["action_id"] == action]
        payload = block_actions_payload(action, button["value"], channel_id=channel,
                                        message_ts=card["ts"], thread_ts=card["thread_ts"],
                                        message=card, block_id="lr_card")
        response = signed_post(self.url, {"payload": payload}, SECRET, content_type=FORM)
        assert response.status == 200, response.text
        return response

    def thread(self, thread: str, channel: str = "C1") -> list[dict]:
        return self.slack.messages_in(channel, thread_ts=thread)

    def wait_for_card(self, thread: str, version: int, channel: str = "C1") -> dict:
        def card(slack: FakeSlack) -> dict | None:
            return next((m for m in self.thread(thread, channel)
                         if m.get("blocks") and card_version(m) == version), None)

        return self.slack.wait_for(card, message=f"a card of version {version} in {thread}")

    def wait_for_text(self, thread: str, words: str, channel: str = "C1",
                      timeout: float = 10) -> dict:
        return self.slack.wait_for(
            lambda slack: next((m for m in self.thread(thread, channel) if words in m["text"]),
                               None), timeout=timeout, message=f"{words!r} in {thread}")

    def render(self) -> None:
        """Run the real worker until the queue is empty (CPU animatic renderer)."""
        run_worker(self.runtime.settings, self.runtime.connection, burst=True,
                   logging_level="CRITICAL", foreground=True)


def mention_event(text: str, *, ts: str, channel: str = "C1", user: str = "U1") -> dict:
    """An `app_mention` event: a person's message that starts with the bot's mention."""
    return {"type": "app_mention", "user": user, "text": f"<@{BOT_USER_ID}> {text}", "ts": ts,
            "channel": channel, "event_ts": ts, "team": "T1"}


def card_version(message: dict) -> int | None:
    heading = next((b["text"]["text"] for b in message.get("blocks", [])
                    if b["type"] == "section" and b["text"]["text"].startswith("*")), "")
    match = re.search(r"version (\d+)\*$", heading)
    return int(match.group(1)) if match else None


def card_texts(message: dict) -> str:
    return "\n".join(b["text"]["text"] for b in message["blocks"] if b["type"] == "section")


@pytest.fixture
def slack_bot(monkeypatch: pytest.MonkeyPatch) -> Iterator[Bot]:
    with FakeSlack() as slack:
        # The lifespan runs the app's start-up (the event relay); the URL is known before the
        # app exists, so the share links it makes can point at it.
        server = LocalServer(lifespan="on", name="lessonreel-slack")
        monkeypatch.setenv("LESSONREEL_PUBLIC_URL", server.url)  # share links open here
        runtime = build_runtime()
        try:
            bot = SlackBot(runtime, token=TOKEN, signing_secret=SECRET,
                           api_url=slack.base_url)
            relay_run = bot.relay.run  # poll the events every 0.1 s: the server stops at once
            bot.relay.run = lambda stop: relay_run(stop, block_ms=100)
            server.app = http_app(bot)
            server.start()
            try:
                yield Bot(slack, runtime, bot, server)
            finally:
                server.stop()
        finally:
            runtime.connection.shutdown(nosave=True)


def fetch(url: str) -> tuple[int, bytes]:
    with _NO_PROXY.open(url, timeout=10) as response:
        return response.status, response.read()


# -- the whole conversation ----------------------------------------------------------------


def test_draft_edit_by_text_edit_by_form_render_and_open_the_link(slack_bot):
    bot, slack = slack_bot, slack_bot.slack
    thread = bot.mention(REQUEST)

    first = bot.wait_for_card(thread, 1)
    [posted] = [c for c in slack.calls_to("chat.postMessage") if c.args.get("blocks")]
    assert posted.args["thread_ts"] == thread and posted.args["channel"] == "C1"
    assert [b["action_id"] for b in first["blocks"][-1]["elements"]] == BUTTONS
    assert "photosynthesis" in card_texts(first).lower()

    bot.reply("make scene 2 shorter", thread)
    second = bot.wait_for_card(thread, 2)
    assert "Scene 2" in second["text"] and "Scene 2" in second["blocks"][0]["text"]["text"]

    bot.press(second, "lr_edit")
    [opened] = slack.wait_for(lambda s: s.calls_to("views.open"), message="the edit form")
    view = opened.args["view"]
    assert view["callback_id"] == "lr_edit_scene"
    # The button's token, and the version the form shows.
    assert view["private_metadata"] == second["blocks"][-1]["elements"][2]["value"] + ":2"
    assert [b["block_id"] for b in view["blocks"]] == ["scene", "visual", "narration",
                                                       "seconds"]
    assert all(b["element"]["action_id"] == "value" for b in view["blocks"])
    narration = "Leaves catch sunlight and turn it into sugar."
    scene_one = view["blocks"][0]["element"]["options"][0]
    submission = view_submission_payload("lr_edit_scene", {
        "scene": {"value": {"type": "static_select", "selected_option": scene_one}},
        "visual": {"value": None}, "narration": {"value": narration},
        "seconds": {"value": None}}, private_metadata=view["private_metadata"])
    response = signed_post(bot.url, {"payload": submission}, SECRET, content_type=FORM)
    assert response.status == 200 and response.body in (b"", b"{}")  # the form closes
    third = bot.wait_for_card(thread, 3)
    assert third["blocks"][2]["text"]["text"].startswith("1. ")  # intro, heading, scene 1…
    assert narration in third["blocks"][2]["text"]["text"] and "Scene 1" in third["text"]

    bot.press(third, "lr_render")
    status = bot.wait_for_text(thread, "queued")
    assert status["text"].startswith("Version 3 is queued")
    bot.render()
    done = slack.wait_for(lambda s: (m := s.messages[("C1", status["ts"])])["text"]
                          == "Rendered version 3." and m, message="the status edited to done")
    assert done["edited"]
    edits = [c.args["text"] for c in slack.calls_to("chat.update")
             if c.args["ts"] == status["ts"]]
    assert edits[0].startswith("Rendering version 3") and edits[-1] == "Rendered version 3."
    # One status message, edited in place; the rest of the thread is the three cards.
    assert [m["ts"] for m in bot.thread(thread) if not m.get("blocks")] == [status["ts"]]
    [upload] = slack.wait_for(lambda s: s.uploads, message="the preview uploaded")
    assert upload["thread_ts"] == thread and upload["channel_id"] == "C1"
    assert upload["filename"].endswith("preview.mp4") and upload["bytes"][4:8] == b"ftyp"
    assert upload["initial_comment"].startswith("Your video is ready")
    [link, bundle] = re.findall(r"https?://\S+", upload["initial_comment"])
    assert link.startswith(bot.server.url + "/v/")
    assert bundle.endswith("/bundle.zip?download=1")  # the editors' bundle, offered too
    with pytest.raises(urllib.error.HTTPError) as refused:  # students' links do not reach it
        fetch(link + "/bundle.zip")
    assert refused.value.code == 404
    status_code, zipped = fetch(bundle)
    assert status_code == 200 and zipped[:2] == b"PK"
    status_code, page = fetch(link)
    assert status_code == 200 and b"<video" in page
    status_code, video = fetch(link + "/video.mp4")
    assert status_code == 200 and video[4:8] == b"ftyp" and len(video) > 10_000


# -- Slack repeats itself ------------------------------------------------------------------


def test_a_redelivered_event_makes_one_reply_and_render_pressed_thrice_one_job(slack_bot):
    bot, slack = slack_bot, slack_bot.slack
    ts = slack.next_ts()
    mention = mention_event(REQUEST, ts=ts)
    for retry in (0, 1, 2):  # as Slack does when an answer is slow: X-Slack-Retry-Num 1, 2
        assert bot.deliver(mention, event_id="EvSame", retry=retry).status == 200
    card = bot.wait_for_card(ts, 1)
    reply = slack.next_ts()
    edit = message_event("make scene 2 shorter", ts=reply, thread_ts=ts)
    for retry in (0, 1):
        assert bot.deliver(edit, event_id="EvEdit", retry=retry).status == 200
    bot.wait_for_card(ts, 2)
    bot.reply("show", ts)  # answered after the repeats were read: they are dropped by now
    slack.wait_for(lambda s: len(bot.thread(ts)) >= 3, message="the answer to show")
    assert [card_version(m) for m in bot.thread(ts)] == [1, 2, 2]

    presses = [threading.Thread(target=bot.press, args=(card, "lr_render")) for _ in range(3)]
    for press in presses:
        press.start()
    for press in presses:
        press.join()
    answers = slack.wait_for(lambda s: len(texts := [m["text"] for m in bot.thread(ts)
                                                     if not m.get("blocks")]) == 3 and texts,
                             message="three answers to three presses")
    assert sum("is queued" in text for text in answers) == 1
    assert sum("already being rendered" in text for text in answers) == 2
    assert render_queue(bot.runtime.connection, bot.runtime.settings).count == 1
    # The card pressed was version 1 while 2 is the newest: the reply says so.
    assert "This card shows version 1; the newest is 2." in next(
        text for text in answers if "is queued" in text)


# -- who may talk to the bot ---------------------------------------------------------------


def test_a_forged_or_stale_request_is_refused(slack_bot):
    bot, slack = slack_bot, slack_bot.slack
    ts = slack.next_ts()
    event = mention_event(REQUEST, ts=ts)
    assert bot.deliver(event, secret="not-the-signing-secret").status == 401
    assert bot.deliver(event, timestamp=int(time.time()) - 301).status == 401
    command = slash_command_form("/lessonreel", "help")
    forged = signed_post(bot.url, command, "not-the-signing-secret", content_type=FORM)
    assert forged.status == 401
    challenge = signed_post(bot.url, {"type": "url_verification", "token": "t",
                                      "challenge": "c-123"}, SECRET)
    assert challenge.status == 200 and challenge.json() == {"challenge": "c-123"}
    # The same event, signed now, is answered: nothing had been posted before it.
    assert bot.deliver(event).status == 200
    bot.wait_for_card(ts, 1)
    assert [call.method for call in slack.calls if call.method.startswith("chat.")] == [
        "chat.postMessage"]


# -- a slow language model holds nobody up -------------------------------------------------


class SlowModel:
    """A language model that takes 5 s a turn and then fails: the draft falls back to the
    rule-based one. The bot admits only a few turns to it at a time."""

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()

    def answer(self, *args: Any, **kwargs: Any):
        with self._lock:
            self.calls += 1
        time.sleep(5)
        raise LLMError("slow")


def test_fifty_events_are_acknowledged_at_once_while_the_model_is_slow(slack_bot):
    bot, slack = slack_bot, slack_bot.slack
    model = SlowModel()
    bot.runtime.service.llm = model
    bot.runtime.service.dialogue.llm = model
    threads = [slack.next_ts() for _ in range(50)]
    events = [mention_event(f"Explain topic {i} to grade 5 in 20 seconds", ts=ts,
                            channel="C4", user=f"U{i}") for i, ts in enumerate(threads)]
    timings: list[tuple[int, float]] = []
    start = threading.Barrier(len(events))

    def send(event: dict) -> None:
        start.wait()
        began = time.perf_counter()
        response = bot.deliver(event)
        timings.append((response.status, time.perf_counter() - began))

    senders = [threading.Thread(target=send, args=(event,)) for event in events]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    assert [status for status, _ in timings] == [200] * 50
    slowest = max(seconds for _, seconds in timings)
    assert slowest < 1.0, f"the slowest acknowledgement took {slowest:.2f} s"
    print(f"50 events acknowledged: slowest {slowest:.3f} s, median "
          f"{sorted(s for _, s in timings)[25]:.3f} s")

    # No event is lost: each thread gets a card, or the polite "busy" sentence, in place of
    # the "Working on it…" said at once.
    def settled(ts: str) -> bool:
        messages = bot.thread(ts, "C4")
        return bool(messages) and messages[0]["text"] != "Working on it…"

    answered = slack.wait_for(
        lambda s: all(settled(ts) for ts in threads) and [
            bot.thread(ts, "C4")[0] for ts in threads], timeout=20,
        message="an answer in each of the 50 threads")
    working = [c for c in slack.calls_to("chat.postMessage") if c.args["text"] == "Working on it…"]
    assert len(working) == 50
    cards = [m for m in answered if m.get("blocks")]
    busy = [m for m in answered if "language model is busy" in m["text"]]
    assert len(cards) + len(busy) == 50 and cards and busy
    assert len(cards) == model.calls <= bot.runtime.settings.bot.llm_max_waiting + 1
    assert all("could not draft it" in card["text"] for card in cards)
    assert all(len(bot.thread(ts, "C4")) == 1 for ts in threads)  # one answer each


# -- slash commands, files, markup -----------------------------------------------------------


def test_slash_command_help_and_new(slack_bot):
    bot, slack = slack_bot, slack_bot.slack
    response = signed_post(bot.url, slash_command_form("/lessonreel", "help", channel_id="C5"),
                           SECRET, content_type=FORM)
    assert response.status == 200
    helped = slack.wait_for(lambda s: next(
        (m for m in s.messages_in("C5") if "Commands:" in m["text"]), None),
        message="the help")
    assert "help · new [request] · show · render · preview · cancel" in helped["text"]

    form = slash_command_form("/lessonreel", "new Explain fractions to grade 4 in 20 seconds",
                              channel_id="C5")
    assert signed_post(bot.url, form, SECRET, content_type=FORM).status == 200
    started = slack.wait_for(lambda s: next(
        (m for m in s.messages_in("C5") if "thread_ts" not in m and "fractions" in m["text"]),
        None), message="the command's thread")
    assert started["text"] == "<@U1> /lessonreel new Explain fractions to grade 4 in 20 seconds"
    card = bot.wait_for_card(started["ts"], 1, channel="C5")
    assert "Grade 4" in card_texts(card) and "20 s" in card_texts(card)
    assert [b["action_id"] for b in card["blocks"][-1]["elements"]] == BUTTONS
    # A later command without "new" is about that thread.
    form = slash_command_form("/lessonreel", "queue", channel_id="C5")
    assert signed_post(bot.url, form, SECRET, content_type=FORM).status == 200
    bot.wait_for_text(started["ts"], "The render queue is empty.", channel="C5")


def test_a_form_opened_before_a_colleagues_edit_is_not_misapplied(slack_bot):
    bot, slack = slack_bot, slack_bot.slack
    thread = bot.mention("Explain photosynthesis to grade 7 in 30 seconds")
    first = bot.wait_for_card(thread, 1)
    bot.press(first, "lr_edit")
    [opened] = slack.wait_for(lambda s: s.calls_to("views.open"), message="the edit form")
    view = opened.args["view"]
    bot.reply("delete scene 2", thread)  # a colleague, while the form is open
    bot.wait_for_card(thread, 2)
    scene_three = view["blocks"][0]["element"]["options"][2]
    submission = view_submission_payload("lr_edit_scene", {
        "scene": {"value": {"type": "static_select", "selected_option": scene_three}},
        "visual": {"value": None}, "narration": {"value": "Chlorophyll is green."},
        "seconds": {"value": None}}, private_metadata=view["private_metadata"])
    assert signed_post(bot.url, {"payload": submission}, SECRET, content_type=FORM).status == 200
    refused = bot.wait_for_text(thread, "Someone else changed this storyboard")
    assert "say your change again" in refused["text"]
    assert all("Chlorophyll" not in m["text"] for m in bot.thread(thread))


def test_a_slash_command_where_the_bot_may_not_post_is_answered_privately(slack_bot):
    bot, slack = slack_bot, slack_bot.slack
    slack.fail_next("chat.postMessage", error="not_in_channel", status=200)
    form = slash_command_form("/lessonreel", "new Explain magnets in 20 seconds",
                              channel_id="C9", response_url=slack.new_response_url())
    assert signed_post(bot.url, form, SECRET, content_type=FORM).status == 200
    answer = slack.wait_for(lambda s: next(iter(s.calls_to("response_url")), None),
                            message="the private answer")
    assert answer.args["response_type"] == "ephemeral"
    assert "/invite @lessonreel" in answer.args["text"]
    assert slack.messages_in("C9") == []


@pytest.fixture
def file_host() -> Iterator[tuple[str, list[str]]]:
    """Where Slack keeps uploaded files (url_private_download): serves one PNG, and records
    the Authorization header each download came with."""
    noise = Image.frombytes("RGB", (320, 240), random.Random(7).randbytes(320 * 240 * 3))
    buffer = io.BytesIO()
    noise.save(buffer, "PNG")
    png = buffer.getvalue()  # about 230 kB: it arrives in many pieces
    seen: list[str] = []

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(png), 16_384):
            yield png[start:start + 16_384]
            await asyncio.sleep(0.001)

    async def download(request: Request) -> Response:
        seen.append(request.headers.get("authorization", ""))
        return StreamingResponse(pieces(), media_type="image/png")

    with LocalServer(Starlette(routes=[WebRoute("/files/diagram.png", download)]),
                     name="slack-files") as server:
        yield server.url + "/files/diagram.png", seen


def test_a_file_in_the_thread_is_an_image_for_a_scene_or_politely_refused(slack_bot,
                                                                           file_host):
    bot = slack_bot
    url, downloads = file_host
    thread = bot.mention(REQUEST)
    bot.wait_for_card(thread, 1)
    pdf = {"id": "F1", "name": "worksheet.pdf", "mimetype": "application/pdf",
           "filetype": "pdf", "size": 52_000, "url_private": "https://files.invalid/w.pdf",
           "url_private_download": "https://files.invalid/w.pdf"}
    bot.reply("", thread, subtype="file_share", files=[pdf])
    refused = bot.wait_for_text(thread, "I can only use images")
    assert "“worksheet.pdf” is not one" in refused["text"]
    assert downloads == []  # nothing fetched for it

    png = {"id": "F2", "name": "diagram.png", "mimetype": "image/png", "filetype": "png",
           "size": 200_000, "url_private": url, "url_private_download": url}
    bot.reply("use this for scene 2", thread, subtype="file_share", files=[png])
    card = bot.wait_for_card(thread, 2)
    assert card["text"].startswith("Scene 2 will use your image.")
    assert downloads == [f"Bearer {TOKEN}"]  # Slack's files need the bot token
    scene_two = card["blocks"][3]["text"]["text"]
    assert scene_two.startswith("2. ") and "🖼 image: img-" in scene_two
    saved = bot.runtime.settings.uploads_path / scene_two.split("🖼 image: ")[1]
    with Image.open(saved) as image:
        assert image.size == (320, 240)  # the whole image arrived, in chunks

    # "@lessonreel scene 3" with a photo: Slack sends it as app_mention and as message; the
    # photo is used once, for scene 3.
    ts = bot.slack.next_ts()
    photo = {**png, "id": "F4"}
    mentioned = {**mention_event("scene 3", ts=ts), "thread_ts": thread, "files": [photo]}
    as_message = {**message_event(f"<@{BOT_USER_ID}> scene 3", ts=ts, thread_ts=thread),
                  "subtype": "file_share", "files": [photo]}
    assert bot.deliver(mentioned).status == 200 and bot.deliver(as_message).status == 200
    card = bot.wait_for_card(thread, 3)
    assert card["text"].startswith("Scene 3 will use your image.")
    assert len(downloads) == 2  # fetched once, not once per event

    # The file name is read like a message: an unsafe one is refused, naming why.
    named = {**png, "id": "F5", "name": "naked_students.png"}
    bot.reply("", thread, subtype="file_share", files=[named])
    refused = bot.wait_for_text(thread, "sexual")
    assert "version 4" not in refused["text"]

    huge = {**png, "id": "F3", "size": 30 * 2**20}
    bot.reply("", thread, subtype="file_share", files=[huge])
    too_large = bot.wait_for_text(thread, "That image is 30.0 MB")
    assert "the limit is 10 MB" in too_large["text"]
    assert len(downloads) == 3  # refused by the size Slack told, without fetching


def test_slack_markup_in_teacher_text_is_shown_not_obeyed(slack_bot):
    bot, slack = slack_bot, slack_bot.slack
    # As Slack delivers "<!channel> & <@U123>": mentions as markup, a typed & escaped. The
    # storyboard gets readable text ("@channel", "&"), never markup that would notify anyone.
    thread = bot.mention("Explain <@U123> fractions &amp; <!channel> decimals to grade 4 "
                         "in 20 seconds")
    card = bot.wait_for_card(thread, 1)
    assert "@U123 fractions &amp; @channel decimals" in card_texts(card)
    bot.press(card, "lr_edit")
    [opened] = slack.wait_for(lambda s: s.calls_to("views.open"), message="the edit form")
    view = opened.args["view"]
    submission = view_submission_payload("lr_edit_scene", {
        "scene": {"value": {"type": "static_select",
                            "selected_option": view["blocks"][0]["element"]["options"][1]}},
        "visual": {"value": "<!channel> & <@U123> at the board"},  # a form's text is raw
        "narration": {"value": None}, "seconds": {"value": None}},
        private_metadata=view["private_metadata"])
    assert signed_post(bot.url, {"payload": submission}, SECRET,
                       content_type=FORM).status == 200
    edited = bot.wait_for_card(thread, 2)
    assert "2. 6 s — &lt;!channel&gt; &amp; &lt;@U123&gt; at the board" in card_texts(edited)
    # A reply that mentions a colleague (not the bot) is still read as the teacher's reply.
    bot.reply("<@U123> &lt;b&gt; make scene 2 shorter", thread)
    bot.wait_for_text(thread, "I can only make plain edits")
    posted = json.dumps([{key: call.args.get(key) for key in ("text", "blocks")}
                         for call in slack.calls_to("chat.postMessage")], ensure_ascii=False)
    for markup in ("<!channel>", "<@U123>", "<!", "<@", "<b>", "&amp;amp;", "&amp;lt;"):
        assert markup not in posted


# -- rate limits and cancelling ------------------------------------------------------------


def test_a_rate_limited_status_edit_is_retried_and_lands_once(slack_bot):
    bot, slack = slack_bot, slack_bot.slack
    thread = bot.mention(SHORT_REQUEST)
    bot.press(bot.wait_for_card(thread, 1), "lr_preview")
    status = bot.wait_for_text(thread, "preview of version 1 is queued")
    slack.fail_next("chat.update", retry_after=1)  # Slack: HTTP 429, Retry-After: 1
    bot.render()
    slack.wait_for(lambda s: s.messages[("C1", status["ts"])]["text"] == "Rendered version 1.",
                   message="the status edited to done")
    updates = slack.calls_to("chat.update")
    assert updates[0].status == 429
    assert updates[1].ok and updates[1].args["text"] == updates[0].args["text"]
    assert updates[0].args["text"] == "Rendering version 1: starting…"
    landed = [call.args["text"] for call in updates if call.ok]
    assert landed.count(updates[0].args["text"]) == 1 and landed[-1] == "Rendered version 1."
    [upload] = slack.wait_for(lambda s: s.uploads, message="the preview uploaded")
    assert upload["initial_comment"].startswith("Your preview is ready")


def test_cancel_while_queued_renders_nothing(slack_bot):
    bot, slack = slack_bot, slack_bot.slack
    thread = bot.mention(SHORT_REQUEST)
    card = bot.wait_for_card(thread, 1)
    bot.press(card, "lr_render")
    status = bot.wait_for_text(thread, "Version 1 is queued")
    bot.press(card, "lr_cancel")
    bot.wait_for_text(thread, "Cancelling the render of version 1…")
    cancelled = "The render of version 1 was cancelled; nothing was saved."
    slack.wait_for(lambda s: s.messages[("C1", status["ts"])]["text"] == cancelled,
                   message="the status says cancelled")
    bot.render()
    assert render_queue(bot.runtime.connection, bot.runtime.settings).count == 0
    assert slack.uploads == []
    assert not any("Rendering" in m["text"] or "Rendered" in m["text"] for m in
                   bot.thread(thread))
    assert not list(bot.runtime.settings.media_path.glob("r-*/*.mp4"))
    bot.press(card, "lr_render")  # the thread is free again
    bot.wait_for_text(thread, "Version 1 is queued", timeout=5)
    assert render_queue(bot.runtime.connection, bot.runtime.settings).count == 1


def test_the_link_arrives_when_slack_refuses_the_upload_and_the_status_is_gone(slack_bot):
    bot, slack = slack_bot, slack_bot.slack
    thread = bot.mention(SHORT_REQUEST)
    bot.press(bot.wait_for_card(thread, 1), "lr_preview")
    status = bot.wait_for_text(thread, "is queued")
    WebClient(token=TOKEN, base_url=slack.base_url).chat_delete(channel="C1", ts=status["ts"])
    slack.fail_next("files.getUploadURLExternal", error="not_allowed_token_type", status=200)
    bot.render()
    done = bot.wait_for_text(thread, "Your preview is ready")
    [link] = re.findall(r"https?://\S+", done["text"])
    assert fetch(link + "/video.mp4")[1][4:8] == b"ftyp"
    assert slack.uploads == []
    assert [c.response["error"] for c in slack.calls_to("chat.update")][-1] == (
        "message_not_found")


def test_when_the_edit_form_cannot_open_the_thread_says_how_to_edit(slack_bot):
    bot, slack = slack_bot, slack_bot.slack
    thread = bot.mention(SHORT_REQUEST)
    card = bot.wait_for_card(thread, 1)
    slack.fail_next("views.open", error="expired_trigger_id", status=200)
    bot.press(card, "lr_edit")
    hint = bot.wait_for_text(thread, "Reply in this thread with your change")
    assert "make scene 2 shorter" in hint["text"]


# -- live previews -------------------------------------------------------------------------



def test_a_live_preview_is_one_message_whose_picture_is_replaced_and_removed_at_the_end(
        slack_bot):
    """The worker's side is played here (its pictures and events), so each step is seen;
    the real worker then finishes the job."""
    from engine.events import EventLog, RenderEvent
    from tests.conftest import jpeg, with_settings

    bot, slack = slack_bot, slack_bot.slack
    with_settings(bot.bot.relay, bot={"live_preview_seconds": 0.01})
    thread = bot.mention(SHORT_REQUEST)
    bot.press(bot.wait_for_card(thread, 1), "lr_render")
    status = bot.wait_for_text(thread, "is queued")
    connection = bot.runtime.connection
    job = slack.wait_for(lambda s: next(
        (key.decode().rsplit(":", 1)[1] for key in connection.scan_iter("lessonreel:status:*")
         if connection.get(key) == status["ts"].encode()), None), message="the job's id")
    folder = bot.runtime.settings.media_path / job
    folder.mkdir(parents=True)
    events = EventLog(connection)

    def preview_at(step: int, colour: tuple[int, int, int]) -> bytes:
        (folder / "live.jpg").write_bytes(data := jpeg(colour))
        events.publish(RenderEvent(job_id=job, kind="progress", scene=1, scenes=2, step=step,
                                   steps=6, fraction=0.1, preview="live.jpg"))
        return data

    def preview_message(s: FakeSlack) -> dict | None:
        return next((m for m in bot.thread(thread) if any(
            b["type"] == "image" for b in m.get("blocks") or [])), None)

    red = preview_at(2, (200, 30, 30))
    shown = slack.wait_for(preview_message, message="the live preview message")
    [first] = slack.uploads
    assert first["bytes"] == red and first["channel_id"] is None, "uploaded, shared nowhere"
    assert [b["slack_file"]["id"] for b in shown["blocks"] if b["type"] == "image"] == [
        first["file_id"]]
    assert shown["text"].startswith("Live preview of scene 1/2 at step 2/6")

    # Slack refuses one edit (an image block too soon after its upload, a rate limit): that
    # picture is given up, its file deleted, and the same message is edited next time.
    slack.fail_next("chat.update", error="invalid_blocks", status=200)
    preview_at(3, (0, 0, 200))
    slack.wait_for(lambda s: len(s.deleted_files) == 1, message="the refused picture deleted")
    assert slack.deleted_files != [first["file_id"]] and [u["file_id"] for u in slack.uploads] == [
        first["file_id"]]
    green = preview_at(4, (30, 200, 30))
    slack.wait_for(lambda s: first["file_id"] in s.deleted_files, message="the old picture gone")
    [second] = slack.uploads
    assert second["bytes"] == green
    edited = slack.messages[("C1", shown["ts"])]
    assert [b["slack_file"]["id"] for b in edited["blocks"] if b["type"] == "image"] == [
        second["file_id"]]
    assert "step 4/6" in edited["text"]

    slack.fail_next("chat.delete", error="internal_error", status=200)  # the first removal
    bot.render()
    [video] = slack.wait_for(lambda s: [u for u in s.uploads if u["file_id"] != second[
        "file_id"]], message="the video")
    assert video["filename"] == f"{job}-preview.mp4"
    slack.wait_for(lambda s: second["file_id"] in s.deleted_files and ("C1", shown["ts"])
                   not in s.messages, timeout=20, message="the preview removed after all")
    assert [m for m in bot.thread(thread) if m.get("blocks") and any(
        b["type"] == "image" for b in m["blocks"])] == [], "no preview left beside the video"
