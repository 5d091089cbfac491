"""The video library: recorded by the real worker on a real Redis, read in chat."""

from __future__ import annotations

import time

import pytest
from starlette.testclient import TestClient

from bot.core import Author, Place
from bot.web import share_app
from engine.jobs import RenderSpec, enqueue_render, new_job_id
from engine.library import Library, VideoRecord, link_to
from engine.share import share_url, token_of, verify
from tests.conftest import make_storyboard
from worker.encode import probe
from worker.runner import run_worker

REQUEST = "Explain photosynthesis to grade 7 in 30 seconds"
TEACHER = Author("U1", "Ms Chen")


def test_a_render_is_recorded_with_whose_what_and_which_files(settings, redis_connection):
    job_id = new_job_id()
    spec = RenderSpec(job_id=job_id, conversation="slack:C1:1.2#1", version=3,
                      owner="slack:U1", storyboard=make_storyboard((2, 3)), output=job_id)
    enqueue_render(redis_connection, settings, spec)
    assert run_worker(settings, redis_connection, burst=True, logging_level="CRITICAL")
    [video] = Library(redis_connection).of_owner("slack:U1")
    assert (video.video, video.owner, video.conversation, video.version) == (
        job_id, "slack:U1", "slack:C1:1.2#1", 3)
    assert video.preset == "animatic"
    assert video.seconds == pytest.approx(probe(settings.media_path / job_id / "video.mp4")
                                          .seconds, abs=0.1)
    assert {"video.mp4", "captions.srt", "captions.vtt", "poster.jpg"} <= set(video.files)
    for name in video.files:  # the files it lists are there
        assert (settings.media_path / job_id / name).is_file()


def test_a_render_that_runs_twice_leaves_one_library_entry(settings, redis_connection):
    job_id = new_job_id()
    spec = RenderSpec(job_id=job_id, conversation="test:1", version=1, owner="slack:U1",
                      storyboard=make_storyboard((2,)), output=job_id)
    for _ in range(2):  # as when a job is run again after its worker died
        enqueue_render(redis_connection, settings, spec)
        assert run_worker(settings, redis_connection, burst=True, logging_level="CRITICAL")
    library = Library(redis_connection)
    assert [video.video for video in library.of_owner("slack:U1")] == [job_id]
    assert [video.video for video in library.recent()] == [job_id]


def test_videos_shows_a_link_that_still_opens_and_makes_no_new_one_each_time(runtime):
    settings, library = runtime.settings, Library(runtime.connection)
    library.record(VideoRecord(video="r-aaaaaaaaaaaa", owner="test:U1", title="Leaves",
                               seconds=30))
    (settings.media_path / "r-aaaaaaaaaaaa").mkdir(parents=True)
    (settings.media_path / "r-aaaaaaaaaaaa" / "video.mp4").write_bytes(b"\0" * 64)
    service, place = runtime.service, Place("test", "C1", "t1")
    [first] = service.message(place, TEACHER, "videos")
    [second] = service.message(place, TEACHER, "videos")
    assert "Leaves (30 s" in first.text
    url = first.text.rsplit(" ", 1)[1]
    assert second.text == first.text and len(library.links("r-aaaaaaaaaaaa")) == 1
    # "link" always makes a new one; a revoked link is never handed out again.
    [fresh] = service.message(place, TEACHER, "link r-aaaaaaaaaaaa")
    fresh_url = fresh.text.rsplit(" ", 1)[1]
    assert fresh_url != url and len(library.links("r-aaaaaaaaaaaa")) == 2
    service.message(place, TEACHER, f"revoke {fresh_url}")
    [listed] = service.message(place, TEACHER, "videos")
    assert listed.text.rsplit(" ", 1)[1] == url
    client = TestClient(share_app(settings, runtime.secret))
    assert client.get("/v/" + token_of(url)).status_code == 200


def test_a_link_about_to_expire_is_not_handed_out_again(runtime):
    settings, library = runtime.settings, Library(runtime.connection)
    hour = share_url(settings, runtime.secret, "r-bbbbbbbbbbbb", expires_in=3600)
    library.add_link("r-bbbbbbbbbbbb", hour, verify(runtime.secret, token_of(hour)).expires_at)
    handed = link_to(library, settings, runtime.secret, "r-bbbbbbbbbbbb")
    assert handed != hour  # an hour left is too little to pass on to students
    assert verify(runtime.secret, token_of(handed)).expires_at - time.time() > 6 * 86_400
    assert link_to(library, settings, runtime.secret, "r-bbbbbbbbbbbb") == handed


def test_only_the_owner_or_an_admin_may_link_a_video(runtime):
    library = Library(runtime.connection)
    library.record(VideoRecord(video="r-cccccccccccc", owner="test:U1", title="Tides"))
    service = runtime.service
    [stranger] = service.message(Place("test", "C2", "x"), Author("U7"), "link r-cccccccccccc")
    assert "not one of your videos" in stranger.text
    service.settings = service.settings.model_copy(update={"roles": service.settings.roles
                                                           .model_copy(update={
                                                               "admins": ("test:U9",)})})
    [admin] = service.message(Place("test", "C2", "x"), Author("U9"), "link r-cccccccccccc")
    assert "/v/" in admin.text and "Tides" in admin.text


def test_a_link_on_an_old_public_address_is_not_handed_out_again(runtime):
    settings, library = runtime.settings, Library(runtime.connection)
    old = link_to(library, settings, runtime.secret, "r-dddddddddddd")
    assert old.startswith("http://localhost:8080/v/")
    moved = settings.model_copy(update={"public_url": "https://video.school.example"})
    new = link_to(library, moved, runtime.secret, "r-dddddddddddd")
    assert new.startswith("https://video.school.example/v/")
    assert link_to(library, moved, runtime.secret, "r-dddddddddddd") == new

