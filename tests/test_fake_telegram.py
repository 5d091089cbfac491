"""The fake Telegram Bot API server against the real python-telegram-bot."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import time

import httpx
import pytest
from PIL import Image
from telegram import Bot, BotCommand, InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.constants import ChatAction
from telegram.error import BadRequest, RetryAfter
from telegram.ext import (
    ApplicationBuilder,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from tests.fake_telegram import FakeTelegram

TOKEN = "123:ABC"
TEACHER = 4242  # a private chat's id is the user's id
GROUP = -1001234567890


@pytest.fixture
def fake():
    with FakeTelegram() as server:
        yield server


def make_bot(fake: FakeTelegram) -> Bot:
    return Bot(token=TOKEN, base_url=fake.base_url, base_file_url=fake.base_file_url)


def png_bytes(width: int = 640, height: int = 360) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (45, 108, 223)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_urls_follow_ptbs_joining(fake: FakeTelegram) -> None:
    bot = make_bot(fake)
    assert bot.base_url == f"{fake.root}/bot{TOKEN}"
    assert bot.base_file_url == f"{fake.root}/file/bot{TOKEN}"


def test_get_me_and_messages_in_a_topic_with_a_reply(fake: FakeTelegram) -> None:
    question = fake.text_message(GROUP, "Make a video about fractions", message_thread_id=7)
    fake.push_update(question)
    keyboard = InlineKeyboardMarkup([[InlineKeyboardButton("Render", callback_data="render:1")]])

    async def scenario():
        async with make_bot(fake) as bot:
            me = await bot.get_me()
            sent = await bot.send_message(
                GROUP, "Drafting a storyboard…", message_thread_id=7,
                reply_to_message_id=question["message"]["message_id"], reply_markup=keyboard,
            )
            return me, sent

    me, sent = asyncio.run(scenario())

    assert (me.id, me.username, me.first_name, me.is_bot) == (
        999, "lessonreel_bot", "lessonreel", True)
    assert sent.text == "Drafting a storyboard…"
    assert sent.message_thread_id == 7
    assert sent.from_user.id == 999
    assert sent.chat.id == GROUP
    assert sent.reply_to_message.text == "Make a video about fractions"
    assert sent.reply_markup.inline_keyboard[0][0].callback_data == "render:1"
    # message ids are per chat and shared with the user's message
    assert sent.message_id == question["message"]["message_id"] + 1
    stored = fake.messages[(GROUP, sent.message_id)]
    assert stored["text"] == "Drafting a storyboard…"
    call = fake.last_call("sendMessage")
    assert call.params["message_thread_id"] == 7
    assert call.params["chat_id"] == GROUP
    assert call.params["reply_markup"] == {
        "inline_keyboard": [[{"text": "Render", "callback_data": "render:1"}]]}


def test_edit_message_text_and_its_errors(fake: FakeTelegram) -> None:
    async def scenario():
        async with make_bot(fake) as bot:
            sent = await bot.send_message(TEACHER, "Rendering: 10%")
            edited = await bot.edit_message_text("Rendering: 50%", TEACHER, sent.message_id)
            with pytest.raises(BadRequest) as not_modified:
                await bot.edit_message_text("Rendering: 50%", TEACHER, sent.message_id)
            with pytest.raises(BadRequest) as missing:
                await bot.edit_message_text("Done", TEACHER, sent.message_id + 100)
            with pytest.raises(BadRequest) as bad_html:
                await bot.send_message(TEACHER, "1 <b>2", parse_mode="HTML")
            html = await bot.send_message(TEACHER, "<b>Done</b> &amp; shared",
                                          parse_mode="HTML")
            return sent, edited, not_modified.value, missing.value, bad_html.value, html

    sent, edited, not_modified, missing, bad_html, html = asyncio.run(scenario())

    assert edited.text == "Rendering: 50%"
    assert edited.edit_date is not None
    assert fake.messages[(TEACHER, sent.message_id)]["text"] == "Rendering: 50%"
    # PTB drops "Bad Request: " and capitalizes the rest (lower-casing all but the first letter)
    assert not_modified.message.startswith("Message is not modified: specified new message")
    assert missing.message == "Message to edit not found"
    assert bad_html.message.startswith("Can't parse entities: ")
    assert html.text == "Done & shared"
    assert fake.texts(TEACHER) == ["Rendering: 50%", "Done & shared"]


def test_retry_after_on_edit_then_the_retry_lands(fake: FakeTelegram, monkeypatch) -> None:
    monkeypatch.setenv("PTB_TIMEDELTA", "true")  # RetryAfter.retry_after as a timedelta
    fake.fail_next("editMessageText", retry_after=1)

    async def scenario():
        async with make_bot(fake) as bot:
            sent = await bot.send_message(TEACHER, "Rendering: 10%")
            with pytest.raises(RetryAfter) as limited:
                await bot.edit_message_text("Rendering: 20%", TEACHER, sent.message_id)
            await bot.edit_message_text("Rendering: 30%", TEACHER, sent.message_id)
            return sent, limited.value

    sent, limited = asyncio.run(scenario())

    assert limited.retry_after == dt.timedelta(seconds=1)
    edits = fake.calls_to("editMessageText")
    assert [call.status for call in edits] == [429, 200]
    assert edits[0].answer["parameters"] == {"retry_after": 1}
    assert fake.messages[(TEACHER, sent.message_id)]["text"] == "Rendering: 30%"


def test_send_video_bytes_arrive_exactly(fake: FakeTelegram) -> None:
    # bytes that look like multipart framing must survive byte for byte
    video = (b"\x00\x00\x00\x18ftypmp42\r\n--boundary\r\n\r\n" + bytes(range(256))) * 500
    keyboard = InlineKeyboardMarkup([[InlineKeyboardButton("Edit", callback_data="edit:9")]])

    async def scenario():
        async with make_bot(fake) as bot:
            return await bot.send_video(
                GROUP, video, filename="fractions.mp4", caption="Your lesson video",
                message_thread_id=3, reply_markup=keyboard, width=1280, height=720,
                duration=12, supports_streaming=True,
            )

    message = asyncio.run(scenario())

    assert len(fake.sent_videos) == 1
    sent = fake.sent_videos[0]
    assert sent.data == video
    assert sent.filename == "fractions.mp4"
    assert sent.mime_type == "video/mp4"
    assert sent.caption == "Your lesson video"
    assert sent.message_thread_id == 3
    assert sent.reply_markup == {"inline_keyboard": [[{"text": "Edit", "callback_data": "edit:9"}]]}
    assert (sent.chat_id, sent.message_id) == (GROUP, message.message_id)
    assert message.video.file_size == len(video)
    assert (message.video.width, message.video.height) == (1280, 720)
    assert message.caption == "Your lesson video"
    assert message.message_thread_id == 3
    assert fake.last_call("sendVideo").files["video"] == video
    assert fake.last_call("sendVideo").params["supports_streaming"] is True


def test_get_file_downloads_the_photo_a_user_sent(fake: FakeTelegram) -> None:
    image = png_bytes()
    update = fake.photo_message(TEACHER, image, caption="Use this diagram")
    sizes = update["message"]["photo"]

    async def scenario():
        async with make_bot(fake) as bot:
            largest = await bot.get_file(sizes[-1]["file_id"])
            thumb = await bot.get_file(sizes[0]["file_id"])
            data = await largest.download_as_bytearray()
            return largest, data, await thumb.download_as_bytearray()

    largest, data, thumb_data = asyncio.run(scenario())

    assert len(sizes) >= 2
    assert (sizes[-1]["width"], sizes[-1]["height"]) == (640, 360)
    assert max(sizes[0]["width"], sizes[0]["height"]) == 90
    assert bytes(data) == image
    assert largest.file_size == len(image)
    assert largest.file_path.startswith(f"{fake.base_file_url}{TOKEN}/")
    assert Image.open(io.BytesIO(bytes(thumb_data))).size == (90, 51)


def test_commands_photo_document_chat_action_and_button_answers(fake: FakeTelegram) -> None:
    image = png_bytes(1600, 900)
    press = fake.callback_query(TEACHER, 1, "noop")

    async def scenario():
        async with make_bot(fake) as bot:
            await bot.set_my_commands([BotCommand("new", "Make a new video")])
            commands = await bot.get_my_commands()
            with pytest.raises(BadRequest):
                await bot.set_my_commands([BotCommand("New", "capitals are refused")])
            await bot.send_chat_action(TEACHER, ChatAction.UPLOAD_VIDEO)
            photo = await bot.send_photo(TEACHER, image, caption="<i>Scene 1</i>",
                                         parse_mode="HTML")
            document = await bot.send_document(TEACHER, b"scene,seconds\n1,4\n",
                                               filename="timeline.csv")
            await bot.answer_callback_query(press["callback_query"]["id"], text="Working")
            with pytest.raises(BadRequest):
                await bot.answer_callback_query("12345", text="never issued")
            return commands, photo, document

    commands, photo, document = asyncio.run(scenario())

    assert [(c.command, c.description) for c in commands] == [("new", "Make a new video")]
    assert fake.my_commands() == [{"command": "new", "description": "Make a new video"}]
    assert [a["action"] for a in fake.chat_actions] == ["upload_video"]
    assert photo.caption == "Scene 1"
    assert [(p.width, p.height) for p in photo.photo][-1] == (1600, 900)
    assert len(photo.photo) >= 3
    assert fake.sent_photos[0].data == image
    assert document.document.file_name == "timeline.csv"
    assert fake.sent_documents[0].data == b"scene,seconds\n1,4\n"
    assert [a["text"] for a in fake.callback_answers] == ["Working"]


def test_topic_messages_reply_to_the_topic_root_like_telegram(fake: FakeTelegram) -> None:
    update = fake.text_message(GROUP, "/new@lessonreel_bot volcanoes", message_thread_id=11)
    message = update["message"]
    assert message["entities"] == [{"type": "bot_command", "offset": 0, "length": 19}]
    assert message["is_topic_message"] is True
    assert message["reply_to_message"]["forum_topic_created"]["name"]
    assert message["reply_to_message"]["message_id"] == 11

    async def scenario():
        async with make_bot(fake) as bot:
            return await bot.send_message(GROUP, "On it", message_thread_id=11)

    sent = asyncio.run(scenario())
    assert sent.is_topic_message
    assert sent.reply_to_message.forum_topic_created is not None


def test_application_polling_receives_messages_and_button_presses(fake: FakeTelegram) -> None:
    seen: list[str] = []

    async def start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        seen.append(f"command:{update.effective_message.text}")
        keyboard = InlineKeyboardMarkup([[InlineKeyboardButton("Fractions",
                                                               callback_data="topic:fractions")]])
        await update.effective_message.reply_text("Pick a topic", reply_markup=keyboard)

    async def text(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        seen.append(f"text:{update.effective_message.text}")
        await update.effective_message.reply_text(f"You said: {update.effective_message.text}")

    async def pressed(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        query = update.callback_query
        seen.append(f"button:{query.data}")
        await query.answer("Got it")
        await query.edit_message_text(f"Topic: {query.data.split(':')[1]}")

    async def scenario():
        app = (ApplicationBuilder().token(TOKEN).base_url(fake.base_url)
               .base_file_url(fake.base_file_url).build())
        app.add_handler(CommandHandler("start", start))
        app.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND, text))
        app.add_handler(CallbackQueryHandler(pressed))
        async with app:
            await app.start()
            await app.updater.start_polling(poll_interval=0, timeout=1)
            try:
                fake.push_update(fake.text_message(TEACHER, "/start"))
                menu = await fake.wait_for_async(
                    lambda: [m for m in fake.bot_messages(TEACHER) if m["text"] == "Pick a topic"],
                    timeout=5, what="the topic menu")
                fake.push_update(fake.text_message(TEACHER, "photosynthesis please"))
                await fake.wait_for_async(lambda: len(fake.bot_messages(TEACHER)) == 2, 5)
                fake.push_update(fake.callback_query(TEACHER, menu[0]["message_id"],
                                                     "topic:fractions"))
                await fake.wait_for_async(lambda: fake.calls_to("editMessageText"), 5)
            finally:
                await app.updater.stop()
                await app.stop()

    started = time.monotonic()
    asyncio.run(scenario())

    assert time.monotonic() - started < 8
    assert seen == ["command:/start", "text:photosynthesis please", "button:topic:fractions"]
    assert fake.texts(TEACHER) == ["Topic: fractions", "You said: photosynthesis please"]
    menu = fake.bot_messages(TEACHER)[0]
    assert "reply_markup" not in menu  # editing text without a keyboard removes it
    # PTB's reply_text quotes the user's message only outside private chats by default
    assert "reply_to_message" not in menu
    assert [answer["text"] for answer in fake.callback_answers] == ["Got it"]
    assert fake.calls_to("deleteWebhook"), "polling bootstraps by deleting the webhook"
    assert fake.pending_updates == [], "the final getUpdates confirms every update"


def test_raw_http_unknown_method_long_poll_and_wait_for(fake: FakeTelegram) -> None:
    unknown = httpx.post(f"{fake.base_url}{TOKEN}/sendTeleport", json={"chat_id": 1})
    assert unknown.status_code == 404
    assert unknown.json() == {
        "ok": False, "error_code": 404, "description": "Not Found: method not found"}

    started = time.monotonic()
    empty = httpx.post(f"{fake.base_url}{TOKEN}/getUpdates", data={"timeout": "30"})
    assert empty.json() == {"ok": True, "result": []}
    assert 0.9 <= time.monotonic() - started < 2  # long polling, capped at 1 s

    update_id = fake.push_update(fake.text_message(TEACHER, "hello"))
    first = httpx.post(f"{fake.base_url}{TOKEN}/getUpdates", data={"offset": "0"}).json()
    assert [u["update_id"] for u in first["result"]] == [update_id]
    assert first["result"][0]["message"]["from"]["language_code"] == "en"
    confirmed = httpx.post(f"{fake.base_url}{TOKEN}/getUpdates",
                           data={"offset": str(update_id + 1)}).json()
    assert confirmed["result"] == []

    fake.fail_next("sendMessage", error_code=403,
                   description="Forbidden: bot was blocked by the user")
    blocked = httpx.post(f"{fake.base_url}{TOKEN}/sendMessage",
                         data={"chat_id": "1", "text": "hi"})
    assert (blocked.status_code, blocked.json()["description"]) == (
        403, "Forbidden: bot was blocked by the user")

    with pytest.raises(AssertionError, match=r"sendMessage\(chat_id=1, text='hi'\)"):
        fake.wait_for(lambda: fake.calls_to("sendVideo"), timeout=0.1, what="a video")


def test_stop_is_quick_while_a_long_poll_is_open() -> None:
    fake = FakeTelegram(long_poll_cap=30).start()
    url = f"{fake.base_url}{TOKEN}/getUpdates"

    async def poll_then_stop():
        async with httpx.AsyncClient() as client:
            poll = asyncio.create_task(client.post(url, data={"timeout": "30"}))
            await fake.wait_for_async(lambda: fake.polls_begun, 5)
            started = time.monotonic()
            await asyncio.to_thread(fake.stop)
            stopped_in = time.monotonic() - started
            response = await poll
            return stopped_in, response.json()

    stopped_in, answer = asyncio.run(poll_then_stop())
    assert stopped_in < 2
    assert answer == {"ok": True, "result": []}
