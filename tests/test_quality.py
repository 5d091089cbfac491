"""Quality levels (draft, standard, high): parsed from config/models.toml, chosen by the
teacher, applied to a tiny random Wan pipeline loaded through the production path, and kept
apart in the clip cache."""

import logging
from functools import partial
from pathlib import Path

import pytest

from engine import presets
from engine.changes import describe_changes
from engine.drafter import styles
from engine.edits import apply_plain_edit
from engine.errors import SettingsError
from engine.llm import Answer, answer_to_storyboard
from engine.presets import QUALITIES, load_presets, plan_for
from engine.settings import load_settings
from tests.conftest import make_storyboard
from worker import pipelines
from worker.clips import clip_key
from worker.pipelines import apply_quality, attention_backend, generate, load_pipeline, warm_up
from worker.render import render_to_folder
from worker.synthetic import build_tiny_wan

PRESET = "wan2.1-t2v-1.3b"  # the settings' default preset: a Wan folder renders with its levels
SMALL = {"LESSONREEL_DIFFUSION__MAX_SIDE": "64", "LESSONREEL_DIFFUSION__MAX_FRAMES": "5",
         "LESSONREEL_DIFFUSION__RENDERER": "diffusion"}


@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory) -> Path:
    return build_tiny_wan(tmp_path_factory.mktemp("quality") / "wan")


@pytest.fixture
def use_model(monkeypatch, wan_folder):
    """Settings pointing at the tiny Wan folder; no steps override, so each level's own
    steps run."""
    def use(folder: Path = wan_folder, **extra: str):
        for name, value in {**SMALL, "LESSONREEL_DIFFUSION__MODEL_PATH": str(folder),
                            **extra}.items():
            monkeypatch.setenv(name, value)
        return load_settings()
    return use


def _presets_file(tmp_path: Path, **draft: str) -> Path:
    """config/models.toml with the Wan preset's draft table changed (TOML values as text)."""
    text = (presets.CONFIG_DIR / "models.toml").read_text(encoding="utf-8")
    head, rest = text.split(f'["{PRESET}".quality.draft]', 1)
    table, tail = rest.split("\n\n", 1)
    lines = dict(line.split(" = ", 1) for line in table.strip().splitlines()[1:])
    lines.update(draft)
    body = "\n".join(f"{key} = {value}" for key, value in lines.items())
    path = tmp_path / "models.toml"
    path.write_text(f'{head}["{PRESET}".quality.draft]\n{body}\n\n{tail}', encoding="utf-8")
    return path


def _use_presets(monkeypatch, path: Path) -> None:
    monkeypatch.setattr(presets, "load_presets", partial(load_presets.__wrapped__, path))


# -- the tables ----------------------------------------------------------------------------

def test_every_preset_has_three_levels_and_unmeasured_speedups_are_off():
    for preset in load_presets().values():
        assert set(preset.quality) == set(QUALITIES)
        levels = preset.quality
        assert levels["draft"].steps <= levels["standard"].steps <= levels["high"].steps
        assert not any(level.compile for level in levels.values()), "compile is unmeasured"
        assert levels["standard"].cache == levels["high"].cache == "none"
        assert not any(level.lora for level in levels.values())
    wan = load_presets()[PRESET].quality
    assert wan["draft"].steps < wan["standard"].steps < wan["high"].steps


@pytest.mark.parametrize(("values", "message"), [
    ({"attention": '"fast"'},
     r"quality\.draft\.attention: Input should be 'auto', 'native', 'flash3' or 'sage'"),
    ({"cache": '"teacache"'},
     r"quality\.draft\.cache: Input should be 'none', 'first_block' or 'mag'"),
    ({"cache": '"mag"'}, r"quality\.draft: .*mag_ratios"),
    ({"cache_threshold": "0.0"}, r"quality\.draft: .*cache_threshold above 0"),
    ({"lora": '"../turbo.safetensors"'}, r"quality\.draft\.lora: String should match"),
    ({"steps": "0"}, r"quality\.draft\.steps: Input should be greater than or equal to 1"),
])
def test_a_bad_quality_table_is_refused_naming_the_key(tmp_path, values, message):
    with pytest.raises(SettingsError, match=rf"Model preset '{PRESET}' in .*{message}"):
        load_presets(_presets_file(tmp_path, **values))


def test_a_preset_without_every_level_is_refused(tmp_path):
    text = (presets.CONFIG_DIR / "models.toml").read_text(encoding="utf-8")
    path = tmp_path / "models.toml"
    path.write_text(text.replace(f'["{PRESET}".quality.high]', '["unused-table"]'),
                    encoding="utf-8")
    with pytest.raises(SettingsError, match=r"quality: .*missing: high"):
        load_presets(path)


def test_the_default_level_comes_from_the_setting_and_a_bad_setting_stops_start_up(
    use_model, monkeypatch
):
    assert plan_for(use_model(), "16:9").quality == "standard"
    draft = plan_for(use_model(LESSONREEL_DIFFUSION__QUALITY="draft"), "16:9")
    assert (draft.quality, draft.steps, draft.cache) == (
        "draft", load_presets()[PRESET].quality["draft"].steps, "first_block")
    assert plan_for(use_model(), "16:9", "high").quality == "high"  # the teacher's pick wins
    monkeypatch.setenv("LESSONREEL_DIFFUSION__QUALITY", "ultra")
    with pytest.raises(SettingsError, match="quality"):
        load_settings()


# -- rendering at each level -----------------------------------------------------------------

@pytest.mark.parametrize("level", QUALITIES)
def test_each_quality_level_renders_a_clip_with_its_own_step_count(tmp_path, use_model, level):
    settings = use_model(LESSONREEL_DIFFUSION__CACHE_CLIPS="false")
    steps = []
    result = render_to_folder(make_storyboard((2,)).revise(quality=level), tmp_path / "out",
                              settings, on_step=lambda _scene, step, total: steps.append(
                                  (step, total)))
    expected = load_presets()[PRESET].quality[level].steps
    assert result.generated_scenes == [0]
    assert [step for step, _ in steps if step] == list(range(1, expected + 1))
    assert {total for _, total in steps} == {expected}


def test_draft_installs_the_first_block_cache_hook_and_standard_removes_it(use_model):
    settings = use_model(LESSONREEL_DIFFUSION__DEVICE="cpu")
    draft = plan_for(settings, "16:9", "draft")
    pipeline = load_pipeline(draft, "WanPipeline", "cpu")
    clip = generate(pipeline, draft, prompt="a leaf", image=None, frames=5, seed=1,
                    device="cpu")
    assert clip.frames.shape == (5, draft.height, draft.width, 3)
    head, tail = pipeline.transformer.blocks[0], pipeline.transformer.blocks[-1]
    assert head._diffusers_hook.get_hook("fbc_leader_block_hook") is not None
    assert tail._diffusers_hook.get_hook("fbc_block_hook") is not None
    assert pipeline.transformer.is_cache_enabled

    standard = plan_for(settings, "16:9", "standard")  # the same pipeline, shared weights
    assert load_pipeline(standard, "WanPipeline", "cpu") is pipeline
    generate(pipeline, standard, prompt="a leaf", image=None, frames=5, seed=1, device="cpu")
    assert not pipeline.transformer.is_cache_enabled
    assert head._diffusers_hook.get_hook("fbc_leader_block_hook") is None


def test_attention_auto_on_cpu_is_native_and_the_log_says_why(use_model, caplog):
    plan = plan_for(use_model(), "16:9", "standard")
    assert plan.attention == "auto"
    pipeline = load_pipeline(plan, "WanPipeline", "cpu")
    with caplog.at_level(logging.INFO, logger="worker.pipelines"):
        apply_quality(pipeline, plan, "cpu")
    assert pipelines.applied_attention(pipeline) == "native"
    assert "attention 'auto' needs CUDA; this worker runs on cpu" in caplog.text
    assert "using native (PyTorch SDPA) attention" in caplog.text
    processors = [module.processor for module in pipeline.transformer.modules()
                  if hasattr(getattr(module, "processor", None), "_attention_backend")]
    assert processors and all(p._attention_backend is None for p in processors)


def test_attention_auto_on_cuda_takes_what_is_installed(monkeypatch):
    installed: set[str] = set()
    monkeypatch.setattr(pipelines.importlib.util, "find_spec",
                        lambda name: object() if name in installed else None)
    assert attention_backend("auto", "cuda")[0] == "native"
    assert "neither FlashAttention 3" in attention_backend("auto", "cuda")[1]
    assert attention_backend("flash3", "cuda") == (
        "native", "attention 'flash3': flash_attn_interface is not installed")
    installed.add("sageattention")
    assert attention_backend("auto", "cuda:1") == ("sage", "")
    installed.add("flash_attn_interface")
    assert attention_backend("auto", "cuda") == ("flash3", "")
    assert attention_backend("sage", "cpu")[0] == "native"


def test_compile_and_warm_up_are_skipped_on_cpu_and_say_so(use_model, caplog):
    settings = use_model()
    plan = plan_for(settings, "16:9", "standard").model_copy(update={"compile": True})
    loads = sum(pipelines.load_counts.values())
    with caplog.at_level(logging.INFO, logger="worker.pipelines"):
        assert warm_up(plan, [(plan.width, plan.height, 5)], "cpu") == 0
        assert warm_up(plan.model_copy(update={"compile": False}), [(64, 32, 5)], "cuda") == 0
    assert sum(pipelines.load_counts.values()) == loads, "a skipped warm-up loads nothing"
    assert "warm-up skipped: compile runs on CUDA only, not cpu" in caplog.text
    assert "warm-up skipped: the quality does not compile" in caplog.text

    pipeline = load_pipeline(plan, "WanPipeline", "cpu")
    with caplog.at_level(logging.INFO, logger="worker.pipelines"):
        generate(pipeline, plan, prompt="a leaf", image=None, frames=5, seed=1, device="cpu")
    assert "compile skipped: regional torch.compile runs on CUDA only" in caplog.text
    assert all(block._compiled_call_impl is None for block in pipeline.transformer.blocks)


def test_a_lora_that_is_named_but_missing_gives_a_note_and_the_levels_own_steps(
    tmp_path, use_model, monkeypatch
):
    _use_presets(monkeypatch, _presets_file(
        tmp_path, lora='"turbo.safetensors"', lora_steps="4", lora_guidance="1.0"))
    settings = use_model(LESSONREEL_DIFFUSION__CACHE_CLIPS="false")
    steps = []
    result = render_to_folder(make_storyboard((2,)).revise(quality="draft"), tmp_path / "out",
                              settings, on_step=lambda _s, step, _t: steps.append(step))
    draft = load_presets()[PRESET].quality["draft"]
    assert max(steps) == draft.steps, "without the LoRA the 4-step recipe would be noise"
    assert result.generated_scenes == [0]
    assert any("draft quality ran without its speed-up (its LoRA turbo.safetensors is not in"
               in note for note in result.notes), result.notes


def test_a_lora_that_peft_cannot_load_gives_a_note_not_a_failure(tmp_path, monkeypatch):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "turbo.safetensors").write_bytes(b"not really")
    _use_presets(monkeypatch, _presets_file(tmp_path, lora='"turbo.safetensors"',
                                            lora_steps="4"))
    monkeypatch.setattr(presets.importlib.util, "find_spec", lambda name: None)
    chosen = presets.load_presets()[PRESET]
    steps, _guidance, lora, notes = presets._with_lora(chosen.quality["draft"], folder, "draft")
    assert (steps, lora) == (chosen.quality["draft"].steps, "")
    assert notes and "needs the peft package" in notes[0]
    monkeypatch.setattr(presets.importlib.util, "find_spec", lambda name: object())
    assert presets._with_lora(chosen.quality["draft"], folder, "draft")[:3] == (
        4, chosen.quality["draft"].guidance, str((folder / "turbo.safetensors").resolve()))


# -- the clip cache ------------------------------------------------------------------------

def test_the_clip_key_differs_between_levels_even_at_equal_steps(use_model):
    settings = use_model(LESSONREEL_DIFFUSION__STEPS="2")
    keys = set()
    for level in QUALITIES:
        plan = plan_for(settings, "16:9", level)
        assert plan.steps == 2
        keys.add(clip_key(plan, "WanPipeline", prompt="p", image=None, frames=5, seed=1,
                          dtype="float32"))
    assert len(keys) == len(QUALITIES)


def test_a_high_render_after_a_draft_render_does_not_reuse_the_draft_clip(tmp_path, use_model):
    settings = use_model(LESSONREEL_DIFFUSION__STEPS="2")  # equal steps: only the level differs
    board = make_storyboard((2,))
    draft = render_to_folder(board.revise(quality="draft"), tmp_path / "draft", settings)
    assert draft.generated_scenes == [0]
    high = render_to_folder(board.revise(quality="high"), tmp_path / "high", settings)
    assert high.generated_scenes == [0], "a draft clip was served for a high render"
    again = render_to_folder(board.revise(quality="high"), tmp_path / "again", settings)
    assert again.generated_scenes == [], "the high clip is cached under its own key"


# -- the teacher's choice --------------------------------------------------------------------

@pytest.mark.parametrize(("message", "quality"), [
    ("quality draft", "draft"), ("draft quality", "draft"), ("high quality", "high"),
    ("Please use standard quality.", "standard"), ("set the quality to high", "high"),
    ("质量 草稿", "draft"), ("质量 标准", "standard"), ("质量 高", "high"), ("高质量", "high"),
    ("quality default", ""),
])
def test_plain_edits_set_the_quality_and_say_so(message, quality):
    board = make_storyboard().revise(quality="standard" if quality != "standard" else "high")
    edit = apply_plain_edit(board, message)
    assert edit is not None and edit.storyboard.quality == quality
    assert any(line.startswith("Quality: ") for line in describe_changes(board, edit.storyboard))


def test_a_quality_word_inside_a_longer_request_is_not_a_plain_edit():
    for message in ("make scene 2 high quality", "a high quality video about volcanoes"):
        assert apply_plain_edit(make_storyboard(), message) is None


def test_the_change_line_names_the_level_in_the_storyboards_language():
    board = make_storyboard(language="zh")
    assert describe_changes(board, board.revise(quality="draft")) == ["画质：学校默认 → 草稿"]
    english = make_storyboard()
    assert describe_changes(english.revise(quality="high"), english) == [
        "Quality: high → the school's default"]


def test_a_model_edit_keeps_the_teachers_quality():
    board = make_storyboard().revise(quality="draft")
    answer = Answer.model_validate({
        "title": "Magnets", "audience": "Grade 5", "language": "en", "aspect": "16:9",
        "style": "lab", "reply": "ok",
        "scenes": [{"id": board.scenes[0].id, "visual": "a magnet", "narration": "n",
                    "on_screen_text": "", "duration": 4}],
    })
    edited = answer_to_storyboard(answer, board, styles(), grade=None, title_card_seconds=2,
                                  salt="t:2")
    assert edited.quality == "draft"
    fresh = answer_to_storyboard(answer, None, styles(), grade=None, title_card_seconds=2,
                                 salt="t:3")
    assert fresh.quality == ""


def test_a_worker_warms_one_bucket_per_aspect_only_when_its_quality_compiles(
        use_model, monkeypatch):
    from worker import runner

    settings = use_model()
    assert runner.warm_up_worker(settings) == 0  # standard does not compile: nothing to do
    asked = []

    def fake_warm_up(plan, sizes, device):  # the seam: what the worker asks to be warmed
        asked.append((plan.compile, sorted(sizes), device))
        return len(sizes)

    compiling = runner.plan_for

    def plan_that_compiles(settings, aspect, quality=""):
        return compiling(settings, aspect, quality).model_copy(update={"compile": True})

    monkeypatch.setattr(runner, "plan_for", plan_that_compiles)
    monkeypatch.setattr(pipelines, "warm_up", fake_warm_up)
    assert runner.warm_up_worker(settings) == len(asked[0][1]) >= 2  # 16:9/9:16 differ
    [(compiles, sizes, device)] = asked
    assert compiles and device == "cpu"
    assert {(w, h) for w, h, _frames in sizes} == {
        (plan.width, plan.height) for aspect in ("16:9", "9:16", "1:1")
        if (plan := plan_that_compiles(settings, aspect)) is not None}
