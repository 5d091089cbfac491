"""`lessonreel bench llm`: how long the language model keeps a teacher waiting.

It times the bot's own call, `StoryboardLLM.answer`, grammar-constrained as in a chat: a
first draft of the bench request, and an edit of the rule-based draft of it (the same board
every run, whatever the model drafted). Every turn starts from an empty KV cache, so each run
decodes its whole prompt; in a chat the system prompt is often still cached from the last
turn, so real turns can be a little faster.

Where a turn's time goes: the prompt is llama.cpp's own timer for the prompt's decode
(`llama_perf_context`, which waits for the device); everything after it is generation —
decoding and sampling each token under the grammar, and the retry after an invalid answer.
The model load is timed once, as the bot's start-up pays it (grammar, then weights).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.drafter import draft_storyboard, styles
from engine.errors import UserError
from engine.history import Turn
from engine.llm import LLMError, StoryboardLLM
from engine.settings import Settings
from worker.bench import bench_request

NO_MODEL = ("bench llm needs a language model and none is configured: give --model "
            "PATH.gguf, or set LESSONREEL_LLM__MODEL_PATH to a GGUF chat model file.")
EDIT_MESSAGE = "Add a short quiz question as the last scene, and use simpler words."


def bench_llm(settings: Settings, *, model: Path | None = None, seconds: int = 30,
              repeat: int = 3) -> dict:
    """Seconds, tokens and tokens per second of a draft turn and an edit turn, `repeat` times
    each, on `model` or the configured GGUF; UserError when there is neither."""
    if model is not None and not model.is_file():
        raise UserError(f"--model {model} is not a file; give a GGUF chat model file.")
    path = model or settings.llm.model_path
    if not path:
        raise UserError(NO_MODEL)
    settings = settings.model_copy(update={
        "llm": settings.llm.model_copy(update={"model_path": str(path)})})
    started = time.perf_counter()
    llm = StoryboardLLM(settings, list(styles()))
    load_seconds = time.perf_counter() - started
    import llama_cpp  # only now: without it, StoryboardLLM has said how to install it

    request = bench_request(seconds)
    board = draft_storyboard(request, settings, aspect="16:9").storyboard
    history = [Turn("teacher", request), Turn("assistant", "Here is a first storyboard.")]
    turns = {"draft": lambda: llm.answer(None, [], request, language="en"),
             "edit": lambda: llm.answer(board, history, EDIT_MESSAGE)}
    runs: dict[str, list[dict]] = {kind: [] for kind in turns}
    _timed_turn(llm._llama, turns["draft"])  # untimed warm-up: weights paged in, buffers made
    for _ in range(repeat):  # interleaved, so a slow spell on the machine hits both kinds
        for kind, turn in turns.items():
            runs[kind].append(_timed_turn(llm._llama, turn))
    return {
        "model": str(Path(path).expanduser()),
        "model_mb": round(Path(path).expanduser().stat().st_size / 1e6, 1),
        "llama_cpp_python": llama_cpp.__version__,
        "gpu_offload": bool(llama_cpp.llama_supports_gpu_offload()),
        "gpu_layers": settings.llm.gpu_layers,
        "threads": llm._llama.n_threads,
        "context": settings.llm.context,
        "max_tokens": settings.llm.max_tokens,
        "temperature": settings.llm.temperature,
        "load_seconds": round(load_seconds, 3),
        "repeat": repeat,
        "turns": {"draft": {"message": request, **_summary(runs["draft"])},
                  "edit": {"message": EDIT_MESSAGE, **_summary(runs["edit"])}},
    }


def _timed_turn(llama: Any, call: Callable[[], object]) -> dict:
    """One answer() call: its wall time, and llama.cpp's split of it into prompt and the rest."""
    import llama_cpp

    usages: list[dict] = []
    complete = llama.create_chat_completion

    def counted(**kwargs):  # answer() keeps only the text; the token counts are here
        completion = complete(**kwargs)
        usages.append(completion["usage"])
        return completion

    llama.create_chat_completion = counted  # the instance's attribute shadows the method
    llama.reset()  # an empty KV cache: this run decodes its whole prompt
    llama_cpp.llama_perf_context_reset(llama._ctx.ctx)
    started = time.perf_counter()
    try:
        call()
        valid = True
    except LLMError:
        if not usages:  # nothing was generated (the prompt does not fit): nothing to time
            raise
        valid = False  # two invalid answers: still a turn the teacher waited for
    finally:
        del llama.create_chat_completion
    seconds = time.perf_counter() - started
    perf = llama_cpp.llama_perf_context(llama._ctx.ctx)
    prompt_seconds = perf.t_p_eval_ms / 1000
    return {
        "seconds": round(seconds, 4),
        "valid": valid,
        "completions": len(usages),
        "prompt_tokens": usages[0]["prompt_tokens"],
        "prompt_decoded_tokens": perf.n_p_eval,
        "prompt_seconds": round(prompt_seconds, 4),
        "generated_tokens": sum(usage["completion_tokens"] for usage in usages),
        "generation_seconds": round(seconds - prompt_seconds, 4),
    }


def _summary(runs: list[dict]) -> dict:
    prompt_rates = [run["prompt_decoded_tokens"] / run["prompt_seconds"]
                    for run in runs if run["prompt_seconds"] > 0]
    generation_rates = [run["generated_tokens"] / run["generation_seconds"]
                        for run in runs if run["generation_seconds"] > 0]
    seconds = [run["seconds"] for run in runs]
    return {
        "runs": runs,
        "valid_runs": sum(run["valid"] for run in runs),
        "prompt_tokens": runs[0]["prompt_tokens"],  # the same prompt every run
        "generated_tokens_median": statistics.median(run["generated_tokens"] for run in runs),
        "seconds_best": min(seconds),
        "seconds_median": round(statistics.median(seconds), 4),
        "prompt_tokens_per_second_best": round(max(prompt_rates, default=0), 1),
        "prompt_tokens_per_second_median": round(statistics.median(prompt_rates or [0]), 1),
        "generation_tokens_per_second_best": round(max(generation_rates, default=0), 1),
        "generation_tokens_per_second_median": round(
            statistics.median(generation_rates or [0]), 1),
    }
