"""Plain edits applied by rule, and the scene-by-scene account of what changed."""

import pytest

from engine.changes import describe_changes
from engine.drafter import draft_storyboard
from engine.edits import EditError, retime
from engine.edits import apply_plain_edit as plain_edit


@pytest.fixture
def board(settings):
    # 30 s: a 2 s title card and scenes of 6, 6, 6, 5, 5 s
    return draft_storyboard("Explain photosynthesis to grade 7 in 30 seconds", settings).storyboard


@pytest.fixture
def zh_board(settings):
    return draft_storyboard("用30秒给初一学生讲解光合作用", settings).storyboard


def apply_plain_edit(board, message):
    """The edited storyboard, or None when the message is not one plain edit."""
    edit = plain_edit(board, message)
    return edit.storyboard if edit else None


def _durations(board):
    return [scene.duration for scene in board.scenes]


def _ids(board):
    return [scene.id for scene in board.scenes]


@pytest.mark.parametrize("message", ["make scene 2 shorter", "Please make scene 2 shorter.",
                                     "the second scene a bit shorter", "场景2短一点", "缩短场景2"])
def test_shorter_takes_two_seconds_off_one_scene(board, message):
    edited = apply_plain_edit(board, message)
    assert _durations(edited) == [6, 4, 6, 5, 5]
    assert describe_changes(board, edited) == ["Scene 2: 6 s → 4 s", "Total: 30 s → 28 s"]


@pytest.mark.parametrize("message", ["scene 3 to 8 seconds", "set scene 3 to 8 s",
                                     "把场景3改成8秒", "第三个场景改为8秒"])
def test_a_scene_duration_can_be_set(board, message):
    assert _durations(apply_plain_edit(board, message)) == [6, 6, 8, 5, 5]


@pytest.mark.parametrize("message", ["delete scene 3", "remove the third scene", "删除场景3",
                                     "把第3个场景删掉"])
def test_deleting_a_scene_keeps_the_others_and_their_ids(board, message):
    edited = apply_plain_edit(board, message)
    ids = _ids(board)
    assert _ids(edited) == ids[:2] + ids[3:]
    assert describe_changes(board, edited)[0].startswith("Removed scene 3")


@pytest.mark.parametrize(
    ("message", "order", "said"),
    [
        ("move scene 4 to the start", [3, 0, 1, 2, 4], "Scene 4 moved to position 1"),
        ("move scene 2 to the start", [1, 0, 2, 3, 4], "Scene 2 moved to position 1"),
        ("move scene 1 to the end", [1, 2, 3, 4, 0], "Scene 1 moved to position 5"),
        ("move scene 1 after scene 3", [1, 2, 0, 3, 4], "Scene 1 moved to position 3"),
        ("move scene 5 before scene 4", [0, 1, 2, 4, 3], "Scene 5 moved to position 4"),
        ("move scene 2 to position 4", [0, 2, 3, 1, 4], "Scene 2 moved to position 4"),
        # Chinese commands work on an English storyboard, whose replies stay English
        ("把场景4移到开头", [3, 0, 1, 2, 4], "Scene 4 moved to position 1"),
        ("把第二个场景移到第4个", [0, 2, 3, 1, 4], "Scene 2 moved to position 4"),
        ("把场景1移到场景3之后", [1, 2, 0, 3, 4], "Scene 1 moved to position 3"),
    ],
)
def test_moving_a_scene_names_only_the_scene_that_moved(board, message, order, said):
    edit = plain_edit(board, message)
    ids = _ids(board)
    assert _ids(edit.storyboard) == [ids[i] for i in order]
    assert describe_changes(board, edit.storyboard, edit.moved) == [said]


def test_duplicating_a_scene_gives_the_copy_a_new_id(board):
    edited = apply_plain_edit(board, "duplicate scene 1")
    assert len(edited.scenes) == 6
    assert edited.scenes[1].visual == board.scenes[0].visual
    assert edited.scenes[1].id not in _ids(board)
    assert describe_changes(board, edited)[0].startswith("Added scene 2")


@pytest.mark.parametrize(("message", "aspect"), [("9:16", "9:16"), ("make it vertical", "9:16"),
                                                 ("square", "1:1"), ("竖屏", "9:16"),
                                                 ("改成方形", "1:1")])
def test_aspect_ratio_changes_by_rule(board, message, aspect):
    assert apply_plain_edit(board, message).aspect == aspect


def test_a_new_seed_changes_one_scene_only(board):
    edited = apply_plain_edit(board, "new seed for scene 2")
    assert [s.seed != t.seed for s, t in zip(board.scenes, edited.scenes, strict=True)] == [
        False, True, False, False, False]
    assert describe_changes(board, edited) == ["Scene 2: new seed (a different take)"]


@pytest.mark.parametrize(("message", "total"), [("make it 45 seconds", 45),
                                                ("make the video 20 seconds long", 20),
                                                ("总时长改成45秒", 45)])
def test_total_length_rescales_scenes_in_proportion(board, message, total):
    edited = apply_plain_edit(board, message)
    assert edited.total_seconds == total
    assert _durations(edited) == sorted(_durations(edited), reverse=True)  # order kept


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ("scene 9 to 4 seconds", "There is no scene 9; this storyboard has 5 scenes."),
        ("scene 2 to 30 seconds", "A scene lasts 2 to 10 seconds."),
        ("make it 2 minutes", "cannot be shared among 5 scenes"),
    ],
)
def test_impossible_plain_edits_say_why(board, message, error):
    with pytest.raises(EditError, match=error):
        apply_plain_edit(board, message)


def test_a_scene_at_its_shortest_cannot_get_shorter(board):
    short = apply_plain_edit(board, "scene 1 to 2 seconds")
    with pytest.raises(EditError, match="already 2 s"):
        apply_plain_edit(short, "make scene 1 shorter")


def test_the_last_scene_cannot_be_deleted(settings):
    tiny = draft_storyboard("Explain magnets in 8 seconds", settings).storyboard
    assert len(tiny.scenes) == 1
    with pytest.raises(EditError, match="at least one scene"):
        apply_plain_edit(tiny, "delete scene 1")


@pytest.mark.parametrize("message", ["make scene 2 shorter and funnier", "add a quiz at the end",
                                     "use a chalkboard style", "why is scene 2 so long?",
                                     "make it 45 seconds and in Chinese"])
def test_anything_more_than_one_plain_edit_is_left_to_the_language_model(board, message):
    assert apply_plain_edit(board, message) is None


def test_changes_are_described_in_the_storyboards_language(zh_board):
    edited = apply_plain_edit(zh_board, "删除场景3")
    assert describe_changes(zh_board, edited)[0].startswith("删除了场景 3")


@pytest.mark.parametrize(("durations", "body"), [([6, 6, 6, 5, 5], 43), ([2, 10], 12),
                                                 ([10] * 12, 24), ([3], 10), ([5, 5, 5], 7)])
def test_retime_hits_the_total_within_bounds(durations, body):
    result = retime(durations, body)
    if 2 * len(durations) <= body <= 10 * len(durations):
        assert sum(result) == body
        assert all(2 <= d <= 10 for d in result)
    else:
        assert result is None


@pytest.mark.parametrize(("message", "voice", "music"), [
    ("voice en-gb", "en-gb", ""), ("use voice cmn-latn-pinyin", "cmn-latn-pinyin", ""),
    ("配音 en-us", "en-us", ""), ("no music", "", "none"), ("不要背景音乐", "", "none"),
    ("music calm_piano.mp3", "", "calm_piano.mp3"), ("背景音乐改成 轻音乐.mp3", "", "轻音乐.mp3"),
])
def test_the_voice_and_the_music_are_chosen_by_plain_edits(board, message, voice, music):
    edited = apply_plain_edit(board, message)
    assert (edited.voice, edited.music) == (voice, music)
    assert [scene.duration for scene in edited.scenes] == [s.duration for s in board.scenes]
    back = apply_plain_edit(edited, "voice default" if voice else "music default")
    assert (back.voice, back.music) == ("", "")


@pytest.mark.parametrize("message", ["use music to show the rhythm of the poem", "voice over",
                                     "music that feels calm"])
def test_sentences_about_music_or_voices_are_not_taken_as_choices(board, message):
    assert apply_plain_edit(board, message) is None


def test_a_sound_choice_is_said_and_kept_through_a_model_edit(board):
    from engine.drafter import styles
    from engine.llm import Answer, AnswerScene, answer_to_storyboard

    edited = apply_plain_edit(board, "no music")
    assert describe_changes(board, edited) == ["Music: the school's default → none"]
    answer = Answer(title="New", audience=board.audience, language=board.language,
                    aspect=board.aspect, style=next(iter(styles())), reply="ok",
                    scenes=[AnswerScene(id=s.id, visual=s.visual, narration=s.narration,
                                        on_screen_text=s.on_screen_text or "",
                                        duration=s.duration) for s in edited.scenes])
    after = answer_to_storyboard(answer, edited, styles(), grade=None, title_card_seconds=2,
                                 salt="t")
    assert after.title == "New" and after.music == "none"


def test_music_random_asks_for_a_random_track_whatever_the_school_default(board):
    assert apply_plain_edit(board, "music random").music == "random"

