"""baton.settings: one validated model for every environment variable, defaults included."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from baton.settings import Settings, get_settings


def test_defaults_without_environment() -> None:
    settings = Settings()
    assert settings.stage == "dev"
    assert settings.model == "baton-local"
    assert settings.openai_base_url is None
    assert settings.openai_api_key is None
    assert settings.max_depth == 8
    assert settings.retention_days == 7
    assert settings.inline_result_max_bytes == 32_768
    assert settings.max_wait_seconds == 25.0
    assert settings.retry_after_seconds == 2
    assert settings.extract_queue_url == ""
    assert settings.infer_queue_url == ""


def test_environment_variables_are_parsed_and_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBS_TABLE", "jobs-prod")
    monkeypatch.setenv("BUCKET_NAME", "bucket-prod")
    monkeypatch.setenv("EVENT_BUS_NAME", "baton-prod")
    monkeypatch.setenv("INFER_QUEUE_URL", "https://sqs.eu-west-1.amazonaws.com/1/infer")
    monkeypatch.setenv("BATON_MODEL", "gpt-4.1-mini")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:8080/v1")
    monkeypatch.setenv("BATON_MAX_DEPTH", "12")
    monkeypatch.setenv("BATON_MAX_WAIT_SECONDS", "7.5")
    monkeypatch.setenv("BATON_INLINE_RESULT_MAX_BYTES", "4096")
    settings = Settings()
    assert settings.jobs_table == "jobs-prod"
    assert settings.bucket == "bucket-prod"
    assert settings.event_bus == "baton-prod"
    assert settings.infer_queue_url == "https://sqs.eu-west-1.amazonaws.com/1/infer"
    assert settings.model == "gpt-4.1-mini"
    assert settings.openai_base_url == "http://127.0.0.1:8080/v1"
    assert settings.max_depth == 12
    assert settings.max_wait_seconds == 7.5
    assert settings.inline_result_max_bytes == 4096


def test_variable_names_are_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("baton_retention_days", "30")
    assert Settings().retention_days == 30


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BATON_MAX_DEPTH", "16"),  # Lambda's recursive-loop detection stops chains at 16
        ("BATON_MAX_DEPTH", "0"),
        ("BATON_MAX_DEPTH", "eight"),
        ("BATON_MAX_WAIT_SECONDS", "29"),  # API Gateway's integration timeout
        ("BATON_RETENTION_DAYS", "0"),
        ("BATON_MODEL", ""),
        ("BATON_INLINE_RESULT_MAX_BYTES", "10"),
        ("BATON_MODEL_TIMEOUT_SECONDS", "0"),
        ("BATON_WEBHOOK_TIMEOUT_SECONDS", "-1"),
        ("BATON_RESULT_URL_EXPIRY_SECONDS", "30"),
    ],
)
def test_invalid_values_are_rejected(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as raised:
        Settings()
    assert name in str(raised.value)


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(ValidationError):
        setattr(settings, "max_depth", 3)  # noqa: B010 - the assignment itself is what is tested


def test_get_settings_is_parsed_once_until_cleared(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATON_MODEL", "first")
    first = get_settings()
    monkeypatch.setenv("BATON_MODEL", "second")
    assert get_settings() is first
    get_settings.cache_clear()
    assert get_settings().model == "second"
