"""The fake Slack answers the real slack_sdk clients, and signed_post signs as Slack does.

Each test drives the real WebClient / AsyncWebClient (or a real Bolt app) over HTTP against
FakeSlack on 127.0.0.1; nothing leaves the machine.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
import urllib.request

import pytest
from slack_bolt import App
from slack_bolt.adapter.starlette import SlackRequestHandler
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from tests.fake_slack import (
    FORM,
    UPLOAD,
    BackgroundServer,
    FakeSlack,
    block_actions_payload,
    event_callback,
    message_event,
    signed_post,
    slash_command_form,
    view_submission_payload,
)

TOKEN = "xoxb-test"
SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
TS_PATTERN = re.compile(r"^\d{10}\.\d{6}$")
# Every byte value, CRLFs and a multipart-looking line: an upload must come back unchanged.
VIDEO_BYTES = bytes(range(256)) * 4 + b"\r\n--boundary\r\n\r\n\x00" + b"\xff" * 100


@pytest.fixture(scope="module")
def slack():
    with FakeSlack() as fake:
        yield fake


@pytest.fixture
def client(slack: FakeSlack) -> WebClient:
    return WebClient(token=TOKEN, base_url=slack.base_url, timeout=5)


SECTION = [{"type": "section", "text": {"type": "mrkdwn", "text": "*Photosynthesis*"}}]


def test_post_message_returns_increasing_ts_and_is_recorded(slack, client):
    first = client.chat_postMessage(channel="C-post", text="Drafting your video", blocks=SECTION)
    second = client.chat_postMessage(channel="C-post", text="reply", thread_ts=first["ts"])

    assert first["ok"] and first["channel"] == "C-post"
    assert TS_PATTERN.match(first["ts"]) and TS_PATTERN.match(second["ts"])
    assert float(second["ts"]) > float(first["ts"])
    assert first["message"]["text"] == "Drafting your video"

    stored = slack.messages[("C-post", first["ts"])]
    assert stored["text"] == "Drafting your video"
    assert stored["blocks"] == SECTION  # JSON body: blocks arrive as a list
    assert [m["text"] for m in slack.messages_in("C-post", thread_ts=first["ts"])] == ["reply"]

    call = slack.calls_to("chat.postMessage")[-1]
    assert call.token == TOKEN  # from the Authorization: Bearer header
    assert call.args["thread_ts"] == first["ts"]


def test_update_changes_the_message_and_unknown_ts_is_not_found(slack, client):
    posted = client.chat_postMessage(channel="C-upd", text="Rendering 10%", blocks=SECTION)
    done = [{"type": "section", "text": {"type": "mrkdwn", "text": "Done"}}]

    updated = client.chat_update(channel="C-upd", ts=posted["ts"], text="Ready", blocks=done)

    assert updated["ts"] == posted["ts"]
    message = slack.messages[("C-upd", posted["ts"])]
    assert (message["text"], message["blocks"]) == ("Ready", done)
    client.chat_update(channel="C-upd", ts=posted["ts"], text="Ready!")  # blocks not sent: kept
    assert slack.messages[("C-upd", posted["ts"])]["blocks"] == done

    with pytest.raises(SlackApiError) as raised:
        client.chat_update(channel="C-upd", ts="1.000000", text="nope")
    assert raised.value.response["error"] == "message_not_found"


def test_form_encoded_json_fields_and_token_in_body_are_decoded(slack):
    anonymous = WebClient(base_url=slack.base_url, timeout=5)
    response = anonymous.api_call("chat.postMessage", params={
        "token": "xoxb-form", "channel": "C-form", "text": "hi", "blocks": json.dumps(SECTION),
    })

    call = slack.calls_to("chat.postMessage")[-1]
    assert call.token == "xoxb-form" and "token" not in call.args
    assert call.args["blocks"] == SECTION
    assert slack.messages[("C-form", response["ts"])]["blocks"] == SECTION


def test_ephemeral_delete_reaction_views_users_and_channels(slack, client):
    eph = client.chat_postEphemeral(channel="C-misc", user="U7", text="Only you")
    assert slack.ephemerals[-1]["text"] == "Only you" and eph["message_ts"]

    posted = client.chat_postMessage(channel="C-misc", text="to delete")
    client.reactions_add(channel="C-misc", timestamp=posted["ts"], name="eyes")
    assert {"channel": "C-misc", "timestamp": posted["ts"], "name": "eyes"} in slack.reactions
    client.chat_delete(channel="C-misc", ts=posted["ts"])
    assert ("C-misc", posted["ts"]) not in slack.messages

    view = {"type": "modal", "callback_id": "edit", "title": {"type": "plain_text", "text": "E"},
            "blocks": []}
    opened = client.views_open(trigger_id="123.456.abc", view=view)
    view_id = opened["view"]["id"]
    client.views_update(view_id=view_id, view={**view, "callback_id": "edit2"})
    assert slack.views[view_id]["callback_id"] == "edit2"

    slack.add_user("U7", real_name="Ada Teacher", locale="es-ES")
    with_locale = client.users_info(user="U7", include_locale=True)["user"]
    assert (with_locale["real_name"], with_locale["locale"]) == ("Ada Teacher", "es-ES")
    assert "locale" not in client.users_info(user="U7")["user"]
    assert client.users_info(user="U8")["user"]["profile"]["real_name"]
    assert client.conversations_info(channel="D123")["channel"]["is_im"] is True


def test_files_upload_v2_lands_with_exact_bytes(slack, client, tmp_path):
    parent = client.chat_postMessage(channel="C-up", text="Your preview")
    response = client.files_upload_v2(
        channel="C-up", thread_ts=parent["ts"], file=VIDEO_BYTES, filename="preview.mp4",
        initial_comment="Here is the preview",
    )
    path = tmp_path / "final.mp4"
    path.write_bytes(VIDEO_BYTES[::-1])
    client.files_upload_v2(channel="C-up", file=str(path), title="Final cut")

    first, second = slack.uploads[-2:]
    assert first["bytes"] == VIDEO_BYTES
    assert first["filename"] == "preview.mp4" and first["title"] == "preview.mp4"
    assert (first["channel_id"], first["thread_ts"]) == ("C-up", parent["ts"])
    assert first["initial_comment"] == "Here is the preview"
    assert response["file"]["id"] == first["file_id"]
    assert (second["bytes"], second["filename"], second["title"]) == (
        VIDEO_BYTES[::-1], "final.mp4", "Final cut")
    assert second["thread_ts"] is None
    # The three steps, in order, as slack_sdk performs them.
    methods = [c.method for c in slack.calls[-3:]]
    assert methods == ["files.getUploadURLExternal", UPLOAD, "files.completeUploadExternal"]


def test_upload_url_accepts_multipart_like_curl_dash_f(slack, client):
    step1 = client.files_getUploadURLExternal(filename="clip.mp4", length=len(VIDEO_BYTES))
    boundary = "----lessonreel-test"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="clip.mp4"'
            f"\r\nContent-Type: video/mp4\r\n\r\n").encode() + VIDEO_BYTES + (
            f"\r\n--{boundary}--\r\n").encode()
    request = urllib.request.Request(
        step1["upload_url"], data=body, method="POST",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert answer.status == 200
    client.files_completeUploadExternal(files=[{"id": step1["file_id"]}], channel_id="C-mp")

    assert slack.uploads[-1]["bytes"] == VIDEO_BYTES
    assert slack.uploads[-1]["channel_id"] == "C-mp"


def test_injected_429_surfaces_as_rate_limit_error(slack, client):
    posted = client.chat_postMessage(channel="C-429", text="v1")
    slack.fail_next("chat.update", retry_after=7)

    with pytest.raises(SlackApiError) as raised:
        client.chat_update(channel="C-429", ts=posted["ts"], text="v2")

    assert raised.value.response.status_code == 429
    assert raised.value.response["error"] == "ratelimited"
    assert raised.value.response.headers["Retry-After"] == "7"
    assert slack.messages[("C-429", posted["ts"])]["text"] == "v1"
    client.chat_update(channel="C-429", ts=posted["ts"], text="v2")  # only the next one failed
    assert slack.messages[("C-429", posted["ts"])]["text"] == "v2"


def test_injected_429_is_retried_by_the_rate_limit_handler(slack):
    retrying = WebClient(token=TOKEN, base_url=slack.base_url, timeout=5,
                         retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=1)])
    posted = retrying.chat_postMessage(channel="C-retry", text="v1")
    slack.fail_next("chat.update", retry_after=0)  # the handler sleeps 0 + random() seconds

    retrying.chat_update(channel="C-retry", ts=posted["ts"], text="v2")

    assert slack.messages[("C-retry", posted["ts"])]["text"] == "v2"
    statuses = [c.status for c in slack.calls_to("chat.update") if c.args["channel"] == "C-retry"]
    assert statuses == [429, 200]


def test_fail_next_with_status_200_is_an_api_error(slack, client):
    slack.fail_next("chat.postMessage", error="channel_not_found", status=200)
    with pytest.raises(SlackApiError) as raised:
        client.chat_postMessage(channel="C-gone", text="hi")
    assert raised.value.response.status_code == 200
    assert raised.value.response["error"] == "channel_not_found"
    assert not any(chan == "C-gone" for chan, _ in slack.messages)


def test_unknown_method_and_missing_token(slack, client):
    with pytest.raises(SlackApiError) as unknown:
        client.api_call("lessons.make")
    assert unknown.value.response["error"] == "unknown_method"
    with pytest.raises(SlackApiError) as anonymous:
        WebClient(base_url=slack.base_url, timeout=5).auth_test()
    assert anonymous.value.response["error"] == "not_authed"
    assert client.auth_test()["user_id"] == "UBOT"


def test_async_client_posts_updates_uploads_and_retries(slack):
    async def scenario():
        client = AsyncWebClient(token=TOKEN, base_url=slack.base_url, timeout=5,
                                retry_handlers=[AsyncRateLimitErrorRetryHandler(1)])
        auth = await client.auth_test()
        posted = await client.chat_postMessage(channel="C-async", text="a1", blocks=SECTION)
        slack.fail_next("chat.update", retry_after=0)
        await client.chat_update(channel="C-async", ts=posted["ts"], text="a2")
        slack.add_user("U9", locale="fr-FR")
        user = await client.users_info(user="U9", include_locale=True)  # sent as a query string
        await client.files_upload_v2(channel="C-async", thread_ts=posted["ts"],
                                     content=VIDEO_BYTES, filename="preview.mp4")
        return auth, posted, user

    auth, posted, user = asyncio.run(scenario())

    assert auth["team_id"] == "T1"
    message = slack.messages[("C-async", posted["ts"])]
    assert (message["text"], message["blocks"]) == ("a2", SECTION)
    assert user["user"]["locale"] == "fr-FR"
    upload = slack.uploads[-1]
    assert (upload["bytes"], upload["thread_ts"]) == (VIDEO_BYTES, posted["ts"])
    assert [c.status for c in slack.calls_to("chat.update")
            if c.args.get("channel") == "C-async"] == [429, 200]


def test_wait_for_returns_the_value_or_lists_the_calls(slack, client):
    client.chat_postMessage(channel="C-wait", text="hello")
    found = slack.wait_for(lambda s: s.messages_in("C-wait"), timeout=1)
    assert found[0]["text"] == "hello"

    with pytest.raises(AssertionError, match=r"(?s)timed out.*chat\.postMessage.*C-wait"):
        slack.wait_for(lambda s: s.messages_in("C-never"), timeout=0.2)


def test_stop_is_quick_even_with_an_idle_connection_open():
    fake = FakeSlack().start()
    WebClient(token=TOKEN, base_url=fake.base_url, timeout=5).auth_test()
    idle = socket.create_connection(("127.0.0.1", fake.port))  # connected, never sends
    try:
        started = time.monotonic()
        fake.stop()
        assert time.monotonic() - started < 2.5
        assert idle.recv(1) == b""  # the server closed it
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", fake.port)) != 0  # nobody listens any more
    finally:
        idle.close()


# ------------------------------------------------------------------ Slack -> the app


def test_signed_post_signature_validates_with_slack_sdk():
    received: list[tuple[bytes, dict[str, str]]] = []

    async def receive(request: Request):
        received.append((await request.body(), dict(request.headers)))
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/slack/events", receive, methods=["POST"])])
    with BackgroundServer(app) as server:
        url = f"{server.url}/slack/events"
        assert signed_post(url, event_callback({"type": "app_mention"}, "Ev1"), SECRET).text == "ok"
        signed_post(url, {"payload": block_actions_payload("approve", "p1")}, SECRET,
                    content_type=FORM)
        signed_post(url, slash_command_form("/lesson", "fractions, grade 5"), SECRET,
                    content_type=FORM, timestamp=int(time.time()) - 30)

    verifier = SignatureVerifier(SECRET)
    assert len(received) == 3
    for body, headers in received:
        assert verifier.is_valid_request(body, headers), headers
        assert not SignatureVerifier("other-secret").is_valid_request(body, headers)
    assert json.loads(received[0][0])["event_id"] == "Ev1"
    assert received[1][1]["content-type"] == FORM


def test_bolt_app_accepts_the_payload_builders(slack):
    client = WebClient(token=TOKEN, base_url=slack.base_url, timeout=5)
    bolt = App(signing_secret=SECRET, client=client)  # checks the token with auth.test
    submitted: list[dict] = []

    @bolt.event("app_mention")
    def mention(event, say):
        say(text=f"Making: {event['text']}", thread_ts=event["ts"])

    @bolt.command("/lesson")
    def lesson(ack, command, respond):
        ack()
        respond(text=f"Queued {command['text']}")

    @bolt.action("approve")
    def approve(ack, body, client):
        ack()
        client.chat_update(channel=body["channel"]["id"], ts=body["message"]["ts"],
                           text=f"Approved {body['actions'][0]['value']}")

    @bolt.view("edit")
    def edit(ack, view):
        submitted.append(view["state"]["values"])  # before ack: the HTTP answer waits for ack
        ack()

    handler = SlackRequestHandler(bolt)

    async def endpoint(request: Request):
        return await handler.handle(request)

    app = Starlette(routes=[Route("/slack/events", endpoint, methods=["POST"])])
    with BackgroundServer(app) as server:
        url = f"{server.url}/slack/events"
        user_ts = slack.next_ts()
        mention_event = {**message_event("<@UBOT> photosynthesis", channel="C-bolt", ts=user_ts),
                         "type": "app_mention"}
        assert signed_post(url, event_callback(mention_event, "Ev42"), SECRET).status == 200
        reply = slack.wait_for(lambda s: s.messages_in("C-bolt", thread_ts=user_ts))
        assert reply[0]["text"] == "Making: <@UBOT> photosynthesis"

        bad = signed_post(url, event_callback(mention_event, "Ev43"), "wrong-secret")
        stale = signed_post(url, event_callback(mention_event, "Ev44"), SECRET,
                            timestamp=int(time.time()) - 600)
        assert (bad.status, stale.status) == (401, 401)

        form = slash_command_form("/lesson", "fractions", "U1", "C-bolt",
                                  response_url=slack.new_response_url())
        assert signed_post(url, form, SECRET, content_type=FORM).status == 200
        responded = slack.wait_for(lambda s: s.calls_to("response_url"))
        assert responded[0].args["text"] == "Queued fractions"

        card = client.chat_postMessage(channel="C-bolt", text="Approve the storyboard?")
        payload = block_actions_payload("approve", "plan-7", channel_id="C-bolt",
                                        message_ts=card["ts"])
        assert signed_post(url, {"payload": payload}, SECRET, content_type=FORM).status == 200
        slack.wait_for(lambda s: s.messages[("C-bolt", card["ts"])]["text"] == "Approved plan-7")

        submission = view_submission_payload("edit", {"scene": {"narration": "New words"}})
        posted = signed_post(url, {"payload": submission}, SECRET, content_type=FORM)
        assert posted.status == 200
        assert submitted == [{"scene": {"narration": {"type": "plain_text_input",
                                                      "value": "New words"}}}]
    # The requests Bolt rejected (bad signature, stale timestamp) made no second reply.
    assert len(slack.messages_in("C-bolt", thread_ts=user_ts)) == 1
