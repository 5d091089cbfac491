"""Fair turns on the render queue, on a real Redis, dequeued the way RQ's workers dequeue."""

from __future__ import annotations

import threading

import pytest
from rq.job import Job
from rq.serializers import JSONSerializer

from bot.core import Author, Place
from engine.jobs import RenderSpec, enqueue_render, new_job_id, render_queue
from tests.conftest import make_storyboard


def _enqueue(connection, settings, owner: str, priority: str = "normal") -> str:
    job_id = new_job_id()
    enqueue_render(connection, settings, RenderSpec(
        job_id=job_id, conversation=f"test:{job_id}", version=1, owner=owner,
        storyboard=make_storyboard((2,)), output=job_id), priority=priority)
    return job_id


def _owners_in_worker_order(connection, settings, count: int | None = None) -> list[str]:
    """Take jobs off the queue as a worker does (RQ's dequeue_any), and say whose they were."""
    queue = render_queue(connection, settings)
    owners = []
    while count is None or len(owners) < count:
        taken = type(queue).dequeue_any([queue], None, connection=connection,
                                        serializer=JSONSerializer)
        if taken is None:
            break
        job, _queue = taken
        owners.append(job.args[0]["owner"])
    return owners


def test_one_teachers_batch_of_twenty_does_not_starve_anothers_single_video(
        settings, redis_connection):
    for _ in range(20):
        _enqueue(redis_connection, settings, "slack:A")
    single = _enqueue(redis_connection, settings, "slack:B")
    assert render_queue(redis_connection, settings).job_ids.index(single) == 1
    order = _owners_in_worker_order(redis_connection, settings)
    assert order.index("slack:B") == 1 and order.count("slack:A") == 20


def test_two_teachers_jobs_interleave(settings, redis_connection):
    for _ in range(3):
        _enqueue(redis_connection, settings, "slack:A")
    for _ in range(3):
        _enqueue(redis_connection, settings, "telegram:B")
    assert _owners_in_worker_order(redis_connection, settings) == [
        "slack:A", "telegram:B"] * 3


def test_a_teacher_arriving_mid_batch_waits_for_one_job_of_it_at_most(
        settings, redis_connection):
    for _ in range(10):
        _enqueue(redis_connection, settings, "slack:A")
    assert _owners_in_worker_order(redis_connection, settings, 5) == ["slack:A"] * 5
    _enqueue(redis_connection, settings, "slack:B")
    _enqueue(redis_connection, settings, "slack:B")
    assert _owners_in_worker_order(redis_connection, settings) == [
        "slack:A", "slack:B", "slack:A", "slack:B", "slack:A", "slack:A", "slack:A"]


def test_a_teacher_alone_keeps_first_come_first_served_and_comes_back_to_an_empty_line(
        settings, redis_connection):
    ids = [_enqueue(redis_connection, settings, "slack:A") for _ in range(4)]
    assert render_queue(redis_connection, settings).job_ids == ids
    assert len(_owners_in_worker_order(redis_connection, settings)) == 4
    # Yesterday's batch gives no one a head start or a penalty today.
    later = [_enqueue(redis_connection, settings, owner) for owner in ("slack:C", "slack:A")]
    assert render_queue(redis_connection, settings).job_ids == later


def test_jobs_enqueued_at_once_from_many_bots_are_all_queued_once(settings, redis_connection):
    made: list[str] = []
    lock = threading.Lock()

    def bot(owner: str) -> None:
        for _ in range(10):
            job_id = _enqueue(redis_connection, settings, owner)
            with lock:
                made.append(job_id)

    threads = [threading.Thread(target=bot, args=(f"slack:{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    queued = render_queue(redis_connection, settings).job_ids
    assert sorted(queued) == sorted(made) and len(set(queued)) == 40
    # Each owner's own jobs keep the order they were made in.
    for n in range(4):
        jobs = [Job.fetch(job_id, connection=redis_connection, serializer=JSONSerializer)
                for job_id in queued]
        theirs = [job.id for job in jobs if job.args[0]["owner"] == f"slack:{n}"]
        assert theirs == [job_id for job_id in made if job_id in set(theirs)]


def test_a_teacher_is_told_their_fair_place_in_line(runtime):
    service = runtime.service
    busy, newcomer = Author("U1", "Ms Chen"), Author("U2", "Mr Okafor")
    request = "Explain photosynthesis to grade 7 in 30 seconds"
    for thread in ("a", "b", "c"):
        service.message(Place("test", "C1", thread), busy, request)
        [queued] = service.message(Place("test", "C1", thread), busy, "render")
        assert queued.follows_job
    service.message(Place("test", "C1", "d"), newcomer, request)
    [theirs] = service.message(Place("test", "C1", "d"), newcomer, "render")
    assert "1 video ahead" in theirs.text, theirs.text
    assert render_queue(runtime.connection, runtime.settings).job_ids.index(
        theirs.follows_job) == 1


# -- priorities ------------------------------------------------------------------------------


def test_a_high_row_of_a_batch_runs_before_the_teachers_normal_rows_but_not_before_the_head(
        settings, redis_connection):
    head = _enqueue(redis_connection, settings, "slack:B")  # another teacher's, first in line
    normal = [_enqueue(redis_connection, settings, "slack:A") for _ in range(3)]
    urgent = _enqueue(redis_connection, settings, "slack:A", "high")
    assert render_queue(redis_connection, settings).job_ids == [head, urgent, *normal]


def test_a_high_job_waits_behind_the_head_even_when_the_head_is_the_teachers_own(
        settings, redis_connection):
    mine = [_enqueue(redis_connection, settings, "slack:A") for _ in range(3)]
    urgent = _enqueue(redis_connection, settings, "slack:A", "high")
    assert render_queue(redis_connection, settings).job_ids == [mine[0], urgent, *mine[1:]]


def test_marking_every_job_high_takes_no_turn_from_another_teacher(settings, redis_connection):
    for _ in range(5):
        _enqueue(redis_connection, settings, "slack:A", "high")
    _enqueue(redis_connection, settings, "slack:B")
    _enqueue(redis_connection, settings, "slack:B")
    assert _owners_in_worker_order(redis_connection, settings) == [
        "slack:A", "slack:B", "slack:A", "slack:B", "slack:A", "slack:A", "slack:A"]


def test_high_rows_first_then_normal_rows_give_a_teacher_one_turn_at_a_time(
        settings, redis_connection):
    """A batch enqueues its high rows first: they do not open a second lane beside its
    normal rows, so another teacher still gets every other turn."""
    for priority in ("high", "high", "normal", "normal"):
        _enqueue(redis_connection, settings, "slack:A", priority)
    for _ in range(4):
        _enqueue(redis_connection, settings, "slack:B")
    assert _owners_in_worker_order(redis_connection, settings) == ["slack:A", "slack:B"] * 4


def test_low_jobs_run_last_even_behind_normal_jobs_that_arrive_later(settings, redis_connection):
    first = _enqueue(redis_connection, settings, "slack:C")
    background = [_enqueue(redis_connection, settings, "slack:A", "low") for _ in range(2)]
    b_normal, a_normal = (_enqueue(redis_connection, settings, owner)
                          for owner in ("slack:B", "slack:A"))
    urgent = _enqueue(redis_connection, settings, "slack:B", "high")
    # B's high job takes B's turn, and B's normal job moves on to B's next: after A's.
    assert render_queue(redis_connection, settings).job_ids == [
        first, urgent, a_normal, b_normal, *background]


def test_a_high_job_goes_before_the_teachers_normal_jobs_not_before_another_teachers(
        settings, redis_connection):
    """The reviewer's case: A's high jobs after both teachers' normal ones open no second
    lane; B's jobs keep their places in A's turns."""
    a_normal = [_enqueue(redis_connection, settings, "slack:A") for _ in range(5)]
    b_normal = [_enqueue(redis_connection, settings, "slack:B") for _ in range(5)]
    a_high = [_enqueue(redis_connection, settings, "slack:A", "high") for _ in range(5)]
    queued = render_queue(redis_connection, settings).job_ids
    assert queued == [a_normal[0], b_normal[0], a_high[0], b_normal[1], a_high[1], b_normal[2],
                      a_high[2], b_normal[3], a_high[3], b_normal[4], a_high[4], *a_normal[1:]]
    assert _owners_in_worker_order(redis_connection, settings, 10) == [
        "slack:A", "slack:B"] * 5


def test_a_later_high_job_goes_behind_the_teachers_earlier_high_ones_and_before_their_normal_ones(
        settings, redis_connection):
    b_normal = [_enqueue(redis_connection, settings, "slack:B") for _ in range(3)]
    a_jobs = [_enqueue(redis_connection, settings, "slack:A", priority)
              for priority in ("high", "high", "normal", "normal", "high")]
    queued = render_queue(redis_connection, settings).job_ids
    assert queued == [b_normal[0], a_jobs[0], b_normal[1], a_jobs[1], b_normal[2], a_jobs[4],
                      a_jobs[2], a_jobs[3]]


def test_three_teachers_mixing_priorities_each_get_an_even_share_of_every_stretch_of_turns(
        settings, redis_connection):
    plan = [("slack:A", "normal"), ("slack:B", "normal"), ("slack:C", "high"),
            ("slack:A", "high"), ("slack:B", "high"), ("slack:A", "normal"),
            ("slack:C", "normal"), ("slack:B", "high"), ("slack:C", "normal"),
            ("slack:A", "high"), ("slack:B", "normal"), ("slack:C", "high"),
            ("slack:A", "normal"), ("slack:B", "high"), ("slack:C", "normal"),
            ("slack:A", "high")]
    priority_of = {_enqueue(redis_connection, settings, owner, priority): priority
                   for owner, priority in plan}
    queue = render_queue(redis_connection, settings)
    order = queue.job_ids
    owners = _owners_in_worker_order(redis_connection, settings)
    each = min(owners.count(owner) for owner in ("slack:A", "slack:B", "slack:C"))
    for taken in range(1, 3 * each + 1):
        shares = [owners[:taken].count(owner) for owner in ("slack:A", "slack:B", "slack:C")]
        assert max(shares) - min(shares) <= 1, (taken, owners)
    # Within each teacher's jobs, high ones come first, after the head of the line.
    for owner in ("slack:A", "slack:B", "slack:C"):
        theirs = [priority_of[job_id] for job_id, who in zip(order, owners, strict=True)
                  if who == owner and job_id != order[0]]
        assert theirs == sorted(theirs, key=["high", "normal"].index), (owner, theirs)


def test_low_jobs_take_fair_turns_among_themselves(settings, redis_connection):
    for _ in range(3):
        _enqueue(redis_connection, settings, "slack:A", "low")
    _enqueue(redis_connection, settings, "slack:B", "low")
    assert _owners_in_worker_order(redis_connection, settings) == [
        "slack:A", "slack:B", "slack:A", "slack:A"]


def test_an_unknown_priority_is_refused_before_anything_is_queued(settings, redis_connection):
    with pytest.raises(ValueError, match="priority must be one of low, normal, high"):
        _enqueue(redis_connection, settings, "slack:A", "urgent")
    assert render_queue(redis_connection, settings).count == 0
