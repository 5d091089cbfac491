"""The Storyboard model: its bounds, its schema, its length limit, and its versions."""

import json

import pytest
from pydantic import ValidationError

from engine.errors import StoryboardError
from engine.history import StoryboardHistory
from engine.storyboard import MAX_SCENES, Storyboard, storyboard_json_schema
from tests.conftest import make_storyboard


def _data(**changes):
    data = make_storyboard().model_dump()
    data.update(changes)
    return data


def test_a_valid_storyboard_reports_its_total_and_frame_size():
    storyboard = make_storyboard((3, 4, 5), title_card_seconds=2)
    assert storyboard.total_seconds == 14
    assert storyboard.frame_size == (832, 480)
    assert make_storyboard(aspect="9:16").frame_size == (480, 832)
    assert make_storyboard(aspect="1:1").frame_size == (640, 640)


@pytest.mark.parametrize(
    "changes",
    [
        {"scenes": []},
        {"scenes": [dict(make_storyboard().scenes[0].model_dump(), id=f"s{i}")
                    for i in range(MAX_SCENES + 1)]},
        {"title": ""},
        {"title": "x" * 81},
        {"title": "   "},
        {"title": "bell\x07"},
        {"aspect": "7:3"},
        {"language": "xx"},
        {"grade": 14},
        {"unexpected": "field"},
        {"style": {"name": "x", "background": "red", "accent": "#000000", "text": "#000000"}},
    ],
)
def test_storyboard_bounds_are_enforced(changes):
    with pytest.raises(ValidationError):
        Storyboard.model_validate(_data(**changes))


@pytest.mark.parametrize(
    "scene_changes",
    [
        {"duration": 1}, {"duration": 11}, {"narration": "n" * 401}, {"visual": ""},
        {"on_screen_text": "t" * 81}, {"seed": -1}, {"seed": 2**31}, {"id": "Bad Id"},
        {"image": "../../etc/passwd"}, {"image": "/abs/path.png"},
    ],
)
def test_scene_bounds_are_enforced(scene_changes):
    scenes = [scene.model_dump() for scene in make_storyboard().scenes]
    scenes[0].update(scene_changes)
    with pytest.raises(ValidationError):
        Storyboard.model_validate(_data(scenes=scenes))


def test_scene_ids_must_be_unique():
    scenes = [scene.model_dump() for scene in make_storyboard().scenes]
    scenes[1]["id"] = scenes[0]["id"]
    with pytest.raises(ValidationError, match="unique"):
        Storyboard.model_validate(_data(scenes=scenes))


def test_whitespace_is_collapsed():
    storyboard = Storyboard.model_validate(_data(title="  Light \n and   shadow "))
    assert storyboard.title == "Light and shadow"


def test_json_schema_bounds_every_string_and_list():
    schema = storyboard_json_schema()
    json.dumps(schema)  # exportable as plain JSON
    unbounded = []

    def walk(node, path):
        if isinstance(node, dict):
            if node.get("type") == "string" and not {"maxLength", "enum", "const"} & set(node):
                unbounded.append(path)
            if node.get("type") == "array" and "maxItems" not in node:
                unbounded.append(path)
            for key, value in node.items():
                walk(value, f"{path}/{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{path}/{index}")

    walk(schema, "")
    assert unbounded == []
    scene = schema["$defs"]["Scene"]["properties"]
    assert scene["duration"]["minimum"] == 2
    assert scene["duration"]["maximum"] == 10
    assert schema["properties"]["scenes"]["maxItems"] == MAX_SCENES


def test_total_length_limit_comes_from_settings():
    storyboard = make_storyboard((10,) * 12, title_card_seconds=2)
    storyboard.check_total(180)
    with pytest.raises(StoryboardError, match="2 min 2 s, longer than the 1 min limit"):
        storyboard.check_total(60)


def test_revise_makes_a_new_validated_storyboard_and_leaves_the_old_one():
    original = make_storyboard()
    revised = original.revise(title="New title")
    assert revised.title == "New title"
    assert original.title == "Test lesson"
    with pytest.raises(ValidationError):
        original.revise(title="")


def test_an_edit_makes_a_new_version_and_earlier_versions_stay_readable(redis_connection):
    history = StoryboardHistory(redis_connection)
    original = make_storyboard()
    assert history.append("slack:T1:C1:123.456", original, "drafted") == 1
    shorter = original.revise(scenes=[original.scenes[0]])
    assert history.append("slack:T1:C1:123.456", shorter, "removed scene 2") == 2

    assert history.count("slack:T1:C1:123.456") == 2
    assert history.get("slack:T1:C1:123.456", 1).storyboard == original
    latest = history.latest("slack:T1:C1:123.456")
    assert latest.number == 2
    assert latest.storyboard == shorter
    assert latest.note == "removed scene 2"
    assert history.latest("another-thread") is None
    with pytest.raises(StoryboardError, match="versions 1 to 2"):
        history.get("slack:T1:C1:123.456", 3)
