"""A worker checks its GPU before each job, and hands a job back when CUDA breaks."""

import pytest
from rq import Queue
from rq.job import JobStatus
from rq.serializers import JSONSerializer

from engine.events import EventLog
from engine.jobs import RenderSpec, enqueue_render, new_job_id
from engine.settings import load_settings
from tests.conftest import make_storyboard
from worker.gpu import GpuReading, is_cuda_fault, preflight_problem
from worker.runner import EXIT_CUDA_FAULT, ResidentWorker, gpu_preflight

HEALTHY = GpuReading(0, "NVIDIA GeForce RTX 4090", 24_564, 20_000, 60)


def test_a_healthy_gpu_or_no_gpu_may_take_a_job():
    assert preflight_problem(HEALTHY, min_free_mb=2048, max_temperature_c=85) is None
    assert preflight_problem(None, min_free_mb=2048, max_temperature_c=85) is None


@pytest.mark.parametrize(("reading", "problem"), [
    (GpuReading(0, "RTX 4090", 24_564, 1_000, 60), "has 1000 MB free, 2048 MB are needed"),
    (GpuReading(1, "RTX 4090", 24_564, 20_000, 91), "GPU 1 (RTX 4090) is at 91 °C, above 85"),
])
def test_a_full_or_hot_gpu_does_not_take_a_job(reading, problem):
    assert problem in preflight_problem(reading, min_free_mb=2048, max_temperature_c=85)


def test_cpu_workers_make_no_gpu_check(monkeypatch):
    monkeypatch.setenv("LESSONREEL_DIFFUSION__DEVICE", "cpu")
    assert gpu_preflight(load_settings()) is None
    monkeypatch.setenv("LESSONREEL_DIFFUSION__DEVICE", "cuda:1")
    assert gpu_preflight(load_settings()) is not None


def succeed() -> str:
    return "done"


def test_the_worker_waits_while_the_gpu_is_hot_then_takes_the_job(redis_connection):
    queue = Queue("render", connection=redis_connection, serializer=JSONSerializer)
    job = queue.enqueue("tests.test_worker_health.succeed")
    readings = iter(["GPU 0 is at 92 °C", "GPU 0 is at 88 °C", None])
    naps = []
    worker = ResidentWorker([queue], connection=redis_connection, serializer=JSONSerializer)
    worker.allowed_functions = frozenset({"tests.test_worker_health.succeed"})
    worker.preflight = lambda: next(readings)
    worker.sleep = naps.append
    worker.work(max_jobs=1, logging_level="WARNING")  # a long-running worker, one job
    assert naps == [10.0, 10.0]
    assert job.get_status(refresh=True) == JobStatus.FINISHED


def always_a_cuda_fault() -> str:
    raise RuntimeError("CUDA error: an illegal memory access was encountered")


def test_a_job_that_faults_twice_fails_with_a_sentence_for_the_teacher(redis_connection):
    queue = Queue("render", connection=redis_connection, serializer=JSONSerializer)
    job = queue.enqueue("tests.test_worker_health.always_a_cuda_fault")
    events = EventLog(redis_connection)
    after = events.last_id()
    for _ in range(2):  # two fresh workers, as a supervisor would start them
        worker_ = ResidentWorker([queue], connection=redis_connection, serializer=JSONSerializer)
        worker_.allowed_functions = frozenset({"tests.test_worker_health.always_a_cuda_fault"})
        with pytest.raises(SystemExit):
            worker_.work(burst=True, logging_level="CRITICAL")
    assert job.get_status(refresh=True) == JobStatus.FAILED
    assert queue.get_job_ids() == []
    final = events.read(after)[-1][1]
    assert final.kind == "failed" and "GPU failed twice" in final.message


def test_a_burst_worker_does_not_wait_for_a_hot_gpu(redis_connection):
    queue = Queue("render", connection=redis_connection, serializer=JSONSerializer)
    job = queue.enqueue("tests.test_worker_health.succeed")
    worker_ = ResidentWorker([queue], connection=redis_connection, serializer=JSONSerializer)
    worker_.preflight = lambda: "GPU 0 is at 95 °C"
    worker_.sleep = lambda seconds: pytest.fail("a burst worker must not sleep")
    assert not worker_.work(burst=True, logging_level="CRITICAL")
    assert job.get_status(refresh=True) == JobStatus.QUEUED


def fail_once_with_a_cuda_fault(key: str) -> str:
    from rq import get_current_job

    if get_current_job().connection.incr(key) == 1:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
    return "rendered"


FAULTY = frozenset({"tests.test_worker_health.fail_once_with_a_cuda_fault"})


def test_a_cuda_fault_requeues_the_job_and_ends_the_worker_for_its_supervisor(
    redis_connection
):
    queue = Queue("render", connection=redis_connection, serializer=JSONSerializer)
    job = queue.enqueue("tests.test_worker_health.fail_once_with_a_cuda_fault", "runs")
    first = ResidentWorker([queue], connection=redis_connection, serializer=JSONSerializer)
    first.allowed_functions = FAULTY
    with pytest.raises(SystemExit) as stopped:
        first.work(burst=True, logging_level="CRITICAL")
    assert stopped.value.code == EXIT_CUDA_FAULT
    assert job.get_status(refresh=True) == JobStatus.QUEUED

    fresh = ResidentWorker([queue], connection=redis_connection, serializer=JSONSerializer)
    fresh.allowed_functions = FAULTY
    fresh.work(burst=True, logging_level="WARNING")
    assert job.get_status(refresh=True) == JobStatus.FINISHED
    assert job.return_value() == "rendered"
    assert int(redis_connection.get("runs")) == 2


def test_a_cuda_fault_in_a_render_tells_the_teacher_nothing_yet(redis_connection, settings,
                                                                monkeypatch):
    """The job will run again on a fresh worker: no "failed" message in the thread."""
    import worker.jobs

    def broken_gpu(*args, **kwargs):
        raise RuntimeError("CUDA error: unspecified launch failure")

    monkeypatch.setattr(worker.jobs, "render_to_folder", broken_gpu)
    events = EventLog(redis_connection)
    after = events.last_id()
    job_id = new_job_id()
    enqueue_render(redis_connection, settings, RenderSpec(
        job_id=job_id, conversation="t", version=1, storyboard=make_storyboard((2,)),
        output=job_id))
    queue = Queue(settings.queue.name, connection=redis_connection, serializer=JSONSerializer)
    worker_ = ResidentWorker([queue], connection=redis_connection, serializer=JSONSerializer)
    with pytest.raises(SystemExit):
        worker_.work(burst=True, logging_level="CRITICAL")
    kinds = [event.kind for _, event in events.read(after) if event.job_id == job_id]
    assert kinds == ["queued", "started"]
    assert job_id in queue.get_job_ids()


@pytest.mark.parametrize(("error", "fault"), [
    (RuntimeError("CUDA error: device-side assert triggered"), True),
    (RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED when calling cublasGemmEx"), True),
    (RuntimeError("shape mismatch"), False),
    (ValueError("CUDA error"), False),
])
def test_cuda_faults_are_told_from_ordinary_errors(error, fault):
    assert is_cuda_fault(error) is fault


def test_out_of_memory_is_not_a_fault():
    import torch

    assert not is_cuda_fault(torch.OutOfMemoryError("CUDA out of memory"))
