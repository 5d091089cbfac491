"""Settings: defaults, a config file over them, the environment over both, one clear sentence."""

from pathlib import Path

import pytest

from engine.errors import SettingsError
from engine.settings import load_settings


def test_defaults_come_from_the_default_file():
    settings = load_settings({})
    assert settings.render.fps == 24
    assert settings.limits.max_total_seconds == 180
    assert settings.storyboard.aspect == "16:9"
    assert settings.redis_url == ""


def test_config_file_overrides_defaults_and_environment_overrides_the_file(tmp_path: Path):
    config = tmp_path / "school.toml"
    config.write_text('[render]\nfps = 30\ncrf = 23\n[storyboard]\nlanguage = "zh"\n')
    settings = load_settings({
        "LESSONREEL_CONFIG": str(config),
        "LESSONREEL_RENDER__FPS": "25",
        "LESSONREEL_DATA_DIR": str(tmp_path / "d"),
    })
    assert settings.render.fps == 25  # environment beats the file
    assert settings.render.crf == 23  # the file beats the defaults
    assert settings.storyboard.language == "zh"
    assert settings.render.preview_crf == 30  # untouched keys keep their defaults
    assert settings.data_path == tmp_path / "d"
    assert settings.media_path == tmp_path / "d" / "media"


def test_data_dir_defaults_to_xdg_data_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert load_settings({}).data_path == tmp_path / "lessonreel"


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"LESSONREEL_RENDER__FPS": "abc"},
         "Setting render.fps (from LESSONREEL_RENDER__FPS) must be a whole number from 8 to 60; "
         "got 'abc'."),
        ({"LESSONREEL_RENDER__FPS": "500"}, "must be a whole number from 8 to 60; got '500'"),
        ({"LESSONREEL_STORYBOARD__ASPECT": "7:3"}, "must be one of '16:9', '9:16', '1:1'"),
        ({"LESSONREEL_RENDER__FSP": "3"},
         "LESSONREEL_RENDER__FSP sets render.fsp, which is not a setting"),
        ({"LESSONREEL_NOSUCH__KEY": "1"},
         "LESSONREEL_NOSUCH__KEY sets nosuch, which is not a setting"),
        ({"LESSONREEL_CONFIG": "/definitely/not/here.toml"},
         "LESSONREEL_CONFIG names /definitely/not/here.toml, which does not exist."),
    ],
)
def test_a_bad_value_stops_start_up_naming_key_source_and_what_is_allowed(environ, expected):
    with pytest.raises(SettingsError) as caught:
        load_settings(environ)
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"LESSONREEL_LIMITS__MAX_TOTAL_SECONDS": "30"},
         "storyboard.total_seconds (45) must lie between limits.min_total_seconds (6) and "
         "limits.max_total_seconds (30)"),
        ({"LESSONREEL_STORYBOARD__TITLE_CARD_SECONDS": "5"},
         "limits.min_total_seconds (6) must be at least storyboard.title_card_seconds + 2 (7)"),
        ({"LESSONREEL_LIMITS__MIN_TOTAL_SECONDS": "60",
          "LESSONREEL_LIMITS__MAX_TOTAL_SECONDS": "50",
          "LESSONREEL_STORYBOARD__TOTAL_SECONDS": "55"},
         "limits.min_total_seconds (60) must not exceed limits.max_total_seconds (50)"),
    ],
)
def test_settings_that_contradict_each_other_stop_start_up(environ, expected):
    with pytest.raises(SettingsError, match="do not fit together") as caught:
        load_settings(environ)
    assert expected in str(caught.value)


def test_a_config_path_through_a_file_is_a_clear_error(tmp_path: Path):
    blocker = tmp_path / "hostname"
    blocker.write_text("x")
    with pytest.raises(SettingsError, match="cannot be read"):
        load_settings({"LESSONREEL_CONFIG": str(blocker / "x.toml")})


def test_invalid_toml_file_is_named_with_the_parse_error(tmp_path: Path):
    config = tmp_path / "broken.toml"
    config.write_text("[render\nfps = 30\n")
    with pytest.raises(SettingsError, match=r"broken\.toml is not valid TOML: .*line 1"):
        load_settings({"LESSONREEL_CONFIG": str(config)})


def test_typo_in_config_file_names_the_file_and_the_known_keys(tmp_path: Path):
    config = tmp_path / "typo.toml"
    config.write_text("[limits]\nmax_total_second = 60\n")
    with pytest.raises(SettingsError) as caught:
        load_settings({"LESSONREEL_CONFIG": str(config)})
    assert str(config) in str(caught.value)
    assert "max_total_seconds" in str(caught.value)


def test_variables_that_are_not_settings_are_ignored():
    settings = load_settings({"LESSONREEL_SHARE_SECRET": "s3cret", "OTHER__THING": "x"})
    assert settings.render.fps == 24
