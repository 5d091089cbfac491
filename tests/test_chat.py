"""The conversation every platform shares (bot/core.py), the event relay and the console chat,
on a real embedded Redis, the real RQ worker and the CPU animatic renderer."""

from __future__ import annotations

import asyncio
import io
import threading
import time

import pytest
from PIL import Image
from rich.console import Console
from starlette.testclient import TestClient

from bot.console import ConsoleChat
from bot.core import Author, ChatService, Place, Route, parse_command
from bot.relay import Delivery, EventRelay
from bot.web import share_app
from engine.events import EventLog, RenderEvent
from engine.jobs import render_queue
from engine.share import share_secret, share_url, sign, verify
from tests.conftest import with_settings
from worker.runner import run_worker

REQUEST = "Explain photosynthesis to grade 7 in 30 seconds"
TEACHER = Author("U1", "Ms Chen")


@pytest.fixture
def service(runtime) -> ChatService:
    return runtime.service


def place(thread: str = "t1") -> Place:
    return Place("test", "C1", thread)


def png_bytes(size=(64, 48), color=(200, 40, 40), kind="PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, kind)
    return buffer.getvalue()


class RecordingNotifier:
    """Stands in for a platform: records what the relay asks it to show."""

    def __init__(self) -> None:
        self.statuses: list[tuple[str, str]] = []  # (ref, text), posts and edits
        self.posted = 0
        self.deliveries: list[tuple[str, Delivery]] = []

    async def post_status(self, route: Route, text: str) -> str:
        self.posted += 1
        self.statuses.append((f"m{self.posted}", text))
        return f"m{self.posted}"

    async def edit_status(self, route: Route, ref: str, text: str) -> None:
        self.statuses.append((ref, text))

    async def deliver(self, route: Route, delivery: Delivery) -> None:
        self.deliveries.append((route.job_id, delivery))


def relay(runtime, notifier, platform="test") -> EventRelay:
    relay = EventRelay(runtime.connection, runtime.settings, share_secret=runtime.secret,
                       platform=platform, notifier=notifier)
    relay.ensure_group()
    return relay


def drain(relay: EventRelay, *, backlog: bool = False) -> None:
    async def run() -> None:
        if backlog:
            await relay.pump(backlog=True)
        while await relay.pump():
            pass

    asyncio.run(run())


# -- commands and turns --------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("render", ("render", "")), ("/render", ("render", "")),
    ("/render@lessonreel_bot", ("render", "")), ("渲染", ("render", "")),
    ("/new Explain fractions", ("new", "Explain fractions")), ("new storyboard", ("new", "")),
    ("new seed for scene 2", None), ("render scene 2 in blue", None),
    ("/frobnicate", ("unknown", "frobnicate")), ("Explain photosynthesis", None),
])
def test_command_words_are_told_from_edits(text, expected):
    assert parse_command(text) == expected


def test_a_request_gets_a_card_with_buttons_and_an_edit_says_what_changed(service):
    [first] = service.message(place(), TEACHER, REQUEST)
    assert first.card is not None and first.card.version == 1
    assert [b.action for b in first.card.buttons] == ["render", "preview", "edit", "cancel"]
    assert all(len("lr:" + b.token) <= 64 for b in first.card.buttons)  # Telegram's limit
    assert "photosynthesis" in first.card.heading.lower()
    [second] = service.message(place(), TEACHER, "make scene 2 shorter")
    assert second.card is not None and second.card.version == 2
    assert "Scene 2" in second.text
    # A colleague in the same thread edits the same storyboard.
    [third] = service.message(place(), Author("U2"), "delete scene 1")
    assert third.card.version == 3
    # Another thread is another storyboard.
    [other] = service.message(place("t2"), TEACHER, "show")
    assert other.card is None and "no storyboard" in other.text


def test_chinese_teachers_get_chinese_replies(service):
    [card] = service.message(place(), TEACHER, "用30秒给初一学生讲解光合作用")
    assert card.card.language == "zh" and "第 1 版" in card.card.heading
    [queue] = service.message(place(), TEACHER, "队列")
    assert "队列" in queue.text or "渲染" in queue.text
    [unknown] = service.message(place(), TEACHER, "/frobnicate")
    assert "不认识" in unknown.text


def test_help_new_and_empty_messages(service):
    [help_] = service.message(place(), TEACHER, "help")
    assert "render" in help_.text and "preview" in help_.text
    service.message(place(), TEACHER, REQUEST)
    [new] = service.message(place(), TEACHER, "new")
    assert "new storyboard" in new.text
    [show] = service.message(place(), TEACHER, "show")
    assert "no storyboard" in show.text  # the thread starts over; the old versions are kept
    [empty] = service.message(place(), TEACHER, "   ")
    assert "empty" in empty.text
    [huge] = service.message(place(), TEACHER, "x" * 100_000)
    assert "limit" in huge.text


def test_render_queues_one_job_however_often_it_is_pressed(service, runtime):
    [card] = service.message(place(), TEACHER, REQUEST)
    render = card.card.buttons[0].token
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(service.action(render, TEACHER)))
               for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    followed = [out.follows_job for _place, outs in answers for out in outs if out.follows_job]
    assert len(followed) == 1
    assert render_queue(runtime.connection, runtime.settings).count == 1
    refused = [outs[0].text for _place, outs in answers if not outs[0].follows_job]
    assert all("already being rendered" in text for text in refused)
    [status] = service.message(place(), TEACHER, "queue")
    assert "next in line" in status.text
    [cancelled] = service.message(place(), TEACHER, "cancel")
    assert "Cancelling" in cancelled.text
    assert render_queue(runtime.connection, runtime.settings).count == 0
    [again] = service.message(place(), TEACHER, "render")  # the thread is free again
    assert again.follows_job and again.follows_job != followed[0]


def test_a_full_queue_is_said_politely(service, runtime, monkeypatch):
    full = runtime.settings.model_copy(update={"bot": runtime.settings.bot.model_copy(
        update={"max_queued_jobs": 1})})
    service.settings = full
    service.message(place("a"), TEACHER, REQUEST)
    service.message(place("b"), TEACHER, REQUEST)
    [first] = service.message(place("a"), TEACHER, "render")
    [second] = service.message(place("b"), TEACHER, "render")
    assert first.follows_job
    assert second.follows_job is None and "queue is full" in second.text


def test_an_old_button_and_a_forged_one(service):
    [card] = service.message(place(), TEACHER, REQUEST)
    service.message(place(), TEACHER, "make scene 2 shorter")
    thread, outs = service.action(card.card.buttons[1].token, TEACHER)  # preview of v1
    assert thread == place()
    assert "version 1; the newest is 2" in outs[0].text and outs[0].follows_job
    for forged in ("", "nope", "a" * 500, "../../etc", "lr:xx"):
        thread, outs = service.action(forged, TEACHER)
        assert thread is None and "expired" in outs[0].text


def test_an_image_becomes_a_scenes_image(service, runtime):
    [empty] = service.image(place(), TEACHER, png_bytes())
    assert "request first" in empty.text
    service.message(place(), TEACHER, REQUEST)
    [card] = service.image(place(), TEACHER, png_bytes(), caption="use this for scene 2")
    assert card.card.scenes[1].image and "Scene 2" in card.text
    saved = runtime.settings.uploads_path / card.card.scenes[1].image
    with Image.open(saved) as image:
        assert image.size == (64, 48)
    [no_scene] = service.image(place(), TEACHER, png_bytes(), caption="scene 40")
    assert "does not exist" in no_scene.text
    [broken] = service.image(place(), TEACHER, b"GIF89a not really")
    assert "could not read" in broken.text
    [huge] = service.image_too_large(place(), 30 * 2**20)
    assert "30.0 MB" in huge.text and "10 MB" in huge.text
    [pdf] = service.unsupported_file(place(), "worksheet.pdf")
    assert "worksheet.pdf" in pdf.text


def test_the_model_busy_is_said_and_plain_edits_still_work(runtime):
    class SlowModel:  # the admission control is what is tested, not the model
        def __init__(self):
            self.release = threading.Event()

        def answer(self, *args, **kwargs):
            self.release.wait(10)
            raise RuntimeError("not reached in this test")

    settings = runtime.settings.model_copy(update={"bot": runtime.settings.bot.model_copy(
        update={"llm_max_waiting": 0})})
    model = SlowModel()
    service = ChatService(runtime.connection, settings, share_secret=b"x" * 32, llm=None)
    service.message(place(), TEACHER, REQUEST)  # drafted by rule
    service.llm = model
    service.dialogue.llm = model
    waiting = threading.Thread(target=service.message, args=(place("b"), TEACHER, REQUEST))
    waiting.start()
    deadline = time.monotonic() + 5
    while service._waiting == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    [busy] = service.message(place("c"), TEACHER, "Explain fractions to grade 4")
    assert "busy" in busy.text
    [plain] = service.message(place(), TEACHER, "make scene 2 shorter")
    assert plain.card is not None and plain.card.version == 2
    model.release.set()
    waiting.join(10)


def test_a_broken_turn_is_an_apology_not_a_trace(service, monkeypatch):
    def explode(*args, **kwargs):
        raise KeyError("internal detail")

    monkeypatch.setattr(service.dialogue, "turn", explode)
    [out] = service.message(place(), TEACHER, REQUEST)
    assert "went wrong on my side" in out.text and "KeyError" not in out.text


def test_the_same_delivery_counts_once(service):
    assert service.first_time("slack", "Ev1")
    assert not service.first_time("slack", "Ev1")
    assert service.first_time("telegram", "Ev1")


# -- the relay -----------------------------------------------------------------------------


def _queued_job(service) -> str:
    service.message(place(), TEACHER, REQUEST)
    [queued] = service.message(place(), TEACHER, "preview")
    return queued.follows_job


def test_status_edits_are_throttled_never_repeated_and_the_result_comes_once(runtime,
                                                                             service):
    notifier = RecordingNotifier()
    relay_ = relay(runtime, notifier)
    job = _queued_job(service)
    service.routes.claim_status(job, "m0")  # the adapter posted the "queued" reply
    events = EventLog(runtime.connection)
    events.publish(RenderEvent(job_id=job, kind="started", scenes=3))
    for fraction in (0.1, 0.2, 0.3):
        events.publish(RenderEvent(job_id=job, kind="progress", fraction=fraction))
    drain(relay_)
    assert [ref for ref, _ in notifier.statuses] == ["m0"]  # edited, throttled to one edit
    assert notifier.statuses[0][1].endswith("starting…")
    relay_.settings = relay_.settings.model_copy(update={"bot": relay_.settings.bot.model_copy(
        update={"status_interval_seconds": 0.2})})
    relay_._last_edit.clear()
    events.publish(RenderEvent(job_id=job, kind="started", scenes=3))  # same text again
    drain(relay_)
    assert len(notifier.statuses) == 1
    run_worker(runtime.settings, runtime.connection, burst=True, logging_level="CRITICAL",
               foreground=True)
    drain(relay_)
    finished = [event for _id, event in events.read("0-0") if event.kind == "finished"]
    events.publish(finished[0])  # a repeated final event posts nothing more
    drain(relay_)
    assert len(notifier.deliveries) == 1
    job_id, delivery = notifier.deliveries[0]
    assert job_id == job and delivery.kind == "finished"
    assert delivery.video is not None and delivery.video.name == "preview.mp4"
    assert "/v/" in delivery.link and delivery.link in delivery.text
    assert notifier.statuses[-1] == ("m0", "Rendered version 1.")
    [videos] = service.message(place(), TEACHER, "videos")
    assert "/v/" in videos.text
    [again] = service.message(place(), TEACHER, "render")  # the thread is free again
    assert again.follows_job


def test_a_relay_restarted_mid_render_posts_the_result_once(runtime, service):
    job = _queued_job(service)
    events = EventLog(runtime.connection)
    first = RecordingNotifier()
    before = relay(runtime, first)
    events.publish(RenderEvent(job_id=job, kind="started", scenes=2))

    async def read_but_die() -> None:  # reads the events, is killed before acknowledging
        await asyncio.to_thread(runtime.connection.xreadgroup, before.group, before.consumer,
                                {before.stream: ">"}, 10)

    asyncio.run(read_but_die())
    run_worker(runtime.settings, runtime.connection, burst=True, logging_level="CRITICAL",
               foreground=True)
    second = RecordingNotifier()
    after = relay(runtime, second)  # the restarted process: same group, same consumer
    drain(after, backlog=True)
    assert [delivery.kind for _job, delivery in second.deliveries] == ["finished"]
    drain(after, backlog=True)
    assert len(second.deliveries) == 1
    assert first.deliveries == []


def test_other_platforms_jobs_are_left_alone(runtime, service):
    job = _queued_job(service)
    notifier = RecordingNotifier()
    relay_ = relay(runtime, notifier, platform="slack")
    EventLog(runtime.connection).publish(RenderEvent(job_id=job, kind="started"))
    EventLog(runtime.connection).publish(RenderEvent(job_id=job, kind="failed", message="x"))
    drain(relay_)
    assert notifier.statuses == [] and notifier.deliveries == []


def test_a_failed_render_says_why(runtime, service):
    job = _queued_job(service)
    notifier = RecordingNotifier()
    relay_ = relay(runtime, notifier)
    EventLog(runtime.connection).publish(RenderEvent(
        job_id=job, kind="failed", message="Scene 2's image is missing; send it again."))
    drain(relay_)
    [(_job, delivery)] = notifier.deliveries
    assert delivery.kind == "failed" and "image is missing" in delivery.text


# -- share links ---------------------------------------------------------------------------


def test_share_links_are_signed_expire_and_serve_only_their_folder(runtime, service):
    secret = runtime.secret
    token = sign(secret, "r-abc", int(time.time()) + 60)
    assert verify(secret, token).folder == "r-abc"
    assert verify(b"another-secret-entirely", token) is None
    assert verify(secret, sign(secret, "r-abc", int(time.time()) - 1)) is None
    other = sign(secret, "r-other", int(time.time()) + 60)
    forged = other.split(".")[0] + "." + token.split(".")[1]  # another folder, old signature
    assert verify(secret, forged) is None
    assert verify(secret, "not a token") is None

    job = _queued_job(service)
    run_worker(runtime.settings, runtime.connection, burst=True, logging_level="CRITICAL",
               foreground=True)
    url = share_url(runtime.settings, secret, job)
    path = url.split("localhost:8080", 1)[1]
    client = TestClient(share_app(runtime.settings, secret))
    page = client.get(path)
    assert page.status_code == 200 and "<video" in page.text and "photosynthesis" in \
        page.text.lower()
    video = client.get(path + "/video.mp4", headers={"Range": "bytes=0-99"})
    assert video.status_code == 206 and len(video.content) == 100
    assert video.content[4:8] == b"ftyp"
    assert client.get(path + "/storyboard.json").status_code == 404  # not a shared file
    assert client.get(path + "/..%2f..%2fshare-secret").status_code == 404
    expired = sign(secret, job, int(time.time()) - 5)
    assert client.get(f"/v/{expired}").status_code == 404


def test_the_share_secret_is_kept_private_or_taken_from_the_environment(settings):
    secret = share_secret(settings, environ={})
    path = settings.data_path / "share-secret"
    assert path.stat().st_mode & 0o077 == 0
    assert share_secret(settings, environ={}) == secret
    assert share_secret(settings, environ={"LESSONREEL_SHARE_SECRET": "s" * 20}) == b"s" * 20
    from engine.errors import SettingsError

    with pytest.raises(SettingsError, match="at least 16"):
        share_secret(settings, environ={"LESSONREEL_SHARE_SECRET": "short"})


# -- the console ---------------------------------------------------------------------------


def test_a_whole_conversation_in_the_console(runtime):
    output = io.StringIO()
    console = Console(file=output, width=120, color_system=None)
    with ConsoleChat(runtime, console) as chat:
        chat.send(REQUEST)
        chat.send("make scene 2 shorter")
        chat.send("preview")
    text = output.getvalue()
    assert "Here is a first draft" in text and "Version 2." in text
    assert "quick preview of version 2 is queued" in text
    assert "Your preview is ready" in text and "/v/" in text
    [delivery] = chat.notifier.deliveries
    assert delivery.video.exists()


def test_two_terminals_at_once_each_see_only_their_own_render(runtime):
    outputs = [io.StringIO(), io.StringIO()]
    chats = [ConsoleChat(runtime, Console(file=out, width=120, color_system=None))
             for out in outputs]
    with chats[0] as first, chats[1] as second:
        first.send("Explain magnets to grade 5 in 10 seconds")
        second.send("Explain fractions to grade 4 in 10 seconds")
        first.send("preview")
        second.send("preview")
    assert len(first.notifier.deliveries) == 1 and len(second.notifier.deliveries) == 1
    assert "Magnet" in outputs[0].getvalue().split("Your preview is ready")[1]
    assert "Fraction" in outputs[1].getvalue().split("Your preview is ready")[1]


def test_a_platform_outage_delays_the_result_but_does_not_lose_it(runtime, service,
                                                                  monkeypatch):
    import bot.relay as relay_module

    monkeypatch.setattr(relay_module, "RETRY_BASE_SECONDS", 0.05)

    class Outage(RecordingNotifier):
        failures = 6  # more than any fixed number of quick retries would cover

        async def deliver(self, route, delivery):
            if self.failures:
                self.failures -= 1
                raise ConnectionError("platform unreachable")
            await super().deliver(route, delivery)

    notifier = Outage()
    relay_ = relay(runtime, notifier)
    first = _queued_job(service)
    events = EventLog(runtime.connection)
    events.publish(RenderEvent(job_id=first, kind="failed", message="first job failed"))
    service.message(place("other"), TEACHER, REQUEST)
    [other] = service.message(place("other"), TEACHER, "preview")
    events.publish(RenderEvent(job_id=other.follows_job, kind="failed", message="second"))

    async def run_until_delivered() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(relay_.run(stop, block_ms=50))
        for _ in range(400):
            if len(notifier.deliveries) == 2:
                break
            await asyncio.sleep(0.025)
        stop.set()
        await task

    asyncio.run(run_until_delivered())
    assert sorted(job for job, _ in notifier.deliveries) == sorted([first, other.follows_job])
    pending = runtime.connection.xpending(relay_.stream, relay_.group)["pending"]
    assert pending == 0


def test_a_relay_recreates_its_group_when_redis_lost_it(runtime, service):
    notifier = RecordingNotifier()
    relay_ = relay(runtime, notifier)
    job = _queued_job(service)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(relay_.run(stop, block_ms=50))
        await asyncio.sleep(0.2)
        await asyncio.to_thread(runtime.connection.xgroup_destroy, relay_.stream, relay_.group)
        EventLog(runtime.connection).publish(RenderEvent(job_id=job, kind="failed",
                                                         message="lost and found"))
        for _ in range(200):
            if notifier.deliveries:
                break
            await asyncio.sleep(0.025)
        stop.set()
        await task

    asyncio.run(scenario())
    assert [d.text for _, d in notifier.deliveries] == [
        "The render of version 1 failed: lost and found"]


def test_waiting_renders_see_their_place_in_line_move_up(runtime, service):
    notifier = RecordingNotifier()
    relay_ = relay(runtime, notifier)
    jobs = []
    for thread in ("a", "b", "c"):
        service.message(place(thread), TEACHER, REQUEST)
        [queued] = service.message(place(thread), TEACHER, "render")
        service.routes.claim_status(queued.follows_job, f"status-{thread}")
        jobs.append(queued.follows_job)
    assert "2 videos ahead of it" in queued.text
    queue = render_queue(runtime.connection, runtime.settings)
    queue.remove(jobs[0])  # a worker took the first job…
    EventLog(runtime.connection).publish(RenderEvent(job_id=jobs[0], kind="started"))
    drain(relay_)
    statuses = dict(notifier.statuses)
    assert statuses["status-b"].startswith("Version 1 is queued: next in line")
    assert statuses["status-c"].startswith("Version 1 is queued: 1 video ahead of it")
    assert statuses["status-a"] == "Rendering version 1: starting…"


def test_a_job_going_in_ahead_on_another_platform_moves_the_others_back(runtime, service):
    notifier = RecordingNotifier()
    relay_ = relay(runtime, notifier)
    jobs = []
    for thread in ("a", "b"):
        service.message(place(thread), TEACHER, REQUEST)
        [queued] = service.message(place(thread), TEACHER, "render")
        service.routes.claim_status(queued.follows_job, f"status-{thread}")
        jobs.append(queued.follows_job)
    drain(relay_)
    other = Place("elsewhere", "C9", "x")
    service.message(other, Author("U2"), REQUEST)
    [theirs] = service.message(other, Author("U2"), "render")
    assert "next in line" in theirs.text or "1 video ahead" in theirs.text
    drain(relay_)  # the other platform's "queued" event reaches this platform's relay too
    statuses = dict(notifier.statuses)
    assert statuses["status-b"].startswith("Version 1 is queued: 2 videos ahead of it")
    assert "status-a" not in statuses  # its place did not change: no needless edit


def test_a_batchs_rows_get_no_status_message_each_but_each_result(runtime, service,
                                                                   monkeypatch):
    notifier = RecordingNotifier()
    relay_ = relay(runtime, notifier)
    csv = b"request\nExplain photosynthesis to grade 7\nWhy the moon has phases\n"
    [summary] = service.batch(place(), TEACHER, csv, "week.csv")
    assert "2 of 2 rows queued" in summary.text
    jobs = render_queue(runtime.connection, runtime.settings).job_ids
    later = time.time() + 3600  # long past the grace in which an adapter posts a status
    monkeypatch.setattr("bot.relay.time.time", lambda: later)
    for job in jobs:
        EventLog(runtime.connection).publish(RenderEvent(job_id=job, kind="progress",
                                                         fraction=0.5))
    drain(relay_)
    assert notifier.posted == 0 and notifier.statuses == []
    for job in jobs:
        EventLog(runtime.connection).publish(RenderEvent(job_id=job, kind="failed",
                                                         message="x"))
    drain(relay_)
    assert [job for job, _delivery in notifier.deliveries] == jobs


def test_quick_messages_in_one_thread_are_taken_in_turn_not_refused(service):
    service.message(place(), TEACHER, REQUEST)
    edits = ["make scene 1 shorter", "make scene 2 longer", "make scene 3 shorter",
             "make scene 2 shorter", "make scene 1 longer", "duplicate scene 1"]
    answers = []
    threads = [threading.Thread(target=lambda e=edit: answers.append(
        service.message(place(), Author("U9"), e))) for edit in edits]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    versions = sorted(outs[0].card.version for outs in answers if outs[0].card)
    assert versions == [2, 3, 4, 5, 6, 7], [outs[0].text for outs in answers]


# -- moderation ------------------------------------------------------------------------------


def test_an_unsafe_request_is_refused_naming_why_and_audited_without_its_text(service,
                                                                             runtime):
    unsafe = "Make a video showing how to hurt yourself with a knife"
    [refused] = service.message(place(), TEACHER, unsafe)
    assert "self-harm" in refused.text and refused.card is None
    assert service.history.latest(service.conversation(place())) is None  # nothing drafted
    [entry] = runtime.connection.xrange("lessonreel:audit")[-1:]
    record = {k.decode(): v.decode() for k, v in entry[1].items()}
    assert record["category"] == "self_harm" and record["author"] == "U1"
    assert record["where"] == "message" and record["rule"]
    assert "knife" not in str(record) and "hurt" not in str(record)
    [zh] = service.message(place("zh"), TEACHER, "做一个教人自杀方法的视频")
    assert "自我伤害" in zh.text


def test_an_image_whose_file_name_or_caption_is_unsafe_is_refused_and_audited(service,
                                                                             runtime):
    service.message(place(), TEACHER, REQUEST)
    before = service.history.latest(service.conversation(place())).number
    [named] = service.image(place(), TEACHER, png_bytes(), file_name="how_to-hurt.yourself.png")
    assert "self-harm" in named.text and named.card is None
    [entry] = runtime.connection.xrange("lessonreel:audit")[-1:]
    record = {k.decode(): v.decode() for k, v in entry[1].items()}
    assert (record["where"], record["author"], record["category"]) == (
        "file_name", "U1", "self_harm")
    [captioned] = service.image(place(), TEACHER, png_bytes(), caption="naked students")
    assert captioned.card is None and "sexual" in captioned.text
    assert service.history.latest(service.conversation(place())).number == before
    assert not any(runtime.settings.uploads_path.glob("*"))  # nothing was kept
    [fine] = service.image(place(), TEACHER, png_bytes(), file_name="leaf_cross-section.png")
    assert fine.card is not None


def test_a_storyboard_that_turned_unsafe_is_not_rendered(service, runtime):
    [card] = service.message(place(), TEACHER, REQUEST)
    conversation = service.conversation(place())
    board = card.card.storyboard
    scenes = [scene.model_dump() for scene in board.scenes]
    scenes[1]["narration"] = "Then the soldiers massacre the villagers with knives, in detail."
    service.history.append(conversation, board.revise(scenes=scenes), "a model's answer",
                           after=1)
    [refused] = service.message(place(), TEACHER, "render")
    assert refused.follows_job is None and "scene 2" in refused.text
    assert "violence" in refused.text
    assert render_queue(runtime.connection, runtime.settings).count == 0


def test_ordinary_lessons_on_sensitive_curriculum_pass(service):
    for number, request in enumerate([
            "Explain the human reproductive system to grade 8 in 45 seconds",
            "The Battle of Hastings for grade 6 in 30 seconds",
            "用30秒给初三学生讲解燃烧反应"]):
        [card] = service.message(place(f"ok{number}"), TEACHER, request)
        assert card.card is not None, card.text


# -- roles and quotas ----------------------------------------------------------------------




def test_students_may_only_watch_and_admins_see_and_cancel_everything(service, runtime):
    with_settings(service, roles={"admins": ["test:A1"], "students": ["test:S1"],
                          "teachers": ["test:U1", "slack-team:T9"]})
    [refused] = service.message(place("s"), Author("S1"), REQUEST)
    assert "watch" in refused.text and refused.card is None
    [also] = service.message(place("s"), Author("S1"), "render")
    assert "watch" in also.text
    [helped] = service.message(place("s"), Author("S1"), "help")
    assert "Commands" in helped.text
    [stranger] = service.message(place("x"), Author("X9"), REQUEST)  # not on any list
    assert "watch" in stranger.text
    [member] = service.message(place("w"), Author("W1", groups=("slack-team:T9",)), REQUEST)
    assert member.card is not None  # a teacher by their workspace
    [card] = service.message(place(), TEACHER, REQUEST)
    _thread, [pressed] = service.action(card.card.buttons[0].token, Author("S1"))
    assert "watch" in pressed.text  # a student pressing a teacher's button
    [queued] = service.message(place(), TEACHER, "render")
    job = queued.follows_job
    [_own, everything] = service.message(place("admin"), Author("A1"), "queue")
    assert job in everything.text and "U1" in everything.text
    [cancelled] = service.message(place("admin"), Author("A1"), f"/cancel {job}")
    assert "Cancelling" in cancelled.text
    assert render_queue(runtime.connection, runtime.settings).count == 0


def test_a_teacher_over_the_active_render_limit_is_told_how_it_frees(service):
    with_settings(service, bot={"max_active_jobs_per_teacher": 2})
    for thread in ("a", "b", "c"):
        service.message(place(thread), TEACHER, REQUEST)
    first = service.message(place("a"), TEACHER, "render")[0]
    second = service.message(place("b"), TEACHER, "render")[0]
    [third] = service.message(place("c"), TEACHER, "render")
    assert first.follows_job and second.follows_job and third.follows_job is None
    assert "already have 2 videos" in third.text and "limit is 2" in third.text
    service.message(place("a"), TEACHER, "cancel")
    [now] = service.message(place("c"), TEACHER, "render")
    assert now.follows_job  # the cancelled one no longer counts


def test_a_teacher_over_the_daily_render_time_is_told_when_it_resets(service, runtime):
    with_settings(service, bot={"render_minutes_per_day": 2})
    notifier = RecordingNotifier()
    relay_ = relay(runtime, notifier)
    service.message(place("a"), TEACHER, REQUEST)
    [queued] = service.message(place("a"), TEACHER, "render")
    events = EventLog(runtime.connection)
    now = time.time()
    # A failed render costs nothing …
    events.publish(RenderEvent(job_id=queued.follows_job, kind="started", at=now - 500))
    events.publish(RenderEvent(job_id=queued.follows_job, kind="failed", message="x", at=now))
    drain(relay_)
    [again] = service.message(place("a"), TEACHER, "render")
    assert again.follows_job
    # … a successful one of 150 s uses the 2 minutes up.
    events.publish(RenderEvent(job_id=again.follows_job, kind="started", at=now - 150))
    events.publish(RenderEvent(job_id=again.follows_job, kind="finished", at=now))
    drain(relay_)
    [refused] = service.message(place("a"), TEACHER, "render")
    assert refused.follows_job is None
    assert "used 2 of your 2 render minutes" in refused.text and "resets at 00:00" in \
        refused.text
    [preview] = service.message(place("a"), TEACHER, "preview")
    assert preview.follows_job  # previews run on the CPU and stay free
    [other] = service.message(place("b"), Author("U2"), REQUEST)
    assert other.card is not None
    [theirs] = service.message(place("b"), Author("U2"), "render")
    assert theirs.follows_job  # another teacher's quota is their own


# -- the library -----------------------------------------------------------------------------


def test_a_teacher_makes_and_revokes_links_and_remixes_a_past_video(service, runtime):
    job = _queued_job(service)
    notifier = RecordingNotifier()
    relay_ = relay(runtime, notifier)
    run_worker(runtime.settings, runtime.connection, burst=True, logging_level="CRITICAL",
               foreground=True)
    drain(relay_)
    [videos] = service.message(place(), TEACHER, "videos")
    assert job in videos.text
    [link] = service.message(place(), TEACHER, f"link {job}")
    url = link.text.rsplit(" ", 1)[1]
    client = TestClient(share_app(runtime.settings, runtime.secret))
    path = "/v/" + url.split("/v/", 1)[1]
    assert client.get(path).status_code == 200
    [revoked] = service.message(place(), TEACHER, f"revoke {url}")
    assert "no longer opens" in revoked.text
    assert client.get(path).status_code in (403, 404)
    [again] = service.message(place(), TEACHER, f"revoke {url}")
    assert "already" in again.text
    # Someone else's video: neither links nor remixes.
    [theirs] = service.message(place("x"), Author("U7"), f"/link {job}")
    assert "not one of your videos" in theirs.text
    [remix] = service.message(place("new"), TEACHER, f"remix {job}")
    assert remix.card is not None and remix.card.version == 1
    assert f"({job})" in remix.text and "photosynthesis" in remix.card.heading.lower()
    [edited] = service.message(place("new"), TEACHER, "make scene 2 shorter")
    assert edited.card.version == 2  # the remix is a storyboard of its own, to edit


def test_an_admin_changes_roles_in_chat_and_the_settings_admins_stay(service):
    with_settings(service, roles={"admins": ("slack:UA", "slack-team:TSTAFF")})

    def slack(thread: str = "t") -> Place:
        return Place("slack", "C1", thread)

    admin, someone = Author("UA", "Admin"), Author("U5", "Mr Li")
    [refused] = service.message(slack("r"), TEACHER, "role student slack:U5")
    assert "Only admins" in refused.text
    [made] = service.message(slack("r"), admin, "role student slack:U5")
    assert made.text == "slack:U5 is now a student."
    [watch] = service.message(slack("s"), someone, REQUEST)
    assert watch.card is None and "made by teachers" in watch.text
    [listed] = service.message(slack("r"), admin, "/role")
    assert "• slack:U5: a student" in listed.text
    [mention] = service.message(slack("r"), admin, "role teacher <@U5>")  # Slack's mention
    assert mention.text == "slack:U5 is now a teacher."
    # Admins are the settings' alone: the chat neither makes nor unmakes one.
    [no_admin] = service.message(slack("r"), admin, "role admin slack:U5")
    assert "settings file" in no_admin.text and service.role_of(slack(), someone) == "teacher"
    [untouchable] = service.message(slack("r"), admin, "角色 学生 slack:UA")
    assert "设置文件" in untouchable.text and service.role_of(slack(), admin) == "admin"
    staff = Author("U8", "Ms Ortiz", ("slack-team:TSTAFF",))  # an admin by her workspace
    service.message(slack("r"), admin, "role student slack:U8")
    assert service.role_of(slack(), staff) == "admin"
    [back] = service.message(slack("r"), admin, "role remove slack:U5")
    assert "settings give again" in back.text
    [card] = service.message(slack("s2"), someone, REQUEST)
    assert card.card is not None  # a teacher, as the settings say
    [usage] = service.message(slack("r"), admin, "/role boss slack:U5")
    assert "role teacher slack:U123" in usage.text
    # On Telegram "@name" is not an id: the usage, not a role for "telegram:alice".
    with_settings(service, roles={"admins": ("telegram:1",)})
    [telegram] = service.message(Place("telegram", "1", ""), Author("1"), "/role student @alice")
    assert "role teacher slack:U123" in telegram.text
