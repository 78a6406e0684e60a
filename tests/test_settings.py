"""Service settings: flags over environment over defaults, and errors that name the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from generation_service.settings import SHIPPED_TEMPLATES_DIR, Settings


def test_defaults_are_safe_for_local_use() -> None:
    settings = Settings.from_args([], environ={})
    assert settings.listen.startswith("127.0.0.1:")
    assert settings.runs_dir == Path("exports/json")


def test_flags_win_over_environment() -> None:
    env = {"GENERATION_BACKEND_URL": "http://swarm:7801/ComfyBackendDirect", "GENERATION_LISTEN": "0.0.0.0:1"}
    settings = Settings.from_args(["--listen", "127.0.0.1:2", "--history-poll-seconds", "0.5"], environ=env)
    assert settings.backend_url == "http://swarm:7801/ComfyBackendDirect"
    assert settings.listen == "127.0.0.1:2"
    assert settings.history_poll_seconds == 0.5


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        (["--backend-url", "swarm:7801"], {}, "--backend-url / GENERATION_BACKEND_URL"),
        ([], {"GENERATION_LISTEN": "nohost"}, "--listen / GENERATION_LISTEN"),
        (["--history-poll-seconds", "soon"], {}, "--history-poll-seconds / GENERATION_HISTORY_POLL_SECONDS"),
        (["--request-timeout-seconds", "0"], {}, "--request-timeout-seconds / GENERATION_REQUEST_TIMEOUT_SECONDS"),
        (["--log-level", "chatty"], {}, "--log-level / GENERATION_LOG_LEVEL"),
        (["--max-runs-in-flight", "1.5"], {}, "--max-runs-in-flight / GENERATION_MAX_RUNS_IN_FLIGHT"),
        (["--backend-retries", "-1"], {}, "--backend-retries / GENERATION_BACKEND_RETRIES"),
    ],
)
def test_invalid_values_stop_start_up_naming_the_setting(
    argv: list[str], env: dict[str, str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        Settings.from_args(argv, environ=env)
    assert info.value.code == 2
    assert named in capsys.readouterr().err


def test_help_documents_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        Settings.from_args(["--help"], environ={})
    text = " ".join(capsys.readouterr().out.split())
    for flag in [
        "--backend-url",
        "--swarm-backend-id",
        "--runs-dir",
        "--listen",
        "--media-base-url",
        "--history-poll-seconds",
        "--request-timeout-seconds",
        "--shutdown-grace-seconds",
        "--log-level",
    ]:
        assert flag in text
    assert "GENERATION_SWARM_BACKEND_ID" in text


def test_the_default_template_folder_is_the_packaged_one_and_help_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings.from_args([], environ={})
    assert Path(settings.templates_dir) == SHIPPED_TEMPLATES_DIR
    assert sorted(SHIPPED_TEMPLATES_DIR.glob("*.template.json"))
    assert Settings.from_args(["--templates-dir", ""], environ={}).templates_dir == ""  # empty: no templates
    with pytest.raises(SystemExit):
        Settings.from_args(["--help"], environ={})
    text = " ".join(capsys.readouterr().out.split())
    assert "default the templates shipped with the package" in text
    assert str(SHIPPED_TEMPLATES_DIR) not in text
    with pytest.raises(SystemExit):
        Settings.from_args(["--help"], environ={"GENERATION_TEMPLATES_DIR": "/srv/templates"})
    assert "default /srv/templates)" in " ".join(capsys.readouterr().out.split())
