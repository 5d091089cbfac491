"""The Telegram adapter (bot/telegram.py) end to end: the real python-telegram-bot against the
local Bot API stand-in (tests/fake_telegram.py), a real Redis, the real RQ worker rendering
with the CPU animatic, and the share server serving the links the bot posts."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from bot.core import Place
from bot.messages import COMMANDS
from bot.runtime import build_runtime
from bot.telegram import TelegramBot, redact_token_in_logs
from bot.web import share_app
from engine.events import STREAM, EventLog, RenderEvent
from engine.jobs import render_queue
from tests.conftest import jpeg
from tests.fake_telegram import FakeTelegram, updates_of
from tests.local_server import LocalServer
from worker.runner import run_worker

TOKEN = "123:ABC"
TEACHER = 4242  # a private chat's id is the teacher's user id
GROUP = -1001234567890
REQUEST = "Explain photosynthesis to grade 7 in 30 seconds"
BUTTONS = ["Render", "Preview", "Edit", "Cancel"]
ROOT = Path(__file__).resolve().parent.parent


# -- harness -------------------------------------------------------------------------------


class PollingBot:
    """`TelegramBot.run_polling` on an event loop of its own, in a thread, so that the test
    can wait and run the worker with plain blocking calls."""

    def __init__(self, runtime, fake: FakeTelegram) -> None:
        self.fake = fake
        self.bot = TelegramBot(runtime, token=TOKEN, api_url=fake.root)
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="telegram-bot", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def main() -> None:
            self._stop = asyncio.Event()
            self._ready.set()
            await self.bot.run_polling(self._stop)

        try:
            self._loop.run_until_complete(main())
        except BaseException as exc:
            self.error = exc
        finally:
            self._ready.set()
            self._loop.close()

    def start(self) -> PollingBot:
        polls = self.fake.polls_begun
        self._thread.start()
        self._ready.wait(10)
        self.fake.wait_for(lambda: self.error or self.fake.polls_begun > polls, 15,
                           what="the bot's first getUpdates")
        if self.error:
            raise self.error
        return self

    def stop(self) -> None:
        if self._thread.is_alive() and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)
        assert not self._thread.is_alive(), "the bot did not stop"
        if self.error is not None:
            raise self.error


@pytest.fixture
def fake(caplog):
    """The Bot API stand-in. After each test: the bot never apologised for a failure of its
    own and logged no error (handlers, relay, PTB)."""
    caplog.set_level(logging.WARNING)
    with FakeTelegram() as server:
        yield server
        apologies = [call.params.get("text") for call in server.calls_to("sendMessage")
                     if "went wrong on my side" in str(call.params.get("text"))]
        assert apologies == [], server.summary()
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert errors == [], [record.getMessage() for record in errors]


@pytest.fixture
def make_runtime():
    """build_runtime() after the test has set its environment; its Redis is stopped after."""
    made = []

    def make():
        runtime = build_runtime()
        made.append(runtime)
        return runtime

    yield make
    for runtime in made:
        if not runtime.settings.redis_url:
            runtime.connection.shutdown(nosave=True)


@pytest.fixture
def start_bot(fake, make_runtime):
    running = []

    def start(runtime=None) -> PollingBot:
        bot = PollingBot(runtime or make_runtime(), fake).start()
        running.append(bot)
        return bot

    yield start
    for bot in running:
        bot.stop()


def render(runtime) -> None:
    """Run the real RQ worker until the queue is empty (the animatic: seconds)."""
    run_worker(runtime.settings, runtime.connection, burst=True, logging_level="CRITICAL",
               foreground=True)


def png_bytes(width: int = 320, height: int = 180) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (45, 108, 223)).save(buffer, format="PNG")
    return buffer.getvalue()


def sent(fake: FakeTelegram, chat: int, after: int = 0) -> list[dict]:
    """The bot's messages in a chat with ids above `after`, oldest first."""
    return [m for m in fake.bot_messages(chat) if m["message_id"] > after]


def reply_to(fake: FakeTelegram, update: dict, *, containing: str = "", timeout: float = 10.0
             ) -> dict:
    """Wait for the bot's first message after `update`'s message (containing some text)."""
    message = update["message"]
    chat, after = message["chat"]["id"], message["message_id"]

    def found():
        return next((m for m in sent(fake, chat, after)
                     if containing in m.get("text", m.get("caption", ""))), None)

    return fake.wait_for(found, timeout, what=f"a reply containing {containing!r}")


def say_to(fake: FakeTelegram, chat: int, text: str, *, containing: str = "",
           timeout: float = 10.0, **sender) -> dict:
    update = fake.text_message(chat, text, **sender)
    fake.push_update(update)
    return reply_to(fake, update, containing=containing, timeout=timeout)


def buttons(message: dict) -> dict[str, str]:
    """A card's inline keyboard: label → callback_data."""
    rows = message.get("reply_markup", {}).get("inline_keyboard", [])
    return {button["text"]: button["callback_data"] for row in rows for button in row}


def press(fake: FakeTelegram, card: dict, label: str, **sender) -> dict:
    update = fake.callback_query(card["chat"]["id"], card["message_id"], buttons(card)[label],
                                 **sender)
    fake.push_update(update)
    return update


def answered(fake: FakeTelegram, update: dict) -> list[dict]:
    query = update["callback_query"]["id"]
    return [a for a in fake.callback_answers if str(a["callback_query_id"]) == query]


def edits_of(fake: FakeTelegram, chat: int, message_id: int) -> list:
    return [call for call in fake.calls_to("editMessageText")
            if call.params.get("chat_id") == chat and call.params.get("message_id") == message_id]


def job_of(fake: FakeTelegram, runtime, status_message_id: int) -> str:
    """The job whose status message this is (the bot records it just after sending)."""

    def lookup():
        for key in runtime.connection.scan_iter("lessonreel:status:*"):
            if runtime.connection.get(key) == str(status_message_id).encode():
                return key.decode().rsplit(":", 1)[1]
        return None

    return fake.wait_for(lookup, what=f"the job message {status_message_id} follows")


def card_scene_lines(text: str, number: int) -> list[str]:
    """The lines a card shows for one scene (its line and the indented ones under it)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{number}. "))
    block = [lines[start]]
    for line in lines[start + 1:]:
        if not line.startswith("   "):
            break
        block.append(line)
    return block


# -- 1. a whole conversation in a private chat ----------------------------------------------


def test_draft_edit_by_text_and_button_render_and_open_the_link(fake, make_runtime, start_bot,
                                                               monkeypatch):
    share = LocalServer(name="share")  # its URL is in the links, so known before the app
    monkeypatch.setenv("LESSONREEL_PUBLIC_URL", share.url)
    runtime = make_runtime()
    share.app = share_app(runtime.settings, runtime.secret)
    share.start()
    try:
        start_bot(runtime)
        first = say_to(fake, TEACHER, REQUEST, containing="version 1")
        assert list(buttons(first)) == BUTTONS
        assert all(data.startswith("lr:") and len(data) == 15
                   for data in buttons(first).values())
        assert "photosynthesis" in first["text"].lower()

        second = say_to(fake, TEACHER, "make scene 2 shorter", containing="version 2")
        assert "Scene 2" in second["text"] and list(buttons(second)) == BUTTONS

        edit = press(fake, second, "Edit")
        prompt = fake.wait_for(lambda: next((m for m in sent(fake, TEACHER, second["message_id"])
                                             if "Reply in this thread" in m["text"]), None),
                               what="the edit prompt")
        assert len(answered(fake, edit)) == 1
        [asked] = [call for call in fake.calls_to("sendMessage")
                   if "Reply in this thread" in call.params["text"]]
        assert asked.params["reply_markup"].get("force_reply") is True
        third = say_to(fake, TEACHER, "delete scene 1", containing="version 3",
                       reply_to_message_id=prompt["message_id"])
        assert list(buttons(third)) == BUTTONS

        go = press(fake, third, "Render")
        status = fake.wait_for(lambda: next((m for m in sent(fake, TEACHER, third["message_id"])
                                             if "queued" in m["text"]), None),
                               what="the queued status message")
        assert status["text"].startswith("Version 3 is queued: next in line")
        assert len(answered(fake, go)) == 1
        job = job_of(fake, runtime, status["message_id"])

        render(runtime)
        video = fake.wait_for(lambda: next(iter(fake.sent_videos), None), 30,
                              what="the preview video")
        # One status message, edited in place to the end; no second status message.
        assert fake.message(TEACHER, status["message_id"])["text"] == "Rendered version 3."
        edits = edits_of(fake, TEACHER, status["message_id"])
        assert all(call.ok for call in edits)
        assert edits[0].params["text"] == "Rendering version 3: starting…"
        assert edits[-1].params["text"] == "Rendered version 3."
        assert not [m for m in sent(fake, TEACHER, status["message_id"])
                    if "Rendering version" in m.get("text", "")]
        preview = runtime.settings.media_path / job / "preview.mp4"
        assert video.data == preview.read_bytes() and video.chat_id == TEACHER
        assert "Your video is ready" in video.caption
        [link, bundle] = [word for word in video.caption.split() if word.startswith(share.url)]
        assert bundle.endswith("/bundle.zip?download=1")  # the editors' bundle, offered too
        assert httpx.get(link + "/bundle.zip", timeout=10).status_code == 404  # not students'
        zipped = httpx.get(bundle, timeout=10)
        assert zipped.status_code == 200 and zipped.content[:2] == b"PK"
        page = httpx.get(link, timeout=10)
        assert page.status_code == 200 and "<video" in page.text
        mp4 = httpx.get(link + "/video.mp4", timeout=10)
        assert mp4.status_code == 200 and mp4.content[4:8] == b"ftyp"
        assert len(fake.sent_videos) == 1
    finally:
        share.stop()


# -- 2. an update delivered again is acted on once -----------------------------------------


def push_copies(fake: FakeTelegram, update: dict, copies: int = 3) -> None:
    """The same update (same update_id) queued `copies` times, as Telegram redelivers one it
    thinks was lost; pushed under the fake's lock, so one getUpdates hands out every copy."""
    with fake._lock:
        for _ in range(copies):
            fake.push_update(update)


def handed_out(fake: FakeTelegram, update_id: int) -> int:
    return sum(1 for u in updates_of(fake.calls) if u["update_id"] == update_id)


def test_the_same_update_three_times_is_one_reply_and_one_job(fake, make_runtime, start_bot):
    runtime = make_runtime()
    start_bot(runtime)
    request = fake.text_message(TEACHER, REQUEST)
    request["update_id"] = 9001
    push_copies(fake, request)
    card = reply_to(fake, request, containing="version 1")
    fake.wait_for(lambda: handed_out(fake, 9001) == 3, what="all three copies handed out")

    render_press = fake.callback_query(TEACHER, card["message_id"], buttons(card)["Render"])
    render_press["update_id"] = 9002
    push_copies(fake, render_press)
    fake.wait_for(lambda: handed_out(fake, 9002) == 3, what="all three presses handed out")
    fake.wait_for(lambda: [m for m in sent(fake, TEACHER, card["message_id"])
                           if "queued" in m["text"]], what="the queued status message")
    # A barrier: a later update answered means the copies before it were handled too.
    say_to(fake, TEACHER, "/help", containing="Commands:")

    replies = sent(fake, TEACHER, request["message"]["message_id"])
    assert len([m for m in replies if buttons(m)]) == 1  # one card
    assert len([m for m in replies if "is queued" in m["text"]]) == 1
    assert not [m for m in replies if "already being rendered" in m["text"]]
    assert render_queue(runtime.connection, runtime.settings).count == 1
    assert len(answered(fake, render_press)) == 1


# -- 3. the webhook ------------------------------------------------------------------------


def test_the_webhook_takes_only_updates_with_the_secret(fake, make_runtime):
    runtime = make_runtime()
    bot = TelegramBot(runtime, token=TOKEN, api_url=fake.root)
    server = LocalServer(lifespan="on", name="telegram-webhook")
    secret = "webhook-secret_0123456789"
    server.app = bot.webhook_app(secret, server.url)
    server.start()
    try:
        url = server.url + "/telegram/webhook"
        assert fake.webhook["url"] == url and fake.webhook["secret_token"] == secret
        assert [c["command"] for c in fake.my_commands()] == list(COMMANDS)
        for header in (None, "wrong-secret_0123456789", secret[:-1], secret + "x"):
            update = fake.text_message(TEACHER, f"Explain fractions ({header})")
            headers = {"Content-Type": "application/json"}
            if header is not None:
                headers["X-Telegram-Bot-Api-Secret-Token"] = header
            answer = httpx.post(url, content=fake.webhook_update_json(update), headers=headers,
                                timeout=10)
            assert answer.status_code == 403

        update = fake.text_message(TEACHER, REQUEST)
        update["update_id"] = 7001
        assert fake.deliver_webhook(update) == 200
        card = reply_to(fake, update, containing="version 1")
        assert "photosynthesis" in card["text"].lower() and list(buttons(card)) == BUTTONS
        # Telegram delivers again when it got no answer in time: acted on once.
        assert fake.deliver_webhook(update) == 200
        barrier = fake.text_message(TEACHER, "/help")
        assert fake.deliver_webhook(barrier) == 200
        help_ = reply_to(fake, barrier, containing="Commands:")
        # The card once, the help, and nothing else: neither the forged updates nor the
        # repeated one were acted on (not even a "typing…").
        assert [m["text"] for m in fake.bot_messages(TEACHER)] == [card["text"], help_["text"]]
        assert len(fake.chat_actions) == 2
        bad = httpx.post(url, content=b"{not json", timeout=10,
                         headers={"X-Telegram-Bot-Api-Secret-Token": secret})
        assert bad.status_code == 400
    finally:
        server.stop()


# -- 4. flood control ----------------------------------------------------------------------


# PTB warns that RetryAfter.retry_after will become a timedelta; the bot takes either.
@pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")
def test_a_retry_after_on_a_status_edit_is_waited_out_and_the_edit_lands_once(
        fake, make_runtime, start_bot):
    runtime = make_runtime()
    start_bot(runtime)
    say_to(fake, TEACHER, REQUEST, containing="version 1")
    status = say_to(fake, TEACHER, "preview", containing="queued")
    fake.fail_next("editMessageText", retry_after=1)
    render(runtime)
    fake.wait_for(lambda: fake.sent_videos, 30, what="the preview")
    edits = edits_of(fake, TEACHER, status["message_id"])
    assert edits[0].status == 429
    limited = edits[0].params["text"]
    landed = [call for call in edits[1:] if call.ok and call.params["text"] == limited]
    assert len(landed) == 1
    assert all(call.ok for call in edits[1:])
    assert fake.message(TEACHER, status["message_id"])["text"] == "Rendered version 1."
    assert len(fake.sent_videos) == 1


def test_a_render_that_starts_before_the_queued_reply_lands_keeps_one_status_message(
        fake, make_runtime, start_bot, monkeypatch):
    monkeypatch.setenv("PTB_TIMEDELTA", "true")  # RetryAfter.retry_after as a timedelta
    runtime = make_runtime()
    start_bot(runtime)
    card = say_to(fake, TEACHER, REQUEST, containing="version 1")
    fake.fail_next("sendMessage", retry_after=1)  # the "queued" reply is held up a second
    press(fake, card, "Render")
    fake.wait_for(lambda: render_queue(runtime.connection, runtime.settings).count,
                  what="the job on the queue")
    render(runtime)  # a warm worker starts at once: "started" comes before the reply lands
    fake.wait_for(lambda: fake.sent_videos, 30, what="the video")
    statuses = [m for m in sent(fake, TEACHER, card["message_id"])
                if "version 1" in m.get("text", "").lower()]
    assert [m["text"] for m in statuses] == ["Rendered version 1."]
    [status] = statuses
    sends = [call for call in fake.calls_to("sendMessage") if call.ok
             and call.answer["result"]["message_id"] == status["message_id"]]
    assert sends[0].params["text"].startswith("Version 1 is queued")


def test_a_deleted_status_message_still_gets_the_result(fake, make_runtime, start_bot,
                                                        caplog):
    runtime = make_runtime()
    start_bot(runtime)
    say_to(fake, TEACHER, REQUEST, containing="version 1")
    status = say_to(fake, TEACHER, "preview", containing="queued")
    job_of(fake, runtime, status["message_id"])
    httpx.post(f"{fake.base_url}{TOKEN}/deleteMessage", timeout=10,
               json={"chat_id": TEACHER, "message_id": status["message_id"]}).raise_for_status()
    render(runtime)
    video = fake.wait_for(lambda: next(iter(fake.sent_videos), None), 30, what="the preview")
    assert "Your preview is ready" in video.caption
    assert not [m for m in sent(fake, TEACHER, status["message_id"]) if "text" in m]
    assert any("cannot be edited" in r.getMessage() for r in caplog.records)


def test_a_video_telegram_will_not_take_still_gets_its_link(fake, make_runtime, start_bot):
    runtime = make_runtime()
    start_bot(runtime)
    say_to(fake, TEACHER, REQUEST, containing="version 1")
    status = say_to(fake, TEACHER, "preview", containing="queued")
    fake.fail_next("sendVideo", error_code=413, description="Request Entity Too Large",
                   times=10)
    render(runtime)
    link = fake.wait_for(lambda: next((m for m in sent(fake, TEACHER, status["message_id"])
                                       if "/v/" in m.get("text", "")), None), 30,
                         what="the link")
    assert link["text"].startswith("Your preview is ready")
    assert len(fake.calls_to("sendVideo")) == 1 and fake.sent_videos == []


def test_an_edited_message_is_not_a_new_turn(fake, start_bot):
    start_bot()
    request = fake.text_message(TEACHER, REQUEST)
    fake.push_update(request)
    reply_to(fake, request, containing="version 1")
    edited = {"edited_message": {**request["message"], "text": "make scene 2 shorter",
                                 "edit_date": int(time.time())}}
    fake.push_update(edited)
    say_to(fake, TEACHER, "/help", containing="Commands:")  # a barrier
    assert not [text for text in fake.texts(TEACHER) if "version 2" in text]
    assert fake.last_call("getUpdates").params["allowed_updates"] == [
        "message", "callback_query"]


def test_the_token_is_redacted_from_log_lines(caplog):
    redactor = redact_token_in_logs(TOKEN)
    try:
        log = logging.getLogger("telegram.ext.Updater")
        log.warning("POST http://127.0.0.1:1/bot%s/getUpdates failed", TOKEN)
        try:
            raise ConnectionError(f"http://127.0.0.1:1/bot{TOKEN}/sendVideo: refused")
        except ConnectionError:
            log.exception("Exception happened while polling for updates.")
    finally:
        for handler in logging.getLogger().handlers:
            handler.removeFilter(redactor)
    assert "getUpdates failed" in caplog.text and "sendVideo: refused" in caplog.text
    assert TOKEN not in caplog.text and "<bot token>" in caplog.text


# -- 6. groups: forum topics and reply chains ----------------------------------------------


def in_topic(thread: int) -> dict:
    return {"chat_type": "supergroup", "message_thread_id": thread, "is_topic_message": True}


def test_each_forum_topic_is_its_own_storyboard(fake, start_bot):
    start_bot()
    # Until a topic has a storyboard, only messages to the bot count (privacy mode off would
    # otherwise turn every "good morning" into a storyboard).
    fake.push_update(fake.text_message(GROUP, "Good morning all", **in_topic(9)))
    photosynthesis = say_to(fake, GROUP, f"@lessonreel_bot {REQUEST}", containing="version 1",
                            **in_topic(7))
    assert photosynthesis["message_thread_id"] == 7 and photosynthesis["is_topic_message"]
    assert fake.last_call("sendMessage").params["message_thread_id"] == 7
    assert [a.get("message_thread_id") for a in fake.chat_actions] == [7]  # typing, there

    fractions = say_to(fake, GROUP, "/new Explain fractions to grade 4 in 30 seconds",
                       containing="version 1", **in_topic(8))
    assert fractions["message_thread_id"] == 8 and "fraction" in fractions["text"].lower()

    edited = say_to(fake, GROUP, "make scene 2 shorter", containing="version 2", **in_topic(7))
    assert edited["message_thread_id"] == 7 and "photosynthesis" in edited["text"].lower()
    shown = say_to(fake, GROUP, "show", containing="version", **in_topic(8))
    assert shown["message_thread_id"] == 8
    assert "version 1" in shown["text"] and "fraction" in shown["text"].lower()
    # A button pressed in a topic answers in that topic.
    go = press(fake, edited, "Render")
    status = fake.wait_for(lambda: next((m for m in sent(fake, GROUP, shown["message_id"])
                                         if "queued" in m["text"]), None), what="queued")
    assert status["message_thread_id"] == 7 and status["text"].startswith("Version 2")
    assert len(answered(fake, go)) == 1
    assert not [m for m in fake.bot_messages(GROUP) if m.get("message_thread_id") == 9]


def test_in_a_plain_group_a_mention_starts_a_thread_and_replies_continue_it(fake, start_bot):
    start_bot()
    group = -1009876543210
    chatter = fake.text_message(group, "Who is bringing the projector tomorrow?")
    fake.push_update(chatter)
    asked = say_to(fake, group, f"@lessonreel_bot {REQUEST}", containing="version 1")
    assert asked["reply_to_message"]["message_id"] == asked["message_id"] - 1
    other = say_to(fake, group, "/new Explain fractions to grade 4 in 30 seconds",
                   containing="version 1")
    assert "fraction" in other["text"].lower()
    # A colleague replies to the first card: that thread, not the newer one, is edited.
    edited = say_to(fake, group, "make scene 2 shorter", containing="version 2",
                    user_id=5151, reply_to_message_id=asked["message_id"])
    assert "photosynthesis" in edited["text"].lower()
    # Not addressed to the bot: chatter, a photo shared with the group, another bot's command.
    holiday = fake.photo_message(group, png_bytes(), caption="Our trip!")
    fake.push_update(holiday)
    other_bot = fake.text_message(group, "/poll@quizbot Which day?")
    fake.push_update(other_bot)
    # A photo replying to the card, with a mention typed in capitals: both are the bot's.
    diagram = fake.photo_message(group, png_bytes(), caption="@LessonReel_Bot scene 1",
                                 reply_to_message_id=edited["message_id"])
    fake.push_update(diagram)
    card = reply_to(fake, diagram, containing="version 3")
    assert card["text"].startswith("Scene 1 will use your image.")
    assert "photosynthesis" in card["text"].lower()
    assert card["reply_to_message"]["message_id"] == diagram["message"]["message_id"]
    say_to(fake, group, "/help@LESSONREEL_BOT", containing="Commands:")  # a barrier
    for ignored in (chatter, holiday, other_bot):
        message_id = ignored["message"]["message_id"]
        assert not [m for m in sent(fake, group)
                    if m.get("reply_to_message", {}).get("message_id") == message_id]
    assert len(fake.calls_to("getFile")) == 1  # the holiday photo was not even fetched


# -- 7. images and other files -------------------------------------------------------------


def test_photos_become_scene_images_and_other_files_are_declined_politely(
        fake, make_runtime, start_bot, monkeypatch):
    monkeypatch.setenv("LESSONREEL_BOT__MAX_IMAGE_MB", "1")
    runtime = make_runtime()
    start_bot(runtime)
    say_to(fake, TEACHER, REQUEST, containing="version 1")

    photo = fake.photo_message(TEACHER, png_bytes(), caption="scene 2")
    fake.push_update(photo)
    card = reply_to(fake, photo, containing="version 2")
    assert card["text"].startswith("Scene 2 will use your image.")
    assert any("image:" in line for line in card_scene_lines(card["text"], 2))
    assert not any("image:" in line for line in card_scene_lines(card["text"], 1))
    assert list(buttons(card)) == BUTTONS
    assert len(fake.calls_to("getFile")) == 1
    assert len(list(runtime.settings.uploads_path.iterdir())) == 1

    huge = fake.photo_message(TEACHER, png_bytes(), caption="scene 3")
    huge["message"]["photo"][-1]["file_size"] = 5 * 2**20  # Telegram says how big it is
    fake.push_update(huge)
    too_large = reply_to(fake, huge, containing="MB")
    assert too_large["text"] == ("That image is 5.0 MB; the limit is 1 MB. Please send a "
                                 "smaller one.")
    assert len(fake.calls_to("getFile")) == 1  # not downloaded

    pdf = fake.document_message(TEACHER, b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", "worksheet.pdf",
                                "application/pdf")
    fake.push_update(pdf)
    declined = reply_to(fake, pdf, containing="worksheet.pdf")
    assert declined["text"].startswith("I can only use images")
    assert len(fake.calls_to("getFile")) == 1

    diagram = fake.document_message(TEACHER, png_bytes(200, 200), "diagram.png", "image/png",
                                    caption="use this for scene 3")
    fake.push_update(diagram)
    card = reply_to(fake, diagram, containing="version 3")
    assert card["text"].startswith("Scene 3 will use your image.")
    assert any("image:" in line for line in card_scene_lines(card["text"], 3))
    assert fake.texts(TEACHER)[-1] == card["text"]  # nothing else was said after it

    named = fake.document_message(TEACHER, png_bytes(200, 200), "naked_students.png",
                                  "image/png")
    fake.push_update(named)
    refused = reply_to(fake, named, containing="sexual")
    assert "version 4" not in refused["text"]


def test_a_csv_in_the_chat_queues_a_video_per_row_with_one_summary_and_each_result(
        fake, make_runtime, start_bot):
    runtime = make_runtime()
    start_bot(runtime)
    csv = (b"title,request,duration\n"
           b"Leaves,Explain photosynthesis to grade 7,10\n"
           b"Magnets,How magnets attract and repel,forever\n"
           b"Moon,Why the moon has phases,10s\n")
    upload = fake.document_message(TEACHER, csv, "week3.csv", "text/csv")
    fake.push_update(upload)
    summary = reply_to(fake, upload, containing="week3.csv")
    assert "2 of 3 rows queued" in summary["text"]
    assert "line 3" in summary["text"] and "line 2" in summary["text"]
    assert render_queue(runtime.connection, runtime.settings).count == 2
    render(runtime)
    ready = fake.wait_for(lambda: [m for m in fake.bot_messages(TEACHER)
                                   if "Your video is ready" in m.get("caption", m.get("text", ""))]
                          if len(fake.sent_videos) == 2 else None, 60, what="both videos")
    assert len(ready) == 2
    # One summary and the two results: no status message of its own for each row.
    assert not [t for t in fake.texts(TEACHER) if "is queued" in t or "Rendering" in t]


# -- 8. commands and languages -------------------------------------------------------------


def test_commands_are_registered_and_answered_and_chinese_gets_chinese(fake, start_bot):
    start_bot()
    assert [c["command"] for c in fake.my_commands()] == [
        "help", "new", "show", "render", "preview", "cancel", "videos", "queue", "link",
        "revoke", "remix"]
    assert all(c["description"] for c in fake.my_commands())

    help_ = say_to(fake, TEACHER, "/help")
    assert help_["text"].startswith("I turn a request into a short lesson video")
    assert "Commands: help · new" in help_["text"]
    empty = say_to(fake, TEACHER, "/queue")
    assert empty["text"] == "The render queue is empty."
    say_to(fake, TEACHER, REQUEST, containing="version 1")
    say_to(fake, TEACHER, "/render", containing="queued")
    position = say_to(fake, TEACHER, "/queue@lessonreel_bot")
    assert position["text"].startswith("Your render (version 1) is next in line, about")
    assert "1 waiting, 0 rendering." in position["text"]

    chinese = {"user_id": 6060, "language_code": "zh-hans", "first_name": "陈老师"}
    zh_help = say_to(fake, 6060, "/help", **chinese)
    assert "命令" in zh_help["text"]
    card = say_to(fake, 6060, "用30秒给初一学生讲解光合作用", containing="第 1 版", **chinese)
    assert list(buttons(card)) == ["渲染", "预览", "修改", "取消"]
    edited = say_to(fake, 6060, "场景2短一点", containing="第 2 版", **chinese)
    assert list(buttons(edited)) == ["渲染", "预览", "修改", "取消"]
    queued = say_to(fake, 6060, "/render", containing="排队", **chinese)
    assert queued["text"].startswith("第 2 版已排队")
    zh_queue = say_to(fake, 6060, "/queue", **chinese)
    assert zh_queue["text"].startswith("你的渲染（第 2 版）")


# -- 5 and 9. a real bot process, killed mid-render and restarted ---------------------------


class BotProcess:
    """`lessonreel bot telegram` as a real process; its log (stderr) goes to a file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.process: subprocess.Popen | None = None

    def start(self, fake: FakeTelegram) -> None:
        polls = fake.polls_begun
        with self.log.open("ab") as handle:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bot.cli", "bot", "telegram"], cwd=ROOT, env=self.env,
                stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT)
        fake.wait_for(lambda: self.process.poll() is not None or fake.polls_begun > polls, 30,
                      what="the bot process's first getUpdates")
        assert self.process.poll() is None, self.log.read_text()

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(10)


def relay_caught_up(runtime) -> bool:
    """The Telegram relay has read every event in the stream and acknowledged them all."""
    connection = runtime.connection
    last = connection.xinfo_stream(STREAM)["last-generated-id"]
    [group] = [g for g in connection.xinfo_groups(STREAM) if g["name"] == b"bot-telegram"]
    return group["pending"] == 0 and group["last-delivered-id"] == last


@pytest.fixture
def bot_process(tmp_path, fake, redis_server_url, monkeypatch):
    monkeypatch.setenv("LESSONREEL_REDIS_URL", redis_server_url)
    env = {**os.environ, "TELEGRAM_BOT_TOKEN": TOKEN, "LESSONREEL_TELEGRAM_API_URL": fake.root,
           "PTB_TIMEDELTA": "true", "PYTHONUNBUFFERED": "1"}
    process = BotProcess(env, tmp_path / "bot.log")
    yield process
    if process.process is not None and process.process.poll() is None:
        process.process.kill()
        process.process.wait(10)


def test_a_bot_killed_mid_render_posts_the_result_once_after_restart(
        fake, make_runtime, bot_process, monkeypatch):
    import worker.jobs

    runtime = make_runtime()  # the same TCP Redis and data dir as the bot process
    assert runtime.settings.redis_url
    rendering, release = threading.Event(), threading.Event()
    real_render = worker.jobs.render_to_folder

    def held_render(*args, **kwargs):  # the job renders until the test lets it finish
        rendering.set()
        assert release.wait(30)
        return real_render(*args, **kwargs)

    monkeypatch.setattr(worker.jobs, "render_to_folder", held_render)

    try:
        killed_while_rendering(fake, runtime, bot_process, rendering, release)
    finally:
        release.set()


def killed_while_rendering(fake, runtime, bot_process, rendering, release) -> None:
    bot_process.start(fake)
    card = say_to(fake, TEACHER, REQUEST, containing="version 1", timeout=20)
    press(fake, card, "Render")
    status = fake.wait_for(lambda: next((m for m in sent(fake, TEACHER, card["message_id"])
                                         if "queued" in m["text"]), None), 20,
                           what="the queued status message")
    job = job_of(fake, runtime, status["message_id"])
    worker_thread = threading.Thread(target=render, args=(runtime,), daemon=True)
    worker_thread.start()
    assert rendering.wait(30)
    fake.wait_for(lambda: fake.message(TEACHER, status["message_id"])["text"].startswith(
        "Rendering version 1"), 20, what="the status edited to rendering")

    bot_process.kill()  # while the job renders
    release.set()
    worker_thread.join(60)
    assert not worker_thread.is_alive()
    assert (runtime.settings.media_path / job / "preview.mp4").exists()
    assert fake.sent_videos == []  # nobody was there to post it

    bot_process.start(fake)
    video = fake.wait_for(lambda: next(iter(fake.sent_videos), None), 30,
                          what="the video after the restart")
    assert video.data == (runtime.settings.media_path / job / "preview.mp4").read_bytes()
    assert "Your video is ready" in video.caption and "/v/" in video.caption
    assert fake.message(TEACHER, status["message_id"])["text"] == "Rendered version 1."
    # Give the restarted bot every chance to repeat itself: a later request is answered, and
    # its relay has read and acknowledged every event in the stream.
    say_to(fake, TEACHER, "/help", containing="Commands:", timeout=20)
    fake.wait_for(lambda: relay_caught_up(runtime), 20, what="the relay to catch up")
    videos = say_to(fake, TEACHER, "/videos", containing="/v/", timeout=20)
    assert len(videos["text"].splitlines()) == 2  # "Your videos:" and this one
    assert len(fake.sent_videos) == 1
    assert len([m for m in fake.bot_messages(TEACHER) if "Your video is ready" in
                m.get("caption", m.get("text", ""))]) == 1

    assert bot_process.terminate() == 0  # SIGTERM: a clean stop
    log = bot_process.log.read_text()
    assert "Application started" in log  # the log was captured
    assert '"level": "ERROR"' not in log and "Traceback" not in log, log
    assert TOKEN not in log and "123%3AABC" not in log


def test_typing_is_shown_for_as_long_as_the_model_works(fake, start_bot, make_runtime,
                                                        monkeypatch):
    import bot.telegram as telegram_module
    from engine.llm import LLMError

    class SlowModel:  # fails after a while: the rule-based draft is used
        def answer(self, *args, **kwargs):
            time.sleep(1.0)
            raise LLMError("slow")

    monkeypatch.setattr(telegram_module, "TYPING_SECONDS", 0.2)
    runtime = make_runtime()
    runtime.service.llm = runtime.service.dialogue.llm = SlowModel()
    start_bot(runtime)
    say_to(fake, TEACHER, "Explain photosynthesis to grade 7 in 30 seconds",
           containing="could not draft it")
    typing = [call for call in fake.calls_to("sendChatAction")
              if call.params.get("chat_id") == TEACHER]
    assert len(typing) >= 3  # repeated while the turn lasted, not shown once and left to lapse


def test_an_album_and_quick_messages_are_taken_in_the_order_sent(fake, start_bot,
                                                                  make_runtime):
    runtime = make_runtime()
    start_bot(runtime)
    say_to(fake, TEACHER, REQUEST, containing="version 1")
    # An album arrives as three updates at once; then two edits straight after.
    for number in (1, 2, 3):
        fake.push_update(fake.photo_message(TEACHER, png_bytes(64 + number, 48),
                                            caption=f"scene {number}"))
    fake.push_update(fake.text_message(TEACHER, "delete scene 1"))
    last = fake.text_message(TEACHER, "make scene 1 shorter")
    fake.push_update(last)
    reply_to(fake, last, containing="version 6")
    texts = [m["text"] for m in fake.bot_messages(TEACHER)]
    assert not [text for text in texts if "Someone else changed" in text]
    assert [text.split("\n")[0] for text in texts if "will use your image" in text] == [
        "Scene 1 will use your image.", "Scene 2 will use your image.",
        "Scene 3 will use your image."]
    history = runtime.service.history
    conversation = runtime.service.conversation(Place("telegram", str(TEACHER), ""))
    v4, v5 = history.get(conversation, 4).storyboard, history.get(conversation, 5).storyboard
    assert v4.scenes[0].image and v5.scenes[0].id == v4.scenes[1].id  # deleted, then edited
    v6 = history.get(conversation, 6).storyboard
    assert v6.scenes[0].duration < v5.scenes[0].duration


def test_a_button_pressed_long_ago_still_counts_when_its_answer_is_refused(fake, start_bot,
                                                                         make_runtime):
    runtime = make_runtime()
    start_bot(runtime)
    card = say_to(fake, TEACHER, REQUEST, containing="version 1")
    fake.fail_next("answerCallbackQuery", error_code=400,
                   description="Bad Request: query is too old and response timeout expired")
    press(fake, card, "Render")
    status = fake.wait_for(lambda: next((m for m in fake.bot_messages(TEACHER)
                                         if "queued" in m["text"]), None), what="queued")
    assert status["text"].startswith("Version 1 is queued")
    assert render_queue(runtime.connection, runtime.settings).count == 1


def test_a_group_that_became_a_supergroup_still_gets_its_result(fake, start_bot,
                                                                make_runtime):
    runtime = make_runtime()
    start_bot(runtime)
    group, supergroup = -4001, -1004001
    card = say_to(fake, group, f"@lessonreel_bot {REQUEST}", containing="version 1",
                  chat_type="group")
    press(fake, card, "Preview")
    fake.wait_for(lambda: render_queue(runtime.connection, runtime.settings).count,
                  what="the job")
    migrated = fake.text_message(group, "", chat_type="group")
    migrated["message"].pop("text")
    migrated["message"]["migrate_to_chat_id"] = supergroup
    fake.push_update(migrated)
    fake.wait_for(lambda: runtime.connection.get(f"lessonreel:tg:migrated:{group}"),
                  what="the migration recorded")
    render(runtime)
    video = fake.wait_for(lambda: next(iter(fake.sent_videos), None), what="the preview")
    assert video.chat_id == supergroup


def test_a_chat_of_students_may_only_watch(fake, start_bot, make_runtime, monkeypatch):
    monkeypatch.setenv("LESSONREEL_ROLES__STUDENTS", f"telegram-chat:{TEACHER + 1}")
    start_bot(make_runtime())
    refused = say_to(fake, TEACHER + 1, REQUEST, containing="watch", user_id=TEACHER + 1)
    assert "Videos are made by teachers" in refused["text"]
    card = say_to(fake, TEACHER, REQUEST, containing="version 1")  # another chat: a teacher
    assert buttons(card)


# -- live previews -------------------------------------------------------------------------



def test_a_live_preview_is_one_photo_replaced_as_the_render_goes_and_gone_at_the_end(
        fake, make_runtime, start_bot, monkeypatch):
    """The worker's side is played here (its pictures and events), so each step is seen;
    the real worker then finishes the job."""
    monkeypatch.setenv("LESSONREEL_BOT__LIVE_PREVIEW_SECONDS", "0.01")
    runtime = make_runtime()
    start_bot(runtime)
    say_to(fake, TEACHER, REQUEST, containing="version 1")
    status = say_to(fake, TEACHER, "render", containing="queued")
    job = job_of(fake, runtime, status["message_id"])
    folder = runtime.settings.media_path / job
    folder.mkdir(parents=True)
    events = EventLog(runtime.connection)

    def preview_at(step: int, colour: tuple[int, int, int]) -> bytes:
        (folder / "live.jpg").write_bytes(data := jpeg(colour))
        events.publish(RenderEvent(job_id=job, kind="progress", scene=1, scenes=3, step=step,
                                   steps=6, fraction=0.1, preview="live.jpg"))
        return data

    red = preview_at(2, (200, 30, 30))
    photo = fake.wait_for(lambda: next((f for f in fake.sent_files if f.kind == "photo"), None),
                          what="the live preview")
    assert photo.data == red
    assert photo.caption.startswith("Live preview of scene 1/3 at step 2/6")
    # Hostile: an event naming another file. It exists, and must not reach the chat.
    secret = runtime.settings.data_path / "secret.jpg"
    secret.write_bytes(jpeg((1, 2, 3)))
    events.publish(RenderEvent(job_id=job, kind="progress", scene=1, scenes=3, step=3,
                               steps=6, fraction=0.1, preview="../../secret.jpg"))
    green = preview_at(4, (30, 200, 30))
    fake.wait_for(lambda: fake.edited_media, what="the picture replaced")
    assert fake.edited_media == [(TEACHER, photo.message_id, green)]
    assert secret.read_bytes() not in [f.data for f in fake.sent_files]
    assert "step 4/6" in fake.message(TEACHER, photo.message_id)["caption"]
    assert [f.kind for f in fake.sent_files] == ["photo"], "one preview message, edited"

    render(runtime)
    fake.wait_for(lambda: fake.sent_videos, 30, what="the video")
    fake.wait_for(lambda: (TEACHER, photo.message_id) not in fake.messages,
                  what="the preview gone: the video took its place")
    assert not (folder / "live.jpg").exists()
