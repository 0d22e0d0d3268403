"""The real ChatClient against the scripted fake server, over real loopback sockets."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from sandgate.errors import ConfigError, InfrastructureError
from sandgate.generation import (
    Budget,
    BudgetExceeded,
    ChatClient,
    GenerationSettings,
    LLMRequestRejected,
    LLMResponseInvalid,
    LLMTimeout,
    LLMUnavailable,
)
from sandgate.generation.client import backoff_delay, parse_retry_after
from tests.fakes.openai_server import FakeOpenAIServer, Reply, closed_port, fake_llm  # noqa: F401

SECRET = "sk-test-SECRET-0123456789abcdef"
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]


def settings(server: FakeOpenAIServer, **kw: object) -> GenerationSettings:
    base = dict(base_url=server.url, model="fake-model", backoff_base_seconds=0.01,
                backoff_max_seconds=0.05, timeout_seconds=2.0, connect_timeout_seconds=1.0)
    base.update(kw)
    return GenerationSettings(**base)  # type: ignore[arg-type]


@pytest.fixture
def no_llm_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for var in list(os.environ):
        if var.startswith("SANDGATE_LLM_"):
            monkeypatch.delenv(var)


def test_request_on_the_wire(fake_llm: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDGATE_LLM_API_KEY", SECRET)
    fake_llm.enqueue(Reply.chat("hello", usage={"prompt_tokens": 7, "completion_tokens": 3,
                                                "total_tokens": 10}))
    with ChatClient(settings(fake_llm, temperature=0.3, max_tokens=123)) as client:
        completion = client.complete(MESSAGES)
    assert completion.content == "hello" and completion.finish_reason == "stop"
    assert completion.usage.total_tokens == 10 and not completion.usage.estimated
    assert completion.model == "fake-model-2024" and completion.requests == 1
    [req] = fake_llm.requests
    assert req.path == "/v1/chat/completions" and req.query == {}
    assert req.json == {"model": "fake-model", "messages": MESSAGES, "temperature": 0.3,
                        "max_tokens": 123, "stream": False}
    assert req.headers["authorization"] == f"Bearer {SECRET}"
    assert "api-key" not in req.headers
    assert req.headers["content-type"] == "application/json"


def test_azure_mode_uses_api_key_header_and_api_version(fake_llm: FakeOpenAIServer,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_AZURE_KEY", SECRET)
    fake_llm.enqueue(Reply.chat("ok"))
    s = settings(fake_llm, api_key_env="MY_AZURE_KEY", azure_api_version="2024-06-01",
                 temperature=None, max_tokens=50, max_tokens_field="max_completion_tokens")
    with ChatClient(s) as client:
        client.complete(MESSAGES)
    [req] = fake_llm.requests
    assert req.query == {"api-version": ["2024-06-01"]}
    assert req.headers["api-key"] == SECRET and "authorization" not in req.headers
    assert "temperature" not in req.json and req.json["max_completion_tokens"] == 50
    assert "max_tokens" not in req.json


def test_no_key_no_auth_header(fake_llm: FakeOpenAIServer, no_llm_env: None) -> None:
    fake_llm.enqueue(Reply.chat("ok"))
    with ChatClient(settings(fake_llm)) as client:
        client.complete(MESSAGES)
    assert "authorization" not in fake_llm.requests[0].headers


def test_429_retry_after_is_honoured(fake_llm: FakeOpenAIServer) -> None:
    fake_llm.enqueue(Reply.error(429, retry_after="0.2"), Reply.chat("ok"))
    with ChatClient(settings(fake_llm)) as client:
        started = time.monotonic()
        completion = client.complete(MESSAGES)
        elapsed = time.monotonic() - started
    assert completion.content == "ok" and completion.requests == 2
    assert len(fake_llm.requests) == 2
    gap = fake_llm.requests[1].received_at - fake_llm.requests[0].received_at
    assert gap >= 0.2 and elapsed >= 0.2


def test_503_retry_after_http_date_is_honoured(fake_llm: FakeOpenAIServer) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    fake_llm.enqueue(Reply.error(503, retry_after=when), Reply.chat("ok"))
    sleeps: list[float] = []
    with ChatClient(settings(fake_llm), sleep=sleeps.append) as client:
        assert client.complete(MESSAGES).content == "ok"
    # an HTTP date has one-second resolution; the wait is the date minus now, not the backoff
    assert len(sleeps) == 1 and 28.5 <= sleeps[0] <= 30.0


def test_retry_after_beyond_the_cap_gives_up_at_once(fake_llm: FakeOpenAIServer) -> None:
    fake_llm.enqueue(Reply.error(429, retry_after="3600"), Reply.chat("never"))
    with ChatClient(settings(fake_llm, max_retry_after_seconds=5)) as client:
        started = time.monotonic()
        with pytest.raises(LLMUnavailable) as info:
            client.complete(MESSAGES)
    assert time.monotonic() - started < 1
    assert "retry after 3600s" in str(info.value) and info.value.status == 429
    assert len(fake_llm.requests) == 1


def test_500_then_success_with_backoff(fake_llm: FakeOpenAIServer) -> None:
    fake_llm.enqueue(Reply.error(500), Reply.error(502), Reply.chat("ok"))
    sleeps: list[float] = []
    with ChatClient(settings(fake_llm), sleep=sleeps.append, rand=lambda: 1.0) as client:
        assert client.complete(MESSAGES).requests == 3
    assert len(fake_llm.requests) == 3
    assert sleeps == [0.01, 0.02]  # base * 2**retry, full jitter with rand() = 1


def test_retries_exhausted(fake_llm: FakeOpenAIServer) -> None:
    fake_llm.enqueue(*[Reply.error(500, message="boom")] * 3)
    with ChatClient(settings(fake_llm, max_retries=2)) as client:
        with pytest.raises(LLMUnavailable) as info:
            client.complete(MESSAGES)
    assert len(fake_llm.requests) == 3 and info.value.requests == 3
    assert isinstance(info.value, InfrastructureError)
    assert "HTTP 500: boom after 3 request(s)" in str(info.value)


def test_client_errors_are_not_retried(fake_llm: FakeOpenAIServer) -> None:
    fake_llm.enqueue(Reply.error(401, message="invalid api key"), Reply.chat("never"))
    with ChatClient(settings(fake_llm)) as client:
        with pytest.raises(LLMRequestRejected) as info:
            client.complete(MESSAGES)
    assert len(fake_llm.requests) == 1 and info.value.status == 401
    assert "invalid api key" in str(info.value) and "SANDGATE_LLM_API_KEY" in str(info.value)


def test_slow_response_times_out_then_the_retry_succeeds(fake_llm: FakeOpenAIServer) -> None:
    fake_llm.enqueue(Reply.chat("late", delay=1.5), Reply.chat("on time"))
    with ChatClient(settings(fake_llm, timeout_seconds=0.2)) as client:
        started = time.monotonic()
        completion = client.complete(MESSAGES)
    assert completion.content == "on time" and completion.requests == 2
    assert time.monotonic() - started < 1.2


def test_slow_response_without_retries_raises_a_named_timeout(fake_llm: FakeOpenAIServer) -> None:
    fake_llm.enqueue(Reply.chat("late", delay=1.5))
    with ChatClient(settings(fake_llm, timeout_seconds=0.2, max_retries=0)) as client:
        started = time.monotonic()
        with pytest.raises(LLMTimeout) as info:
            client.complete(MESSAGES)
    assert time.monotonic() - started < 1.0
    assert "read timeout SANDGATE_LLM_TIMEOUT_SECONDS=0.2s" in str(info.value)


def test_a_trickling_response_hits_the_request_deadline(fake_llm: FakeOpenAIServer) -> None:
    fake_llm.enqueue(Reply.trickle("x" * 2000, pieces=20, delay=0.05))
    s = settings(fake_llm, timeout_seconds=1.0, request_deadline_seconds=0.3, max_retries=0)
    with ChatClient(s) as client:
        started = time.monotonic()
        with pytest.raises(LLMTimeout, match="REQUEST_DEADLINE_SECONDS=0.3s"):
            client.complete(MESSAGES)
    assert time.monotonic() - started < 0.9


def test_dropped_connection_is_retried(fake_llm: FakeOpenAIServer) -> None:
    fake_llm.enqueue(Reply.drop(), Reply.chat("ok"))
    with ChatClient(settings(fake_llm)) as client:
        assert client.complete(MESSAGES).requests == 2


def test_connection_refused(no_llm_env: None) -> None:
    s = GenerationSettings(base_url=f"http://127.0.0.1:{closed_port()}/v1", model="m",
                           max_retries=1, backoff_base_seconds=0.01)
    with ChatClient(s) as client:
        with pytest.raises(LLMUnavailable) as info:
            client.complete(MESSAGES)
    assert "cannot reach the LLM at 127.0.0.1:" in str(info.value)
    assert info.value.requests == 2


def test_invalid_200_bodies(fake_llm: FakeOpenAIServer) -> None:
    fake_llm.enqueue(Reply.raw(200, b"<html>proxy</html>"), Reply.raw(200, b'{"choices": []}'),
                     Reply.raw(200, b'{"choices": [{"message": {"content": null}}]}'))
    with ChatClient(settings(fake_llm)) as client:
        for expected in ("not JSON", "without choices", "without message content"):
            with pytest.raises(LLMResponseInvalid, match=expected):
                client.complete(MESSAGES)
    assert len(fake_llm.requests) == 3  # never retried


def test_missing_usage_is_estimated(fake_llm: FakeOpenAIServer) -> None:
    fake_llm.enqueue(Reply.chat("x" * 400, usage=None))
    budget = Budget(max_tokens=10_000)
    with ChatClient(settings(fake_llm)) as client:
        completion = client.complete(MESSAGES, budget=budget)
    assert completion.usage.estimated and completion.usage.completion_tokens == 100
    assert budget.tokens_used == completion.usage.total_tokens > 100


def test_token_budget_is_checked_before_each_request(fake_llm: FakeOpenAIServer) -> None:
    usage = {"prompt_tokens": 50, "completion_tokens": 30, "total_tokens": 80}
    fake_llm.enqueue(Reply.chat("a", usage=usage), Reply.chat("b", usage=usage),
                     Reply.chat("c", usage=usage))
    budget = Budget(max_tokens=100)
    with ChatClient(settings(fake_llm)) as client:
        client.complete(MESSAGES, budget=budget)
        client.complete(MESSAGES, budget=budget)  # 80 < 100: allowed, ends at 160
        with pytest.raises(BudgetExceeded, match="token budget exhausted: 160 of 100"):
            client.complete(MESSAGES, budget=budget)
    assert len(fake_llm.requests) == 2 and budget.tokens_used == 160


def test_cost_budget(fake_llm: FakeOpenAIServer) -> None:
    usage = {"prompt_tokens": 500, "completion_tokens": 500, "total_tokens": 1000}
    fake_llm.enqueue(Reply.chat("a", usage=usage), Reply.chat("b", usage=usage))
    s = settings(fake_llm, price_per_1k_tokens=0.5, cost_budget=0.5, token_budget=None)
    budget = Budget.from_settings(s)
    with ChatClient(s) as client:
        client.complete(MESSAGES, budget=budget)
        with pytest.raises(BudgetExceeded, match="cost budget exhausted: 0.5 of 0.5"):
            client.complete(MESSAGES, budget=budget)
    assert budget.cost == 0.5 and len(fake_llm.requests) == 1


def test_secret_never_in_logs_exceptions_or_reprs(fake_llm: FakeOpenAIServer,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("SANDGATE_LLM_API_KEY", SECRET)
    caplog.set_level(logging.DEBUG)  # every logger: ours, httpx, httpcore
    # a provider that echoes the key back in its error body
    echo = json.dumps({"error": {"message": f"bad key {SECRET}"}}).encode()
    fake_llm.enqueue(Reply.error(429, retry_after="0"), Reply.error(500), Reply.drop(),
                     Reply.chat("ok"), Reply.raw(403, echo))
    s = GenerationSettings.load(base_url=fake_llm.url, model="fake-model", backoff_base_seconds=0)
    client = ChatClient(s)
    client.complete(MESSAGES)
    with pytest.raises(LLMRequestRejected) as info:
        client.complete(MESSAGES)
    client.close()
    assert fake_llm.requests[0].headers["authorization"] == f"Bearer {SECRET}"  # it was sent
    exc = info.value
    texts = [caplog.text, str(exc), repr(exc), repr(client), repr(s), str(s),
             repr(s.model_dump()), str(exc.__cause__), repr(exc.args)]
    for text in texts:
        assert SECRET not in text
        assert "SECRET-0123" not in text
    assert "[redacted]" in str(exc)
    assert "retry 1/4" in caplog.text  # the retries were logged


def test_settings_need_an_endpoint(no_llm_env: None) -> None:
    with pytest.raises(ConfigError) as info:
        ChatClient(GenerationSettings.load())
    assert "SANDGATE_LLM_BASE_URL" in str(info.value) and "SANDGATE_LLM_MODEL" in str(info.value)


def test_settings_from_environment(no_llm_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDGATE_LLM_BASE_URL", "https://example.invalid/v1/chat/completions/")
    monkeypatch.setenv("SANDGATE_LLM_MODEL", "m")
    monkeypatch.setenv("SANDGATE_LLM_TEMPERATURE", "")
    monkeypatch.setenv("SANDGATE_LLM_TOKEN_BUDGET", "5000")
    s = GenerationSettings.load()
    assert s.base_url == "https://example.invalid/v1" and s.temperature is None
    assert s.token_budget == 5000 and s.host == "example.invalid"
    for bad, why in [("https://user:pw@example.invalid/v1", "must not contain credentials"),
                     ("https://example.invalid/v1?key=abc", "must not have a query string"),
                     ("ftp://example.invalid", "http(s) URL")]:
        monkeypatch.setenv("SANDGATE_LLM_BASE_URL", bad)
        with pytest.raises(ConfigError, match="SANDGATE_LLM_BASE_URL") as info:
            GenerationSettings.load()
        assert why in str(info.value) and "pw" not in str(info.value)
    monkeypatch.setenv("SANDGATE_LLM_BASE_URL", "https://example.invalid/v1")
    monkeypatch.setenv("SANDGATE_LLM_API_KEY_ENV", "NOT_SET_ANYWHERE")
    with pytest.raises(ConfigError, match="NOT_SET_ANYWHERE"):
        ChatClient(GenerationSettings.load())
    monkeypatch.delenv("SANDGATE_LLM_API_KEY_ENV")
    monkeypatch.setenv("SANDGATE_LLM_COST_BUDGET", "1")
    with pytest.raises(ConfigError, match="PRICE_PER_1K_TOKENS"):
        GenerationSettings.load()
    monkeypatch.delenv("SANDGATE_LLM_COST_BUDGET")
    monkeypatch.setenv("SANDGATE_LLM_BASEURL", "https://typo.invalid")
    with pytest.raises(ConfigError, match="unknown LLM setting.*SANDGATE_LLM_BASEURL"):
        GenerationSettings.load()


def test_the_key_only_comes_from_the_environment(no_llm_env: None) -> None:
    with pytest.raises(ConfigError, match="environment only") as info:
        GenerationSettings(base_url="https://example.invalid/v1", model="m", api_key=SECRET)
    assert SECRET not in str(info.value)


def test_parse_retry_after() -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    assert parse_retry_after("2") == 2.0 and parse_retry_after("0.2") == 0.2
    assert parse_retry_after("-5") == 0.0
    assert parse_retry_after("Wed, 01 Jan 2025 00:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Tue, 31 Dec 2024 00:00:00 GMT", now=now) == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
    assert parse_retry_after("nan") is None


def test_backoff_full_jitter_is_capped() -> None:
    assert backoff_delay(0, base=1, cap=30, rand=lambda: 1.0) == 1
    assert backoff_delay(3, base=1, cap=30, rand=lambda: 1.0) == 8
    assert backoff_delay(10, base=1, cap=30, rand=lambda: 1.0) == 30
    assert backoff_delay(10, base=1, cap=30, rand=lambda: 0.0) == 0
