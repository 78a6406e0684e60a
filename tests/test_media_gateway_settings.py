"""Media gateway settings: environment variables, flags over them, and errors that name the setting."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from media_gateway.__main__ import build_parser, load_settings
from media_gateway.settings import Settings, SettingsError


def test_defaults_are_safe_for_local_development():
    settings = Settings.from_env({})

    assert settings == Settings()
    assert settings.runs_dir == Path("./exports/json")
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.log_level == "info"
    assert settings.cors_origins == ()
    assert settings.server == "granian"
    assert settings.accel_redirect == ""
    assert (settings.log_format, settings.signing_secret, settings.signed_url_ttl_seconds) == ("text", "", 86400)


def test_from_env_reads_every_setting():
    settings = Settings.from_env(
        {
            "MEDIA_GATEWAY_RUNS_DIR": "/srv/runs",
            "MEDIA_GATEWAY_LISTEN": "[::1]:0",
            "MEDIA_GATEWAY_LOG_LEVEL": "DEBUG",
            "MEDIA_GATEWAY_CORS_ORIGINS": "https://a.example, http://localhost:5173,,",
            "MEDIA_GATEWAY_SERVER": "UVICORN",
            "MEDIA_GATEWAY_ACCEL_REDIRECT": "/_runs/",
            "MEDIA_GATEWAY_LOG_FORMAT": "JSON",
            "MEDIA_GATEWAY_SIGNING_SECRET": "s3cret value",
            "MEDIA_GATEWAY_SIGNED_URL_TTL_SECONDS": " 600 ",
            "MEDIA_GATEWAY_WORKERS": "3",
            "UNRELATED": "x",
        }
    )

    assert settings.runs_dir == Path("/srv/runs")
    assert (settings.host, settings.port) == ("::1", 0)
    assert settings.log_level == "debug"
    assert settings.cors_origins == ("https://a.example", "http://localhost:5173")
    assert (settings.server, settings.accel_redirect) == ("uvicorn", "/_runs/")
    assert (settings.log_format, settings.signing_secret, settings.signed_url_ttl_seconds) == (
        "json",
        "s3cret value",
        600,
    )
    assert "s3cret" not in repr(settings)
    assert (settings.workers, settings.worker_count) == (3, 1)  # uvicorn runs one process whatever is asked


def test_granian_runs_a_worker_per_core_by_default():
    assert Settings().worker_count == (os.cpu_count() or 1)
    assert Settings(workers=2).worker_count == 2


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MEDIA_GATEWAY_LISTEN", "8080"),
        ("MEDIA_GATEWAY_LISTEN", "localhost:http"),
        ("MEDIA_GATEWAY_LISTEN", "localhost:70000"),
        ("MEDIA_GATEWAY_LISTEN", ":8080"),
        ("MEDIA_GATEWAY_LOG_LEVEL", "loud"),
        ("MEDIA_GATEWAY_CORS_ORIGINS", "https://a.example/path"),
        ("MEDIA_GATEWAY_CORS_ORIGINS", "a.example"),
        ("MEDIA_GATEWAY_SERVER", "hypercorn"),
        ("MEDIA_GATEWAY_ACCEL_REDIRECT", "_runs/"),
        ("MEDIA_GATEWAY_ACCEL_REDIRECT", "/_runs"),
        ("MEDIA_GATEWAY_ACCEL_REDIRECT", "/../etc/"),
        ("MEDIA_GATEWAY_ACCEL_REDIRECT", "/a b/"),
        ("MEDIA_GATEWAY_LOG_FORMAT", "xml"),
        ("MEDIA_GATEWAY_SIGNING_SECRET", "secret\n"),
        ("MEDIA_GATEWAY_SIGNED_URL_TTL_SECONDS", "0"),
        ("MEDIA_GATEWAY_SIGNED_URL_TTL_SECONDS", "1.5"),
        ("MEDIA_GATEWAY_SIGNED_URL_TTL_SECONDS", "-5"),
        ("MEDIA_GATEWAY_SIGNED_URL_TTL_SECONDS", "999999999999"),
        ("MEDIA_GATEWAY_WORKERS", "many"),
        ("MEDIA_GATEWAY_WORKERS", "257"),
    ],
)
def test_invalid_values_name_the_variable_and_the_flag(variable, value):
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({variable: value})

    flag = "--" + variable.removeprefix("MEDIA_GATEWAY_").lower().replace("_", "-")
    assert variable in str(caught.value) and flag in str(caught.value)
    assert value.strip() in str(caught.value) or "whitespace" in str(caught.value)


def test_flags_override_the_environment():
    environ = {
        "MEDIA_GATEWAY_RUNS_DIR": "/from/env",
        "MEDIA_GATEWAY_LISTEN": "127.0.0.1:1",
        "MEDIA_GATEWAY_LOG_LEVEL": "x",
    }
    args = build_parser().parse_args(["--runs-dir", "/from/flag", "--log-level", "warning", "--cors-origins", "*"])

    settings = load_settings(args, environ)

    assert settings.runs_dir == Path("/from/flag")
    assert settings.listen == "127.0.0.1:1"
    assert settings.log_level == "warning"
    assert settings.cors_origins == ("*",)


def test_help_documents_every_setting_and_its_variable():
    text = build_parser().format_help()

    for flag, variable in [
        ("--runs-dir", "MEDIA_GATEWAY_RUNS_DIR"),
        ("--listen", "MEDIA_GATEWAY_LISTEN"),
        ("--log-level", "MEDIA_GATEWAY_LOG_LEVEL"),
        ("--cors-origins", "MEDIA_GATEWAY_CORS_ORIGINS"),
        ("--server", "MEDIA_GATEWAY_SERVER"),
        ("--accel-redirect", "MEDIA_GATEWAY_ACCEL_REDIRECT"),
        ("--log-format", "MEDIA_GATEWAY_LOG_FORMAT"),
        ("--signing-secret", "MEDIA_GATEWAY_SIGNING_SECRET"),
        ("--signed-url-ttl-seconds", "MEDIA_GATEWAY_SIGNED_URL_TTL_SECONDS"),
    ]:
        assert flag in text and variable in text.replace("\n", "").replace(" ", "")


def test_bad_flag_value_exits_with_usage(capsys: pytest.CaptureFixture[str]):
    from media_gateway.__main__ import main

    with pytest.raises(SystemExit) as caught:
        main(["--listen", "nowhere"])

    assert caught.value.code == 2
    assert "MEDIA_GATEWAY_LISTEN (--listen)" in capsys.readouterr().err


def test_help_says_to_set_the_secret_through_the_environment():
    text = " ".join(build_parser().format_help().split())
    assert "Set it through the environment, not the command line" in text
    for endpoint in ("/healthz", "/readyz", "/metrics"):
        assert endpoint in text
