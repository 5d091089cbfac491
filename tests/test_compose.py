"""docker-compose.yml, the Dockerfile and .env.example agree with the code.

No Docker engine runs where the tests do, so these tests read the files: every `lessonreel …`
a container runs must parse with the real command-line parser, every variable compose or the
code reads must be documented in .env.example, and each service must get the image, GPU,
volumes and port it needs.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import fnmatch
import io
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import yaml

import bot.cli as cli
from engine.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
CODE_DIRS = ("engine", "bot", "worker")
LESSONREEL_SERVICES = ("web", "slack", "telegram", "worker")
# A string literal of this shape in our code names one of our variables wherever it is used.
OUR_VARIABLE = re.compile(r"^(?:LESSONREEL|SLACK|TELEGRAM)_[A-Z0-9_]+$")
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD")


# ---- reading the files ----------------------------------------------------------------------

def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def _services() -> dict[str, dict[str, Any]]:
    return _compose()["services"]


def _environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's `environment:`, in either of compose's two spellings."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def _env_example() -> dict[str, tuple[str, str]]:
    """NAME -> (value, the comment line right above it); an uncommented NAME gets ""."""
    found: dict[str, tuple[str, str]] = {}
    comment = ""
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if text.startswith("#"):
            comment = text.lstrip("#").strip()
        elif "=" in text:
            name, value = text.split("=", 1)
            found[name.strip()] = (value.strip(), comment)
            comment = ""
        else:
            comment = ""  # a blank line parts a comment from the variable below
    return found


def _split_shell(command: str) -> list[list[str]]:
    """The simple commands of a shell line: `a x && b y | c` -> [[a, x], [b, y], [c]]."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token and set(token) <= set("();<>|&"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [argv for argv in commands if argv]


def _argvs(value: Any) -> list[list[str]]:
    """Every command line in a compose `command:`/`entrypoint:` or a healthcheck `test:`."""
    if value is None:
        return []
    if isinstance(value, str):
        return _split_shell(value)
    words = [str(word) for word in value]
    if words[:1] == ["NONE"]:
        return []
    if words[:1] == ["CMD-SHELL"]:
        return _split_shell(" ".join(words[1:]))
    if words[:1] == ["CMD"]:
        words = words[1:]
    return [words]


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        if line.strip().startswith("#"):
            continue
        pending += line
        if pending.endswith("\\"):
            pending = pending[:-1]
            continue
        if pending.strip():
            keyword, _, rest = pending.strip().partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    return instructions


def _substitute(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), text)


def _stages() -> dict[str, dict[str, Any]]:
    """Each `FROM … AS name` stage: its base (global ARGs resolved), ARG defaults and lines."""
    global_args: dict[str, str] = {}
    stages: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    for keyword, rest in _dockerfile_instructions():
        if keyword == "FROM":
            words = [word for word in rest.split() if not word.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else f"#{len(stages)}"
            current = {"base": _substitute(words[0], global_args), "args": {}, "lines": []}
            stages[name] = current
        elif current is None:
            if keyword == "ARG" and "=" in rest:
                key, value = rest.split("=", 1)
                global_args[key] = value
        else:
            if keyword == "ARG":
                key, _, value = rest.partition("=")
                current["args"][key] = value or global_args.get(key, "")
            current["lines"].append((keyword, rest))
    return stages


def _stage_family(name: str, stages: dict[str, dict[str, Any]]) -> list[str]:
    """A stage, the stages it is built FROM, and those it copies files out of."""
    family, todo = [], [name]
    while todo:
        stage = todo.pop()
        if stage in family or stage not in stages:
            continue
        family.append(stage)
        todo.append(stages[stage]["base"])
        todo += [match.group(1) for keyword, rest in stages[stage]["lines"] if keyword == "COPY"
                 for match in [re.search(r"--from=(\S+)", rest)] if match]
    return family


# ---- what the code reads --------------------------------------------------------------------

def _string_constants(tree: ast.Module) -> dict[str, str]:
    """Module-level `NAME = "text"` (or a sum of such) assignments."""
    constants: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 \
                and isinstance(node.targets[0], ast.Name):
            value = _string_value(node.value, constants)
            if value is not None:
                constants[node.targets[0].id] = value
    return constants


def _string_value(node: ast.AST, constants: dict[str, str]) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return constants.get(node.id)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _string_value(node.left, constants), _string_value(node.right, constants)
        return None if left is None or right is None else left + right
    return None


def _is_environment(node: ast.AST) -> bool:
    """`os.environ`, `environ`, `env` and the like: what the code keeps the environment in."""
    name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")
    return "environ" in name or name in ("env", "environment")


def _variables_read_by(source: str, shared: dict[str, str] | None = None) -> set[str]:
    """Variables a module reads: keys looked up in the environment (literal, a module
    constant, or a sum of both), and any literal that names one of our variables."""
    tree = ast.parse(source)
    constants = {**(shared or {}), **_string_constants(tree)}
    keys: list[ast.AST] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args:
            func = node.func
            called = getattr(func, "attr", getattr(func, "id", ""))
            if called == "getenv" or (called in ("get", "pop", "setdefault")
                                      and _is_environment(getattr(func, "value", func))):
                keys.append(node.args[0])
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) \
                and _is_environment(node.value):
            keys.append(node.slice)
        elif isinstance(node, ast.Compare) and isinstance(node.ops[0], ast.In) \
                and _is_environment(node.comparators[0]):
            keys.append(node.left)
    found = {value for key in keys if (value := _string_value(key, constants))}
    found |= {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
              and isinstance(node.value, str) and OUR_VARIABLE.match(node.value)}
    return found


def _variables_the_code_reads() -> set[str]:
    sources = [path.read_text(encoding="utf-8") for folder in CODE_DIRS
               for path in sorted((ROOT / folder).rglob("*.py"))]
    shared: dict[str, str] = {}  # constants imported from another module, e.g. SECRET_ENV
    for source in sources:
        shared.update(_string_constants(ast.parse(source)))
    return set().union(*(_variables_read_by(source, shared) for source in sources))


def _is_setting_override(name: str) -> bool:
    return name.startswith(ENV_PREFIX) and "__" in name


def _names_a_setting(name: str) -> bool:
    """`LESSONREEL_RENDER__FPS` -> is `render.fps` a key of the settings?"""
    model: Any = Settings
    for part in name[len(ENV_PREFIX):].lower().split("__"):
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            return False
        model = fields[part].annotation
    return True


# ---- checking a command against the CLI -----------------------------------------------------

def _without_abbreviations(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """argparse takes `--rol` for `--role`, until an option `--roles` is added one day: a
    compose file outlives the options it was written against, so it must spell them out."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                _without_abbreviations(subparser)
    return parser


def cli_problem(argv: list[str]) -> str | None:
    """What `lessonreel` would say about this command line, or None when it parses."""
    if argv[:1] != ["lessonreel"]:
        return f"{argv[:1]} is not the lessonreel command"
    said = io.StringIO()
    with contextlib.redirect_stderr(said), contextlib.redirect_stdout(said):
        try:
            _without_abbreviations(cli.build_parser()).parse_args(argv[1:])
        except SystemExit as exc:
            return said.getvalue().strip() or f"the parser exited with status {exc.code}"
    return None


def _commands() -> list[tuple[str, list[str]]]:
    """(where, argv) for every command our services and images run."""
    commands = []
    services = _services()
    for name in LESSONREEL_SERVICES:
        service = services[name]
        for key in ("entrypoint", "command"):
            commands += [(f"{name} {key}", argv) for argv in _argvs(service.get(key))]
        test = (service.get("healthcheck") or {}).get("test")
        commands += [(f"{name} healthcheck", argv) for argv in _argvs(test)]
    for stage, info in _stages().items():
        for keyword, rest in info["lines"]:
            if keyword in ("CMD", "ENTRYPOINT") and rest.startswith("["):
                commands.append((f"Dockerfile {stage} {keyword}", yaml.safe_load(rest)))
    return commands


# ---- the tests ------------------------------------------------------------------------------

def test_compose_runs_redis_the_share_server_both_bots_and_a_worker():
    assert {"redis", *LESSONREEL_SERVICES} <= set(_services())


def test_the_command_compose_runs_is_the_console_script_pyproject_installs():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["scripts"]["lessonreel"] == "bot.cli:main"
    for name in LESSONREEL_SERVICES:
        assert _argvs(_services()[name]["command"])[0][0] == "lessonreel", name


def test_every_lessonreel_command_in_compose_and_the_dockerfile_parses_with_the_real_cli():
    commands = _commands()
    assert {where for where, _ in commands} >= {f"{name} command" for name in LESSONREEL_SERVICES}
    # Our images hold `lessonreel` and python (the web health check's probe), nothing else.
    strangers = [f"{where}: {argv[0]}" for where, argv in commands
                 if argv[0] not in ("lessonreel", "python")]
    assert strangers == []
    problems = [f"{where}: {' '.join(argv)}: {problem}" for where, argv in commands
                if argv[0] == "lessonreel" and (problem := cli_problem(argv))]
    assert problems == []


def test_each_service_runs_the_part_it_is_named_after():
    services = _services()
    run = {name: cli.build_parser().parse_args(_argvs(services[name]["command"])[0][1:])
           for name in LESSONREEL_SERVICES}
    assert run["web"].command == "serve"
    assert (run["slack"].command, run["slack"].platform, run["slack"].http) == \
        ("bot", "slack", False)  # Socket Mode: no public address needed
    assert (run["telegram"].command, run["telegram"].platform, run["telegram"].webhook) == \
        ("bot", "telegram", False)  # long polling
    assert run["worker"].command == "worker" and not run["worker"].burst


def test_the_checker_rejects_misspelt_subcommands_and_options():
    assert cli_problem(["lessonreel", "serve", "--host", "0.0.0.0", "--port", "8080"]) is None
    assert cli_problem(["lessonreel", "bot", "telegram"]) is None
    for bad in (["lessonreel", "serv"], ["lessonreel", "serve", "--prot", "8080"],
                ["lessonreel", "serve", "--port", "80800"], ["lessonreel", "bot", "slak"],
                ["lessonreel", "serve", "--po", "8080"], ["lessonreel", "wroker"],
                ["lesonreel", "worker"]):
        assert cli_problem(bad), bad
    # Commands inside a shell healthcheck are found and checked one by one.
    argvs = _argvs(["CMD-SHELL", "lessonreel doctr --role bot || exit 1"])
    assert argvs == [["lessonreel", "doctr", "--role", "bot"], ["exit", "1"]]
    assert "doctr" in cli_problem(argvs[0])


def test_redis_keeps_an_append_only_file_and_never_evicts():
    redis = _services()["redis"]
    (argv,) = _argvs(redis["command"])
    options = dict(zip(argv[1::2], argv[2::2], strict=False))
    assert argv[0] == "redis-server"
    assert options.get("--appendonly") == "yes"
    assert options.get("--maxmemory-policy") == "noeviction"
    assert any(volume.endswith(":/data") for volume in redis["volumes"])  # where AOF lives
    assert ["redis-cli", "ping"] in _argvs(redis["healthcheck"]["test"])


def test_every_service_restarts_and_waits_for_a_healthy_redis():
    services = _services()
    for name, service in services.items():
        assert service.get("restart") == "unless-stopped", name
        assert (service.get("healthcheck") or {}).get("test"), f"{name} has no health check"
    for name in LESSONREEL_SERVICES:
        depends = services[name].get("depends_on")
        assert isinstance(depends, dict), f"{name}: depends_on must say which condition"
        assert depends["redis"]["condition"] == "service_healthy", name


def test_services_share_redis_the_data_volume_and_the_models_volume():
    compose = _compose()
    for name in LESSONREEL_SERVICES:
        service = compose["services"][name]
        env = _environment(service)
        assert env["LESSONREEL_REDIS_URL"] == "redis://redis:6379/0", name
        data_dir = env["LESSONREEL_DATA_DIR"]
        assert f"data:{data_dir}" in service["volumes"], name
    worker = compose["services"]["worker"]
    models_dir = _environment(worker)["LESSONREEL_DIFFUSION__MODELS_DIR"]
    assert f"models:{models_dir}" in worker["volumes"]  # writable: `models pull` fills it
    assert {"redis", "data", "models"} <= set(compose["volumes"])


def test_secrets_come_only_from_the_env_file():
    for name in LESSONREEL_SERVICES:
        service = _services()[name]
        env_files = service.get("env_file")
        assert ".env" in ([env_files] if isinstance(env_files, str) else env_files), name
        written_here = [key for key in _environment(service) if SECRET_NAME.search(key)]
        assert written_here == [], f"{name} writes secrets into docker-compose.yml"
    shipped = {name: value for name, (value, _) in _env_example().items()
               if SECRET_NAME.search(name) and value}
    assert shipped == {}, ".env.example must not carry a token or secret"


def test_the_worker_reserves_an_nvidia_gpu():
    worker = _services()["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    gpus = [device for device in devices
            if device.get("driver") == "nvidia" and "gpu" in device.get("capabilities", [])]
    assert gpus, "the worker reserves no NVIDIA GPU"
    assert all(device.get("count") or device.get("device_ids") for device in gpus)


def test_the_share_server_publishes_and_probes_the_port_serve_listens_on():
    web = _services()["web"]
    serve = cli.build_parser().parse_args(_argvs(web["command"])[0][1:])
    published = set()
    for port in web["ports"]:
        if isinstance(port, dict):
            published.add(int(port["target"]))
        else:
            published.add(int(str(port).split("/")[0].rsplit(":", 1)[-1]))
    assert serve.port in published
    probe = " ".join(" ".join(argv) for argv in _argvs(web["healthcheck"]["test"]))
    assert f":{serve.port}/healthz" in probe


def test_the_dockerfile_has_every_target_compose_builds():
    stages = _stages()
    targets = {}
    for name, service in _services().items():
        build = service.get("build")
        if build is not None:
            assert isinstance(build, dict) and build.get("target"), f"{name}: name a target"
            assert build["target"] in stages, f"{name}: no `FROM … AS {build['target']}`"
            targets[name] = build["target"]
    assert targets == {"web": "app", "slack": "app", "telegram": "app", "worker": "worker"}


def _extras_with_torch() -> set[str]:
    """The pyproject extras that bring torch, directly or through another extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]

    def brings_torch(extra: str) -> bool:
        for requirement in extras[extra]:
            name = re.split(r"[<>=!~; ]", requirement)[0]
            inner = name.removeprefix("lessonreel[").rstrip("]").split(",") \
                if name.startswith("lessonreel[") else []
            if name.lower() == "torch" or any(brings_torch(other) for other in inner):
                return True
        return False

    return {extra for extra in extras if brings_torch(extra)}


def test_the_slim_image_installs_no_torch():
    stages = _stages()
    family = _stage_family("app", stages)
    bases = {stages[stage]["base"] for stage in family} - set(stages)
    assert bases and all(re.fullmatch(r"python:3\.1[1-9]-slim\S*", base) for base in bases)
    forbidden = _extras_with_torch()
    assert {"worker", "all"} <= forbidden  # else the checks below would check nothing
    # The extras the image may be built with: the ARG's default, compose's, .env.example's.
    chosen = {re.sub(r"^\$\{\w+:-(.*)\}$", r"\1", str(value))
              for value in _services()["web"]["build"].get("args", {}).values()}
    chosen.add(_env_example()["LESSONREEL_APP_EXTRAS"][0])
    installs = []
    for stage in family:
        args = stages[stage]["args"]
        chosen |= {value for key, value in args.items() if key == "APP_EXTRAS"}
        installs += [argv for keyword, rest in stages[stage]["lines"] if keyword == "RUN"
                     for argv in _split_shell(_substitute(rest, args))
                     if "pip" in argv[0] and "install" in argv]
    assert installs, "found no pip install in the app image"
    for argv in installs:
        for word in argv:
            assert not re.match(r"torch\b", word), f"the app image installs {word}"
            for extras in re.findall(r"\.\[([^\]]+)\]", word):
                assert not set(extras.split(",")) & forbidden, f"the app image installs {word}"
    for extras in chosen:
        assert not set(extras.split(",")) & forbidden, f"APP_EXTRAS={extras} brings torch"


def test_the_build_context_leaves_out_secrets_but_not_what_the_images_copy():
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    assert {".env", ".venv", ".git"} <= set(ignored)
    copied = {path for keyword, rest in _dockerfile_instructions() if keyword == "COPY"
              and "--from=" not in rest for path in rest.split()[:-1]}
    assert {"pyproject.toml", "engine", "bot", "worker", "config", "prompts"} <= copied
    assert sorted(path for path in copied for pattern in ignored
                  if fnmatch.fnmatch(path, pattern)) == []


def test_the_worker_image_starts_from_a_cuda_build_of_torch():
    base = _stages()["worker"]["base"]
    assert re.match(r"(pytorch/pytorch:\S+-cuda|nvidia/cuda:)", base), base


def test_the_scan_finds_every_way_the_code_reads_a_variable():
    source = (
        'import os\nfrom os import environ, getenv\n'
        'SECRET_ENV = "LESSONREEL_SHARE_SECRET"\nPREFIX = "LESSONREEL_"\n'
        'def f(env):\n'
        '    os.environ.get("XDG_DATA_HOME")\n    getenv("HF_HOME")\n'
        '    environ["CUDA_VISIBLE_DEVICES"]\n    env.get(SECRET_ENV)\n'
        '    env.get(PREFIX + "CONFIG")\n    "PYTORCH_CUDA_ALLOC_CONF" in os.environ\n'
        '    names = ("SLACK_BOT_TOKEN",)\n'
        '    os.environ["WRITTEN_ONLY"] = "1"\n    return "NOT_A_VARIABLE"\n'
    )
    assert _variables_read_by(source) == {
        "XDG_DATA_HOME", "HF_HOME", "CUDA_VISIBLE_DEVICES", "LESSONREEL_SHARE_SECRET",
        "LESSONREEL_CONFIG", "PYTORCH_CUDA_ALLOC_CONF", "SLACK_BOT_TOKEN"}
    # And on the real code: a constant (share.py), a sum (settings.py), a plain literal.
    assert {"LESSONREEL_SHARE_SECRET", "LESSONREEL_CONFIG", "XDG_DATA_HOME",
            "TELEGRAM_BOT_TOKEN"} <= _variables_the_code_reads()


def test_every_variable_compose_or_the_code_reads_is_in_env_example_with_a_comment():
    compose = _compose()
    needed: dict[str, str] = {}

    def interpolations(value: Any, where: str) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                interpolations(key, where)
                interpolations(inner, f"{where}.{key}")
        elif isinstance(value, list):
            for inner in value:
                interpolations(inner, where)
        elif isinstance(value, str):
            for name in re.findall(r"(?<!\$)\$\{?([A-Za-z_]\w*)", value):
                needed.setdefault(name, f"docker-compose.yml {where}")

    interpolations(compose, "")
    for name, service in compose["services"].items():
        for key in _environment(service):
            needed.setdefault(key, f"docker-compose.yml {name}.environment")
    for stage, info in _stages().items():
        for keyword, rest in info["lines"]:
            if keyword == "ENV":
                for key in re.findall(r"(?:^|\s)(LESSONREEL_\w+)=", rest):
                    needed.setdefault(key, f"Dockerfile {stage} ENV")
    for name in _variables_the_code_reads():
        if not _is_setting_override(name):  # those are covered by the <SECTION>__<KEY> note
            needed.setdefault(name, "the code")

    documented = _env_example()
    missing = sorted(f"{name} (read by {where})" for name, where in needed.items()
                     if name not in documented)
    assert missing == []
    uncommented = sorted(name for name, (_, comment) in documented.items() if not comment)
    assert uncommented == []


def test_env_example_explains_setting_overrides_and_names_only_real_settings():
    text = ENV_EXAMPLE.read_text(encoding="utf-8")
    assert "LESSONREEL_<SECTION>__<KEY>" in text
    overrides = set(re.findall(r"\b(LESSONREEL_[A-Z0-9_]*__[A-Z0-9_]+)\b", text))
    overrides |= {name for service in _services().values() for name in _environment(service)
                  if _is_setting_override(name)}
    overrides |= {name for name in _variables_the_code_reads() if _is_setting_override(name)}
    assert overrides, "nothing to check"
    assert sorted(name for name in overrides if not _names_a_setting(name)) == []
