"""A provider-agnostic client for OpenAI-compatible ``POST {base_url}/chat/completions``.

Works with OpenAI, Azure OpenAI (``api-key`` header and ``?api-version=`` when
``azure_api_version`` is set), vLLM, Ollama and the llama.cpp server: it only
uses ``model``, ``messages``, ``temperature``, ``max_tokens`` (or
``max_completion_tokens``) and reads ``choices[0].message.content``,
``choices[0].finish_reason`` and ``usage``.

Retries
    429, 408, 409 and 5xx responses, timeouts and connection errors are retried
    up to ``max_retries`` times (so at most ``1 + max_retries`` requests). The
    wait is exponential backoff with *full jitter*
    (``uniform(0, min(backoff_max, backoff_base * 2**retry))``), except that a
    ``Retry-After`` header on 429/503 (seconds, fractions accepted, or an HTTP
    date) is honoured exactly; one longer than ``max_retry_after_seconds`` ends
    the call at once rather than blocking for it. Other 4xx responses (bad key,
    unknown model, invalid request) are not retried.
Budget
    A :class:`Budget` is checked *before* each request and charged with
    ``usage.total_tokens`` after each response, so one generation spends at
    most its budget plus one response. A server that reports no usage is
    charged an estimate (characters / 4, flagged ``estimated``). Requests that
    failed (429, 5xx, timeouts) are not charged: the provider reports nothing.
Secrets
    The key is read from the environment (see :mod:`.settings`), kept as a
    :class:`~pydantic.SecretStr`, put into the request headers only at send
    time, and never logged, never in an exception message nor in a ``repr``;
    any error text taken from a response body is redacted and trimmed.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from sandgate.generation.errors import (
    BudgetExceeded,
    LLMError,
    LLMRequestRejected,
    LLMResponseInvalid,
    LLMTimeout,
    LLMUnavailable,
)
from sandgate.generation.settings import ENV_PREFIX, GenerationSettings

__all__ = ["ChatClient", "Completion", "Usage", "Budget", "Message", "parse_retry_after",
           "backoff_delay"]

log = logging.getLogger("sandgate.generation")

Message = Mapping[str, str]

#: statuses worth another try (besides timeouts and connection errors)
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
#: statuses whose Retry-After header is honoured
RETRY_AFTER_STATUSES = frozenset({429, 503})
#: a chat completion larger than this is refused (a skill is a few KB)
MAX_RESPONSE_BYTES = 8 * 1024 * 1024
_BODY_SNIPPET = 300


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    #: True when the server reported no usage and the count is an estimate
    estimated: bool = False


@dataclass(frozen=True)
class Completion:
    content: str
    finish_reason: str | None
    usage: Usage
    #: the model the server says answered (may differ from the one asked for)
    model: str | None
    #: HTTP requests made for this completion (1 + retries)
    requests: int
    elapsed_seconds: float


class Budget:
    """Tokens (and optionally cost) one generation may spend; shared by all its requests."""

    def __init__(self, *, max_tokens: int | None = None, max_cost: float | None = None,
                 price_per_1k_tokens: float | None = None) -> None:
        if max_cost is not None and price_per_1k_tokens is None:
            raise ValueError("a cost budget needs a price per 1k tokens")
        self.max_tokens = max_tokens
        self.max_cost = max_cost
        self.price_per_1k_tokens = price_per_1k_tokens
        self.tokens_used = 0

    @classmethod
    def from_settings(cls, settings: GenerationSettings) -> Budget:
        return cls(max_tokens=settings.token_budget, max_cost=settings.cost_budget,
                   price_per_1k_tokens=settings.price_per_1k_tokens)

    @property
    def cost(self) -> float | None:
        if self.price_per_1k_tokens is None:
            return None
        return round(self.tokens_used / 1000 * self.price_per_1k_tokens, 6)

    def check(self) -> None:
        """:class:`BudgetExceeded` if nothing is left for another request."""
        if self.max_tokens is not None and self.tokens_used >= self.max_tokens:
            raise BudgetExceeded(
                f"token budget exhausted: {self.tokens_used} of {self.max_tokens} tokens used "
                f"(raise {ENV_PREFIX}TOKEN_BUDGET to allow more)"
            )
        cost = self.cost
        if self.max_cost is not None and cost is not None and cost >= self.max_cost:
            raise BudgetExceeded(
                f"cost budget exhausted: {cost:g} of {self.max_cost:g} spent "
                f"({self.tokens_used} tokens at {self.price_per_1k_tokens:g} per 1k; "
                f"raise {ENV_PREFIX}COST_BUDGET to allow more)"
            )

    def charge(self, tokens: int) -> None:
        self.tokens_used += max(0, int(tokens))

    def to_dict(self) -> dict[str, Any]:
        return {"tokens_used": self.tokens_used, "token_budget": self.max_tokens,
                "cost": self.cost, "cost_budget": self.max_cost}


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta seconds or HTTP date), or None."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def backoff_delay(retry: int, *, base: float, cap: float,
                  rand: Callable[[], float] = random.random) -> float:
    """Full jitter: ``uniform(0, min(cap, base * 2**retry))`` (``retry`` counts from 0)."""
    return rand() * min(cap, base * (2 ** min(retry, 62)))


class ChatClient:
    """One OpenAI-compatible endpoint. Thread-safe for sequential use per thread; close it.

    ``transport``, ``sleep`` and ``rand`` are seams for tests.
    """

    def __init__(self, settings: GenerationSettings | None = None, *,
                 transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 rand: Callable[[], float] = random.random) -> None:
        settings = settings if settings is not None else GenerationSettings.load()
        settings.require_endpoint()
        self.settings = settings
        self._key = settings.resolved_api_key()
        self._sleep = sleep
        self._rand = rand
        assert settings.base_url is not None
        self.url = f"{settings.base_url}/chat/completions"
        self._params = ({"api-version": settings.azure_api_version}
                        if settings.azure_api_version else {})
        self._http = httpx.Client(
            timeout=httpx.Timeout(
                connect=settings.connect_timeout_seconds,
                read=settings.timeout_seconds,
                write=settings.timeout_seconds,
                pool=settings.timeout_seconds,
            ),
            transport=transport,
            follow_redirects=False,  # never resend the key to another host
            trust_env=True,
        )

    # ------------------------------------------------------------------ identity

    @property
    def model(self) -> str:
        assert self.settings.model is not None
        return self.settings.model

    @property
    def host(self) -> str:
        return self.settings.host

    @property
    def base_url(self) -> str:
        assert self.settings.base_url is not None
        return self.settings.base_url

    def __repr__(self) -> str:
        auth = "azure api-key" if self.settings.azure_api_version else "bearer"
        return (f"ChatClient(url={self.url!r}, model={self.model!r}, "
                f"auth={auth if self._key else 'none'})")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ calls

    def request_body(self, messages: Sequence[Message]) -> dict[str, Any]:
        s = self.settings
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [dict(m) for m in messages],
            "stream": False,
        }
        if s.temperature is not None:
            body["temperature"] = s.temperature
        if s.max_tokens is not None:
            body[s.max_tokens_field] = s.max_tokens
        return body

    def complete(self, messages: Sequence[Message], *, budget: Budget | None = None) -> Completion:
        """One chat completion, with retries. Raises :class:`LLMError` or :class:`BudgetExceeded`."""
        if budget is not None:
            budget.check()
        s = self.settings
        body = self.request_body(messages)
        started = time.monotonic()
        failure: LLMError | None = None
        cause: BaseException | None = None
        for attempt in range(s.max_retries + 1):
            requests = attempt + 1
            retry_after: float | None = None
            cause = None
            try:
                status, headers, raw = self._post(body)
            except httpx.TimeoutException as exc:
                cause = exc
                failure = LLMTimeout(
                    f"the LLM at {self.host} did not answer in time "
                    f"({_timeout_kind(exc, s)}) after {requests} request(s)",
                    requests=requests,
                )
            except (httpx.TransportError, _DeadlineExceeded) as exc:
                cause = exc
                if isinstance(exc, _DeadlineExceeded):
                    failure = LLMTimeout(
                        f"the LLM at {self.host} did not finish its response within "
                        f"{ENV_PREFIX}REQUEST_DEADLINE_SECONDS={s.request_deadline_seconds:g}s "
                        f"after {requests} request(s)", requests=requests)
                else:
                    failure = LLMUnavailable(
                        f"cannot reach the LLM at {self.host}: {type(exc).__name__}: "
                        f"{self._redact(str(exc)) or 'connection failed'} "
                        f"after {requests} request(s)", requests=requests)
            else:
                if status == 200:
                    completion = self._completion(raw, messages, requests, started)
                    if budget is not None:
                        budget.charge(completion.usage.total_tokens)
                    log.info("llm %s: 200 in %.2fs, %d tokens%s, finish_reason=%s",
                             self.host, completion.elapsed_seconds, completion.usage.total_tokens,
                             " (estimated)" if completion.usage.estimated else "",
                             completion.finish_reason)
                    return completion
                detail = self._error_detail(raw)
                if status not in RETRY_STATUSES and status < 500:
                    raise LLMRequestRejected(
                        f"the LLM at {self.host} refused the request: HTTP {status}{detail}"
                        f"{_hint(status)}", status=status, requests=requests)
                failure = LLMUnavailable(
                    f"the LLM at {self.host} answered HTTP {status}{detail} "
                    f"after {requests} request(s)", status=status, requests=requests)
                if status in RETRY_AFTER_STATUSES:
                    retry_after = parse_retry_after(headers.get("retry-after"))
            assert failure is not None
            if attempt >= s.max_retries:
                break
            if retry_after is not None:
                if retry_after > s.max_retry_after_seconds:
                    failure.message += (f"; it asks to retry after {retry_after:g}s, more than "
                                        f"{ENV_PREFIX}MAX_RETRY_AFTER_SECONDS="
                                        f"{s.max_retry_after_seconds:g}")
                    failure.args = (failure.message,)
                    raise failure from cause
                delay = retry_after
            else:
                delay = backoff_delay(attempt, base=s.backoff_base_seconds,
                                      cap=s.backoff_max_seconds, rand=self._rand)
            why = f"HTTP {failure.status}" if failure.status else failure.code
            log.warning("llm %s: %s; retry %d/%d in %.2fs%s", self.host, why,
                        attempt + 1, s.max_retries, delay,
                        " (Retry-After)" if retry_after is not None else "")
            self._sleep(delay)
        assert failure is not None
        raise failure from cause

    # ------------------------------------------------------------------ internals

    def _headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept": "application/json"}
        if self._key is not None:
            if self.settings.azure_api_version:
                headers["api-key"] = self._key.get_secret_value()
            else:
                headers["authorization"] = f"Bearer {self._key.get_secret_value()}"
        return headers

    def _post(self, body: dict[str, Any]) -> tuple[int, httpx.Headers, bytes]:
        deadline = time.monotonic() + self.settings.request_deadline_seconds
        log.debug("llm %s: POST %s (model %s, %d messages)", self.host,
                  self.url.split("://", 1)[-1].split("/", 1)[-1], body["model"],
                  len(body["messages"]))
        with self._http.stream("POST", self.url, json=body, params=self._params,
                               headers=self._headers()) as response:
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > MAX_RESPONSE_BYTES:
                    raise LLMResponseInvalid(
                        f"the LLM at {self.host} sent more than {MAX_RESPONSE_BYTES} bytes")
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    raise _DeadlineExceeded()
            return response.status_code, response.headers, b"".join(chunks)

    def _completion(self, raw: bytes, messages: Sequence[Message], requests: int,
                    started: float) -> Completion:
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise LLMResponseInvalid(
                f"the LLM at {self.host} answered 200 with a body that is not JSON: "
                f"{self._snippet(raw)}", status=200, requests=requests) from exc
        if not isinstance(data, dict):
            raise LLMResponseInvalid(f"the LLM at {self.host} answered 200 with "
                                     f"{type(data).__name__}, not a JSON object",
                                     status=200, requests=requests)
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            error = data.get("error")
            why = f": error {self._redact(json.dumps(error))[:_BODY_SNIPPET]}" if error else ""
            raise LLMResponseInvalid(f"the LLM at {self.host} answered 200 without choices{why}",
                                     status=200, requests=requests)
        choice = choices[0]
        raw_message = choice.get("message")
        message = raw_message if isinstance(raw_message, dict) else {}
        content = _content_text(message.get("content"))
        if content is None:
            raise LLMResponseInvalid(
                f"the LLM at {self.host} answered 200 without message content "
                f"(finish_reason={choice.get('finish_reason')!r})", status=200, requests=requests)
        finish = choice.get("finish_reason")
        usage = _usage(data.get("usage"), messages, content)
        model = data.get("model") if isinstance(data.get("model"), str) else None
        return Completion(content=content, finish_reason=finish if isinstance(finish, str) else None,
                          usage=usage, model=model, requests=requests,
                          elapsed_seconds=round(time.monotonic() - started, 4))

    def _redact(self, text: str) -> str:
        if self._key is not None:
            secret = self._key.get_secret_value()
            if secret:
                text = text.replace(secret, "[redacted]")
        return text

    def _snippet(self, raw: bytes) -> str:
        text = raw.decode("utf-8", "replace").strip().replace("\n", " ")
        text = self._redact(text)
        return text[:_BODY_SNIPPET] + ("…" if len(text) > _BODY_SNIPPET else "")

    def _error_detail(self, raw: bytes) -> str:
        if not raw:
            return ""
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return f": {self._snippet(raw)}"
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return f": {self._snippet(error['message'].encode())}"
        if isinstance(error, str):
            return f": {self._snippet(error.encode())}"
        return f": {self._snippet(raw)}"


class _DeadlineExceeded(Exception):
    pass


def _timeout_kind(exc: httpx.TimeoutException, s: GenerationSettings) -> str:
    if isinstance(exc, httpx.ConnectTimeout):
        return f"connect timeout {ENV_PREFIX}CONNECT_TIMEOUT_SECONDS={s.connect_timeout_seconds:g}s"
    if isinstance(exc, httpx.ReadTimeout):
        return f"read timeout {ENV_PREFIX}TIMEOUT_SECONDS={s.timeout_seconds:g}s"
    return f"{type(exc).__name__} {ENV_PREFIX}TIMEOUT_SECONDS={s.timeout_seconds:g}s"


def _hint(status: int) -> str:
    if status in (401, 403):
        return (f" (check {ENV_PREFIX}API_KEY / {ENV_PREFIX}API_KEY_ENV, and "
                f"{ENV_PREFIX}AZURE_API_VERSION for Azure)")
    if 300 <= status < 400:
        return f" (redirects are not followed: check {ENV_PREFIX}BASE_URL)"
    if status == 404:
        return f" (check {ENV_PREFIX}BASE_URL and {ENV_PREFIX}MODEL)"
    return ""


def _content_text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": "..."}]
        texts: list[str] = [p["text"] for p in content
                            if isinstance(p, dict) and isinstance(p.get("text"), str)]
        return "".join(texts) if texts else None
    return None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _usage(raw: Any, messages: Sequence[Message], content: str) -> Usage:
    if isinstance(raw, dict):
        prompt, completion, total = (_int(raw.get(k)) for k in
                                     ("prompt_tokens", "completion_tokens", "total_tokens"))
        if total is None and prompt is not None and completion is not None:
            total = prompt + completion
        if total is not None:
            return Usage(prompt or 0, completion or 0, total)
    # no usage reported: about 4 characters per token
    prompt_est = math.ceil(sum(len(str(m.get("content", ""))) for m in messages) / 4)
    completion_est = math.ceil(len(content) / 4)
    return Usage(prompt_est, completion_est, prompt_est + completion_est, estimated=True)
