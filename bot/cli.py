"""The `lessonreel` command.

Every error a person can cause ends here as one sentence on stderr and exit status 2;
a render that fails exits 1. Heavy imports happen inside the subcommands, so a bot host
never loads what only a worker needs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from engine.errors import UserError
from engine.storyboard import ASPECTS, LANGUAGES

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line, not a usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: {message}; see '{self.prog} --help'.\n")


def _one_of(allowed: tuple[str, ...]):
    def check(value: str) -> str:
        if value not in allowed:
            raise argparse.ArgumentTypeError(
                f"must be one of {', '.join(allowed)}, not {value!r}"
            )
        return value

    return check


def _gpu_list(value: str) -> list[int]:
    gpus = [part.strip() for part in value.split(",")]
    if not all(part.isdigit() and int(part) < 64 for part in gpus) or len(set(gpus)) != len(gpus):
        raise argparse.ArgumentTypeError(f"{value!r} is not a list of GPU numbers like 0,1")
    return [int(part) for part in gpus]


def _count(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 64:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of workers from 1 to 64")
    return int(value)


def _port(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 1 to 65535, not {value!r}")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lessonreel", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    demo = commands.add_parser("demo", help="draft and render a video from one request")
    demo.add_argument("request", help='e.g. "Explain photosynthesis to grade 7 in 30 seconds"')
    demo.add_argument("--out", type=Path, help="folder for the video and its files "
                      "(default: a new folder in the data dir's media/)")
    demo.add_argument("--lang", type=_one_of(LANGUAGES),
                      help="storyboard language (default: the request's)")
    demo.add_argument("--aspect", type=_one_of(ASPECTS),
                      help="16:9, 9:16 or 1:1 (default from settings)")
    demo.add_argument("--model", type=Path, help="render with the diffusers pipeline saved in "
                      "this folder (one with model_index.json)")
    demo.set_defaults(handler=_demo)

    chat = commands.add_parser("chat", help="talk to the bot in this terminal")
    chat.add_argument("--no-render", action="store_true", help="queue renders for the "
                      "workers instead of rendering them in this process")
    chat.set_defaults(handler=_chat)

    bot = commands.add_parser("bot", help="run the Slack or Telegram bot")
    bot.add_argument("platform", choices=["slack", "telegram"])
    bot.add_argument("--http", action="store_true", help="slack: serve POST /slack/events "
                     "instead of Socket Mode")
    bot.add_argument("--webhook", action="store_true", help="telegram: take updates on POST "
                     "/telegram/webhook instead of long polling")
    bot.add_argument("--host", default="0.0.0.0", help="address to listen on (HTTP modes)")
    bot.add_argument("--port", type=_port, default=8080, help="port to listen on (HTTP modes)")
    bot.set_defaults(handler=_bot)

    serve = commands.add_parser("serve", help="serve share links, /healthz, and the Slack "
                                "events endpoint and Telegram webhook where configured")
    serve.add_argument("--host", default="0.0.0.0", help="address to listen on")
    serve.add_argument("--port", type=_port, default=8080, help="port to listen on")
    serve.add_argument("--no-slack", action="store_true", help="leave out POST /slack/events "
                       "even where Slack is set up for HTTP")
    serve.add_argument("--no-telegram", action="store_true", help="leave out POST "
                       "/telegram/webhook even where the Telegram webhook is set up")
    serve.set_defaults(handler=_serve)

    from bot.doctor import add_arguments as add_doctor_arguments

    doctor = commands.add_parser("doctor", help="check this machine can run the bot, a worker "
                                 "or the share server, and say how to fix what is missing")
    add_doctor_arguments(doctor)
    doctor.set_defaults(handler=_doctor)

    share = commands.add_parser("share", help="make or revoke a share link to a video")
    share.add_argument("video", nargs="?", help="the video's id (its folder in the media root, "
                       "e.g. r-1a2b3c4d5e6f)")
    share.add_argument("--expires", help="how long the new link opens, e.g. 90m, 2h or 3d "
                       "(default: share.link_days)")
    share.add_argument("--revoke", metavar="LINK", help="withdraw this link (or its token); "
                       "other links to the same video keep working")
    share.set_defaults(handler=_share)

    worker = commands.add_parser("worker", help="render jobs from the queue")
    worker.add_argument("--burst", action="store_true", help="stop when the queue is empty")
    several = worker.add_mutually_exclusive_group()
    several.add_argument("--gpus", type=_gpu_list, metavar="0,1",
                         help="one worker per GPU, each a process of its own")
    several.add_argument("--processes", type=_count, metavar="N",
                         help="N workers on this machine's one device")
    worker.add_argument("--grace", type=float, default=300.0, metavar="SECONDS",
                        help="with --gpus/--processes: how long a stop waits for the jobs in "
                        "hand (then they are cut off, and run again later)")
    worker.set_defaults(handler=_worker)

    from worker.qc import add_arguments as add_qc_arguments

    qc = commands.add_parser("qc", help="check a video: size, frame rate, length, sharpness, "
                             "black or frozen stretches, captions, loudness")
    add_qc_arguments(qc)
    qc.set_defaults(handler=_qc)

    from bot.batch import add_arguments as add_batch_arguments

    batch = commands.add_parser("batch", help="queue a video for each row of a CSV file")
    add_batch_arguments(batch)
    batch.set_defaults(handler=_batch)

    models = commands.add_parser("models", help="model presets (video, voice, moderation "
                                 "classifier): list, pull")
    models.add_argument("action", choices=["list", "pull"])
    models.add_argument("preset", nargs="?", help="the preset to pull")
    models.set_defaults(handler=_models)

    from engine.presets import QUALITIES

    bench = commands.add_parser("bench", help="measure performance")
    bench.add_argument("suite", nargs="?", default="all",
                       choices=["all", "compose", "render", "llm", "audio", "gpu"],
                       help="what to measure (default all: compose, render, and llm where a "
                       "language model is installed; llm: seconds and tokens per second of a "
                       "draft and an edit turn; gpu: seconds per scene and share of the GPU's "
                       "bf16 peak for each preset and quality level)")
    bench.add_argument("--gpu", action="store_true", help="all: the gpu suite too")
    bench.add_argument("--model", type=Path, help="llm: a GGUF chat model file (default: "
                       "llm.model_path); render, gpu: a pipeline folder (render's default: a "
                       "random Wan built for the run; gpu's: the installed presets); all: a "
                       "file goes to llm, a folder to render and gpu")
    bench.add_argument("--seconds", type=int, default=30, help="length of the test video")
    bench.add_argument("--repeat", type=int, default=3, help="compose runs to time; llm: "
                       "turns of each kind; gpu: scenes timed per quality level, after a "
                       "warm-up")
    bench.add_argument("--json", type=Path, help="also write the report to this file")
    bench.add_argument("--preset", action="append", metavar="NAME", help="gpu: this preset "
                       "only (repeatable; default: every preset whose weights are installed)")
    bench.add_argument("--quality", action="append", type=_one_of(QUALITIES),
                       metavar="LEVEL", help="gpu: this quality level only (repeatable)")
    bench.add_argument("--random-weights", action="store_true", help="gpu: each preset's "
                       "architecture at full size with random weights, no download needed")
    bench.add_argument("--steps", type=int, metavar="N", help="gpu: denoising steps for "
                       "every level and the baseline (default: each level's own)")
    # For tests: run the gpu suite on a CPU, at the tiny size the settings ask for.
    bench.add_argument("--allow-cpu", action="store_true", help=argparse.SUPPRESS)
    bench.set_defaults(handler=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except UserError as exc:
        print(f"lessonreel: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("lessonreel: stopped.", file=sys.stderr)
        return 130
    except Exception as exc:  # our bug, not the user's: one line, and where to look
        logging.getLogger("lessonreel").debug("unexpected error", exc_info=True)
        print(f"lessonreel: unexpected error ({exc.__class__.__name__}: {exc}); this is a bug "
              "in lessonreel: please report it with the command you ran.", file=sys.stderr)
        return EXIT_FAILED


def _demo(args: argparse.Namespace) -> int:
    from rich.console import Console

    from bot.demo import DemoOptions, run_demo

    if args.model:
        # The in-process worker reads its settings from the environment, like any worker.
        os.environ["LESSONREEL_DIFFUSION__MODEL_PATH"] = str(args.model.resolve())
        os.environ["LESSONREEL_DIFFUSION__RENDERER"] = "diffusion"
    options = DemoOptions(request=args.request, out=args.out, language=args.lang,
                          aspect=args.aspect)
    return run_demo(options, Console(), Console(stderr=True))


def _chat(args: argparse.Namespace) -> int:
    from bot.console import run_chat

    return run_chat(render_here=not args.no_render)


def _bot(args: argparse.Namespace) -> int:
    from engine.logs import setup_logging

    setup_logging()
    from bot.runtime import build_runtime

    if args.platform == "slack":
        from bot.slack import run_slack, slack_settings

        # A missing token is one sentence, before Redis or the model start.
        config = slack_settings(http=args.http)
        return run_slack(build_runtime(), config, http=args.http, host=args.host,
                         port=args.port)
    from bot.telegram import run_telegram, telegram_settings

    config = telegram_settings(webhook=args.webhook)
    return run_telegram(build_runtime(), config, webhook=args.webhook, host=args.host,
                        port=args.port)


def _serve(args: argparse.Namespace) -> int:
    from engine.logs import setup_logging

    setup_logging()
    from bot.web import run_web, serve_app

    app, mounted = serve_app(slack=not args.no_slack, telegram=not args.no_telegram)
    logging.getLogger("lessonreel.serve").info("serving on %s:%d: %s", args.host, args.port,
                                               mounted)
    run_web(app, args.host, args.port)
    return 0


def _qc(args: argparse.Namespace) -> int:
    from worker.qc import run

    return run(args)


def _batch(args: argparse.Namespace) -> int:
    from bot.batch import run

    return run(args)


def _doctor(args: argparse.Namespace) -> int:
    from bot.doctor import run

    return run(args)


def _share(args: argparse.Namespace) -> int:
    from engine.settings import load_settings
    from engine.share import (
        media_file,
        parse_lifetime,
        revoke,
        share_secret,
        share_url,
        token_of,
        verify,
        video_folder,
    )

    if bool(args.video) == bool(args.revoke) or (args.revoke and args.expires):
        raise UserError("Name a video to share ('lessonreel share r-… [--expires 2h]') or a "
                        "link to revoke ('lessonreel share --revoke LINK'), not both.")
    settings = load_settings()
    secret = share_secret(settings)
    if args.revoke:
        link = verify(secret, token_of(args.revoke), now=0)  # an expired link may be revoked
        if link is None:
            raise UserError("That is not a share link made with this server's secret (or it "
                            "was cut short); paste the whole link.")
        if video_folder(settings, link.folder) is None:
            raise UserError(f"The video {link.folder!r} of that link is no longer in "
                            f"{settings.media_path}.")
        done = revoke(settings, link)
        print(f"Revoked: that link to {link.folder} no longer opens." if done else
              f"That link to {link.folder} was already revoked.")
        return 0
    lifetime = parse_lifetime(args.expires) if args.expires else None
    if media_file(settings, args.video, "video.mp4") is None:
        raise UserError(f"There is no video {args.video!r} in {settings.media_path}; "
                        "the chat's 'videos' command lists yours.")
    print(share_url(settings, secret, args.video, expires_in=lifetime))
    return 0


def _worker(args: argparse.Namespace) -> int:
    from engine.connection import connect
    from engine.logs import setup_logging
    from engine.settings import load_settings
    from worker.runner import run_worker

    setup_logging()
    if args.gpus or args.processes:
        if args.burst:
            raise UserError("--burst runs one worker until the queue is empty; leave out "
                            "--gpus/--processes with it.")
        from engine.settings import load_settings
        from worker.supervisor import Supervisor, worker_slots  # imports no torch

        load_settings()  # a bad setting is one sentence here, not children failing forever
        slots = worker_slots(gpus=args.gpus, processes=args.processes or 1)
        return Supervisor(slots, grace_seconds=args.grace).run()
    settings = load_settings()
    logging.getLogger("lessonreel.worker").info("taking jobs from the queue %r",
                                                settings.queue.name)
    # RQ's own lines at WARNING and above only: its INFO lines print each job's arguments (a
    # whole storyboard); ours say what each job did (worker/jobs.py).
    run_worker(settings, connect(settings), burst=args.burst, logging_level="WARNING")
    return 0


def _models(args: argparse.Namespace) -> int:
    from engine.settings import load_settings
    from worker.models_cli import run

    return run(args, load_settings())


def _bench(args: argparse.Namespace) -> int:
    from engine.settings import load_settings
    from worker.bench import machine

    if not 6 <= args.seconds <= 180 or not 1 <= args.repeat <= 20:
        raise UserError("--seconds must be 6-180 and --repeat 1-20.")
    settings = load_settings()
    report = {"machine": machine()}
    if args.suite == "all":
        report |= _bench_all(settings, args)
    else:
        report |= _BENCH_SUITES[args.suite](settings, args)
    _write_report(args.json, report)
    return 0


def _bench_all(settings, args: argparse.Namespace) -> dict:
    """compose, render and llm, and gpu with --gpu, into one report. A suite that stops with
    a sentence (no language model installed, no GPU) is listed as skipped with it and the
    others still run, so a long run is not lost to one missing part; `bench gpu` alone is
    where a missing GPU is an error."""
    model = args.model
    if model is not None and not (model.is_dir() or model.is_file()):
        raise UserError(f"--model {model} is neither a GGUF file nor a pipeline folder.")
    gguf = model if model is not None and model.is_file() else None
    pipeline = model if model is not None and model.is_dir() else None
    suites = ["compose", "render", "llm"] + (["gpu"] if args.gpu else [])
    report: dict = {"skipped": {}}
    for suite in suites:
        routed = argparse.Namespace(**{**vars(args),
                                       "model": gguf if suite == "llm" else pipeline})
        try:
            report |= _BENCH_SUITES[suite](settings, routed)
        except UserError as exc:
            report["skipped"][suite] = str(exc)
            print(f"skipped {suite}: {exc}")
    return report


def _bench_compose(settings, args: argparse.Namespace) -> dict:
    from rich.console import Console
    from rich.table import Table

    from worker.bench import bench_compose, bench_demo_wall

    compose = bench_compose(settings, seconds=args.seconds, repeat=args.repeat)
    demo = bench_demo_wall(seconds=args.seconds)
    table = Table(title=f"lessonreel bench compose ({os.cpu_count()} CPUs)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row(f"compose + encode, {compose['frame_size']} @ {compose['fps']} fps",
                  f"{min(compose['compose_encode_seconds']):.2f} s for "
                  f"{compose['video_seconds']} s of video")
    table.add_row("… per output second (best)",
                  f"{compose['seconds_per_output_second_best']:.3f} s "
                  f"(target <= {compose['target_seconds_per_output_second']})")
    table.add_row("… per output second (median)",
                  f"{compose['seconds_per_output_second_median']:.3f} s")
    table.add_row(f"lessonreel demo, {demo['video_seconds']} s video, wall time",
                  f"{demo['demo_wall_seconds'][0]:.2f} s")
    Console().print(table)
    return {"compose": compose, "demo": demo}


def _bench_llm(settings, args: argparse.Namespace) -> dict:
    from rich.console import Console
    from rich.table import Table

    from worker.bench_llm import bench_llm

    llm = bench_llm(settings, model=args.model, seconds=args.seconds, repeat=args.repeat)
    where = f"{llm['gpu_layers']} GPU layers" if llm["gpu_offload"] else "CPU only"
    threads = f"{llm['threads']} thread{'' if llm['threads'] == 1 else 's'}"
    table = Table(title=f"lessonreel bench llm ({Path(llm['model']).name}, {llm['model_mb']} "
                        f"MB, {threads}, {where})")
    _columns(table, "turn", "valid", "prompt tok", "gen tok", "seconds", "prompt tok/s",
             "gen tok/s")
    for kind, turn in llm["turns"].items():  # two rows, to fit 80 columns: best, median
        table.add_row(kind, f"{turn['valid_runs']}/{llm['repeat']}", str(turn["prompt_tokens"]),
                      f"{turn['generated_tokens_median']:.0f}", f"{turn['seconds_best']:.2f}",
                      f"{turn['prompt_tokens_per_second_best']:.0f}",
                      f"{turn['generation_tokens_per_second_best']:.1f}")
        table.add_row("… median", "", "", "", f"{turn['seconds_median']:.2f}",
                      f"{turn['prompt_tokens_per_second_median']:.0f}",
                      f"{turn['generation_tokens_per_second_median']:.1f}", end_section=True)
    console = Console()
    console.print(table)
    console.print(f"Model load (cold start): {llm['load_seconds']:.2f} s, the grammar and the "
                  "weights, as the bot's start-up pays it.")
    console.print(f"Rows: the best of {llm['repeat']} runs of each turn, then the median "
                  "(gen tok: the median), after one untimed warm-up turn. A turn is the bot's "
                  "own grammar-constrained answer() call, from an empty KV cache. prompt "
                  "tok/s: llama.cpp's own timer for decoding the prompt. gen tok/s: generated "
                  "tokens over the rest of the turn: decoding and sampling under the grammar, "
                  "and any retry after an invalid answer.")
    return {"llm": llm}


def _bench_audio(settings, args: argparse.Namespace) -> dict:
    from rich.console import Console
    from rich.table import Table

    from worker.bench import bench_audio

    audio = bench_audio(settings, seconds=args.seconds, repeat=args.repeat)
    table = Table(title=f"lessonreel bench audio ({os.cpu_count()} CPUs)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for voice, figure in audio["tts_seconds_per_speech_second"].items():
        table.add_row(f"speech: {voice}", f"{figure} s per second of speech"
                      if isinstance(figure, float) else str(figure))
    table.add_row(f"soundtrack mix + AAC mux, {audio['video_seconds']} s video",
                  f"{audio['audio_seconds_per_output_second']:.3f} s per output second")
    if "interpolation_seconds_per_output_second" in audio:
        table.add_row("frame interpolation, 832x480, 16 -> 24 fps",
                      f"{audio['interpolation_seconds_per_output_second']:.3f} s per output "
                      "second")
    Console().print(table)
    return {"audio": audio}


def _bench_gpu(settings, args: argparse.Namespace) -> dict:
    from rich.console import Console
    from rich.table import Table

    from engine.presets import QUALITIES
    from worker.bench import bench_gpu

    if args.steps is not None and not 1 <= args.steps <= 200:
        raise UserError("--steps must be 1-200.")
    qualities = tuple(level for level in QUALITIES if level in (args.quality or QUALITIES))
    gpu = bench_gpu(settings, presets=args.preset, qualities=qualities, steps=args.steps,
                    model=args.model, random_weights=args.random_weights,
                    scenes=args.repeat, allow_cpu=args.allow_cpu)
    peak = gpu["bf16_peak_tflops"]
    where = f"{gpu['gpu'] or gpu['device']}, bf16 peak {f'{peak:g} TFLOPS' if peak else 'unknown'}"

    def shown(value, form: str) -> str:
        return "—" if value is None else format(value, form)

    console = Console()
    for preset in dict.fromkeys(row["preset"] for row in gpu["runs"]):  # one table each
        rows = [row for row in gpu["runs"] if row["preset"] == preset]
        first = rows[0]
        table = Table(title=f"{preset}, {first['size']}, {first['frames']} frames "
                            f"({first['model']}) on {where}")
        _columns(table, "quality", "steps", "s/scene", "s/step", "TFLOP/step", "MFU %",
                 "speed-up")
        for row in rows:
            table.add_row(row["quality"] + (" (degraded)" if "degraded" in row else ""),
                          str(row["steps"]), f"{row['seconds_per_scene']:.2f}",
                          shown(row["seconds_per_step"], ".3f"),
                          shown(row["tflop_per_step"], ".1f"),
                          shown(None if row["mfu"] is None else 100 * row["mfu"], ".1f"),
                          f"{row['speedup_vs_diffusers_default']:.2f}x")
        console.print(table)
    console.print(f"Timed scenes per row: {gpu['scenes_per_level']}, after a warm-up. "
                  "speed-up: the diffusers default row's s/scene (at standard's steps) over "
                  "the row's. MFU: FLOPs per step (from the model's config) over s/step, "
                  "against the GPU's dense bf16 peak.")
    for preview in gpu.get("live_previews", []):
        if "error" in preview:
            console.print(f"Live preview, {preview['preset']}: not measured ({preview['error']})")
            continue
        console.print(f"Live preview, {preview['preset']} ({preview['how']}): "
                      f"{preview['setup_seconds']:.2f} s once per worker, then "
                      f"{1000 * preview['seconds_per_preview']:.0f} ms per picture.")
    for skipped in gpu["skipped"]:
        print(f"skipped {skipped['preset']}: {skipped['reason']}")
    return {"gpu": gpu}


def _columns(table, first: str, *figures: str) -> None:
    """A label column, then figures right-aligned, none narrower than its heading."""
    table.add_column(first, min_width=len(first))
    for column in figures:
        table.add_column(column, justify="right", min_width=len(column))


def _write_report(path: Path | None, report: dict) -> None:
    if path is None:
        return
    try:
        path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise UserError(f"Cannot write the report to {path} ({exc.strerror}).") from None


def _bench_render(settings, args: argparse.Namespace) -> dict:
    from rich.console import Console
    from rich.table import Table

    from worker.bench import bench_render

    render = bench_render(settings, model=args.model)
    table = Table(title=f"lessonreel bench render ({render['device']}, {render['size']}, "
                        f"{render['frames_per_scene']} frames, {render['steps']} steps)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("target", justify="right")
    table.add_row(f"(a) render / bare diffusers loop ({render['scenes']} scenes)",
                  f"{render['overhead_ratio']:.3f} ({render['render_seconds_system']:.2f} s / "
                  f"{render['render_seconds_bare_loop']:.2f} s)", "<= 1.10")
    table.add_row("(b) dequeue to first step, warm worker",
                  " ".join(f"{x:.3f} s" for x in render["dequeue_to_first_step_seconds"]),
                  "<= 0.5 s")
    table.add_row("    … to the end of the first step",
                  " ".join(f"{x:.3f} s" for x in render["dequeue_to_end_of_first_step_seconds"]),
                  "")
    table.add_row("(c) re-render after 1 of 6 edited / full",
                  f"{render['rerender_ratio']:.3f} ({render['rerender_one_edit_seconds']:.2f} s "
                  f"/ {render['full_render_seconds']:.2f} s)", "<= 0.25")
    stages = ", ".join(f"{stage} {seconds:.2f}" for stage, seconds
                       in render["finish_stage_seconds"].items())
    table.add_row(f"(d) the finish, {render['finish_video_seconds']:.0f} s voiced video",
                  f"{render['finish_seconds_per_output_second']:.3f} s per output second "
                  f"({render['finish_seconds']:.2f} s: {stages})", "")
    Console().print(table)
    return {"render": render}


# Each suite measures, prints its table and returns its sections of the JSON report.
_BENCH_SUITES = {"compose": _bench_compose, "render": _bench_render, "llm": _bench_llm,
                 "audio": _bench_audio, "gpu": _bench_gpu}


if __name__ == "__main__":
    sys.exit(main())
