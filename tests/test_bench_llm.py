"""`lessonreel bench llm`, and `lessonreel bench` running every suite it can, as a user sees
them: the printed tables, the JSON report, the exit status."""

import json
import time

import pytest
import torch

import worker.bench
from bot.cli import main
from tests.test_cli import run_cli
from tests.tiny_gguf import build_tiny_gguf
from worker.bench import GPU_REFUSAL
from worker.bench_llm import NO_MODEL

# The tiny model's tokens are nearly single bytes, so prompts need a roomy context; at
# temperature 1.0 its grammar-constrained answers end on their own (tests/tiny_gguf.py).
TINY_LLM = {"LESSONREEL_LLM__CONTEXT": "16384", "LESSONREEL_LLM__TEMPERATURE": "1.0"}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return build_tiny_gguf(tmp_path_factory.mktemp("llm") / "tiny.gguf")


def test_bench_llm_times_draft_and_edit_turns_in_tokens_per_second(tmp_path, tiny_model):
    report_path = tmp_path / "llm.json"
    started = time.perf_counter()
    result = run_cli("bench", "llm", "--model", str(tiny_model), "--repeat", "2", "--json",
                     str(report_path), data_dir=tmp_path / "d", env_extra=TINY_LLM)
    wall = time.perf_counter() - started  # the whole command, measured here
    assert result.returncode == 0, result.stderr

    llm = json.loads(report_path.read_text())["llm"]
    assert llm["model"] == str(tiny_model) and llm["load_seconds"] > 0
    assert set(llm["turns"]) == {"draft", "edit"}
    for turn in llm["turns"].values():
        assert len(turn["runs"]) == 2
        assert turn["prompt_tokens"] > 0 and turn["generated_tokens_median"] > 0
        assert turn["prompt_tokens_per_second_best"] > 0
        assert turn["generation_tokens_per_second_best"] > 0
        for run in turn["runs"]:  # an empty KV cache each run: the whole prompt is decoded
            assert run["prompt_decoded_tokens"] == pytest.approx(run["prompt_tokens"], abs=1)
            assert 0 < run["prompt_seconds"] < run["seconds"]
        # The rates are what the runs' own counts and seconds give.
        assert turn["generation_tokens_per_second_best"] == pytest.approx(max(
            run["generated_tokens"] / run["generation_seconds"] for run in turn["runs"]),
            rel=0.01)
    # Every timed turn and the load happened inside the command.
    timed = llm["load_seconds"] + sum(run["seconds"] for turn in llm["turns"].values()
                                      for run in turn["runs"])
    assert timed < wall
    assert (llm["turns"]["edit"]["prompt_tokens"]
            > llm["turns"]["draft"]["prompt_tokens"])  # the edit's prompt holds the storyboard
    for shown in ("Model load (cold start)", "draft", "edit", "median", "prompt tok/s",
                  "gen tok/s", "llama.cpp's own timer"):
        assert shown in result.stdout


def test_bench_llm_without_a_model_says_in_one_sentence_how_to_get_one(tmp_path):
    result = run_cli("bench", "llm", data_dir=tmp_path / "d")
    assert result.returncode == 2
    assert result.stderr.strip() == f"lessonreel: {NO_MODEL}"
    assert "Traceback" not in result.stderr


def _fake_render(calls: list):
    """bench_render's report, without the minutes of diffusion it takes to make one."""

    def bench_render(settings, *, model=None, scenes=6):
        calls.append(model)
        return {"device": "cpu", "size": "128x64", "frames_per_scene": 17, "steps": 8,
                "scenes": scenes, "overhead_ratio": 1.05, "render_seconds_system": 2.1,
                "render_seconds_bare_loop": 2.0, "dequeue_to_first_step_seconds": [0.04],
                "dequeue_to_end_of_first_step_seconds": [0.6], "rerender_ratio": 0.2,
                "rerender_one_edit_seconds": 0.5, "full_render_seconds": 2.5,
                "finish_seconds": 1.2, "finish_video_seconds": 20.0,
                "finish_seconds_per_output_second": 0.06,
                "finish_stage_seconds": {"narration": 0.1, "audio": 0.8, "stills": 0.1,
                                         "check": 0.2}}

    return bench_render


def test_bench_runs_every_suite_it_can_into_one_report(tmp_path, tiny_model, monkeypatch,
                                                       capsys):
    """No suite named: compose, render and llm, each with its table; --gpu adds gpu, which a
    machine without CUDA lists as skipped with the reason, and still exits 0."""
    render_models: list = []
    monkeypatch.setattr(worker.bench, "bench_render", _fake_render(render_models))
    for name, value in TINY_LLM.items():
        monkeypatch.setenv(name, value)
    report_path = tmp_path / "all.json"
    status = main(["bench", "--gpu", "--model", str(tiny_model), "--seconds", "6",
                   "--repeat", "1", "--json", str(report_path)])
    shown = capsys.readouterr().out
    assert status == 0

    report = json.loads(report_path.read_text())
    assert {"machine", "compose", "demo", "render", "llm"} <= set(report)
    assert report["compose"]["video_seconds"] == 6
    assert render_models == [None]  # a GGUF --model is the llm's, not a pipeline for render
    assert report["llm"]["model"] == str(tiny_model)
    assert "gpu" in report["skipped"] and "gpu" not in report
    if not torch.cuda.is_available():
        assert report["skipped"]["gpu"] == GPU_REFUSAL
        assert f"skipped gpu: {GPU_REFUSAL}" in shown
    for title in ("bench compose", "bench render", "bench llm"):
        assert f"lessonreel {title}" in shown


def test_bench_without_a_language_model_skips_llm_and_says_why(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(worker.bench, "bench_render", _fake_render([]))
    report_path = tmp_path / "all.json"
    status = main(["bench", "--seconds", "6", "--repeat", "1", "--json", str(report_path)])
    shown = capsys.readouterr().out
    assert status == 0
    report = json.loads(report_path.read_text())
    assert report["skipped"] == {"llm": NO_MODEL}  # and no gpu: --gpu was not given
    assert {"compose", "render"} <= set(report) and "llm" not in report
    assert f"skipped llm: {NO_MODEL}" in shown
