"""Conversation turns without a language model: rule-based drafts, plain edits, clear replies."""

import pytest

from engine.dialogue import Dialogue


@pytest.fixture
def dialogue(redis_connection, settings):
    return Dialogue(redis_connection, settings, llm=None)


def test_first_message_drafts_and_says_the_language_model_is_missing(dialogue):
    reply = dialogue.turn("slack:C1:1", "Explain photosynthesis to grade 7 in 30 seconds")
    assert not reply.failed
    assert reply.version == 1
    assert reply.storyboard.total_seconds == 30
    assert "first draft" in reply.message
    assert "language model is not installed" in reply.message


def test_a_plain_edit_makes_a_new_version_and_says_what_changed(dialogue):
    dialogue.turn("t", "Explain photosynthesis to grade 7 in 30 seconds")
    reply = dialogue.turn("t", "make scene 2 shorter")
    assert reply.version == 2
    assert reply.changes == ("Scene 2: 6 s → 4 s", "Total: 30 s → 28 s")
    assert "• Scene 2: 6 s → 4 s" in reply.text and "Version 2." in reply.text
    assert dialogue.history.get("t", 1).storyboard.scenes[1].duration == 6


def test_without_a_language_model_a_free_edit_is_explained_and_nothing_changes(dialogue):
    first = dialogue.turn("t", "Explain magnets in 20 seconds")
    reply = dialogue.turn("t", "make it funnier and add a quiz")
    assert reply.failed
    assert "language model is not installed" in reply.message
    assert "make scene 2 shorter" in reply.message
    assert reply.storyboard == first.storyboard and reply.version == 1
    assert dialogue.history.count("t") == 1


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("", "Your message is empty"),
        ("   \x00\x07  ", "Your message is empty"),
        ("x" * 20_000, "20,000 characters long; the limit is 4,000"),
        ("Explain history in 2 hours", "at most 3 min"),
    ],
)
def test_bad_first_messages_get_a_polite_answer_and_no_storyboard(dialogue, message, expected):
    reply = dialogue.turn("t", message)
    assert reply.failed and expected in reply.message
    assert reply.storyboard is None and dialogue.history.count("t") == 0


def test_an_impossible_edit_keeps_the_storyboard(dialogue):
    dialogue.turn("t", "Explain magnets in 20 seconds")
    reply = dialogue.turn("t", "delete scene 9")
    assert reply.failed and "There is no scene 9" in reply.message
    assert reply.version == 1 and dialogue.history.count("t") == 1


def test_chinese_conversation_is_answered_in_chinese(dialogue):
    dialogue.turn("t", "用30秒给初一学生讲解光合作用")
    reply = dialogue.turn("t", "场景2短一点")
    assert reply.message == "好的，已修改。"
    assert reply.changes[0] == "场景 2：6 s → 4 s"
    assert "第 2 版。" in reply.text


def test_conversations_are_kept_apart(dialogue):
    dialogue.turn("a", "Explain magnets in 20 seconds")
    dialogue.turn("b", "Explain volcanoes in 40 seconds")
    dialogue.turn("a", "delete scene 1")
    assert dialogue.history.count("a") == 2 and dialogue.history.count("b") == 1
    assert dialogue.history.latest("b").storyboard.total_seconds == 40


def test_recent_turns_are_bounded(dialogue):
    dialogue.turn("t", "Explain magnets in 20 seconds")
    for _ in range(10):
        dialogue.turn("t", "9:16")
    turns = dialogue.turns.recent("t")
    assert len(turns) == 8
    assert turns[-1].role == "assistant" and turns[-2].text == "9:16"


def test_a_colleagues_edit_in_the_meantime_is_kept_not_overwritten(dialogue, monkeypatch):
    """Two people edit one thread; the slower edit must not silently undo the faster one."""
    import engine.dialogue

    dialogue.turn("t", "Explain magnets in 30 seconds")
    real_edit = engine.dialogue.apply_plain_edit

    def colleague_gets_in_first(storyboard, message):
        edited = real_edit(storyboard, message)
        colleague = real_edit(storyboard, "delete scene 1").storyboard  # lands while we work
        dialogue.history.append("t", colleague, "colleague")
        return edited

    monkeypatch.setattr(engine.dialogue, "apply_plain_edit", colleague_gets_in_first)
    reply = dialogue.turn("t", "make scene 2 shorter")
    assert reply.failed and "Someone else changed this storyboard" in reply.message
    assert dialogue.history.count("t") == 2
    assert dialogue.history.latest("t").note == "colleague"
