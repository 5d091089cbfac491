"""The project's promises about itself: the README's commands, CI, and the dependency groups."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.+?)\n\s*```", section, re.S)


def test_readme_has_the_two_commands_and_ci_runs_the_second():
    setup_and_demo, setup_and_test = (command.strip() for command in _readme_commands())
    assert "lessonreel demo" in setup_and_demo and "pip install -e ." in setup_and_demo
    assert "pytest" in setup_and_test
    ci_lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert setup_and_test in ci_lines


def _dependencies() -> dict[str, list[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    groups = dict(project["optional-dependencies"])
    groups["core"] = project["dependencies"]
    return {name: [re.split(r"[<>=\[ ;]", dep)[0].lower() for dep in deps]
            for name, deps in groups.items()}


def test_a_bot_host_installs_no_torch_and_a_worker_host_no_chat_sdk():
    groups = _dependencies()
    gpu_packages = {"torch", "diffusers", "transformers", "accelerate", "llama-cpp-python"}
    chat_packages = {"slack-bolt", "slack-sdk", "python-telegram-bot"}
    assert not gpu_packages & set(groups["core"] + groups["bot"])
    assert not chat_packages & set(groups["core"] + groups["worker"])
    assert "lessonreel" in groups["all"][0]  # "all" pulls both groups


def test_engine_imports_no_platform_and_no_gpu_library():
    forbidden = re.compile(r"^\s*(?:from|import)\s+(torch|diffusers|transformers|slack_bolt|"
                           r"slack_sdk|telegram|bot|worker)\b", re.M)
    offenders = [path.name for path in (ROOT / "engine").glob("*.py")
                 if forbidden.search(path.read_text(encoding="utf-8"))]
    assert offenders == []


def test_the_terminal_has_a_word_for_every_render_event():
    from typing import get_args

    from bot.terminal import STATUS
    from engine.events import EventKind

    assert set(STATUS) == set(get_args(EventKind))
