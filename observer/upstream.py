"""Every HTTP call Observer makes to the gateway and the lakehouse LLM goes through here.

The original had no timeouts, ignored status codes and trusted any reply carrying `text`. Here each
call has a timeout, retries with exponential backoff (and jitter) on timeouts, connection errors,
429 and 5xx, checks the status, and validates the reply; what still fails is an `UpstreamError`
saying which upstream, what happened and after how many attempts.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError

from observer.settings import Settings

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER_SECONDS = 30.0

FailureKind = Literal["timeout", "connect", "status", "invalid"]


class UpstreamError(RuntimeError):
    """An upstream call that did not succeed after its attempts."""

    def __init__(
        self, upstream: str, kind: FailureKind, detail: str, *, attempts: int, status: int | None
    ) -> None:
        super().__init__(f"{upstream}: {detail} (after {attempts} attempt(s))")
        self.upstream = upstream
        self.kind = kind
        self.detail = detail
        self.attempts = attempts
        self.status = status


class GenerateRequest(BaseModel):
    """The body of `POST {LAKEHOUSE_URL}/ai/generate`, with the original's parameters."""

    prompt: str
    model: str = "qwen2.5"
    max_tokens: int = 400
    temperature: float = 0.2


class GenerateReply(BaseModel):
    """A usable LLM reply: `text` must be a non-empty string (a 500 carrying text is not advice)."""

    model_config = ConfigDict(extra="ignore")

    text: StrictStr = Field(min_length=1)


class LogEntry(BaseModel):
    """The body of `POST {GATEWAY_URL}/log`: the original's four keys, nothing else."""

    operation: str
    approach: str
    result: str
    context: str


class RetryPolicy(BaseModel):
    attempts: int = 3
    backoff_seconds: float = 1.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(retry_after, MAX_RETRY_AFTER_SECONDS)
        base = self.backoff_seconds * (2 ** (attempt - 1))
        return base * (0.5 + random.random() / 2)


class Upstreams:
    """Synchronous client for the gateway and the LLM, with one timeout and retry policy."""

    def __init__(
        self,
        settings: Settings,
        *,
        timeout: float | None = None,
        policy: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.policy = policy or RetryPolicy(
            attempts=settings.http_attempts, backoff_seconds=settings.http_backoff_seconds
        )
        self._client = httpx.Client(timeout=timeout or settings.http_timeout_seconds)
        self._sleep = sleep

    def __enter__(self) -> Upstreams:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def generate(self, request: GenerateRequest) -> str:
        """Ask the LLM; return its validated `text` or raise UpstreamError."""
        url = f"{self.settings.lakehouse_url}/ai/generate"
        response = self._post("llm", url, request.model_dump())
        try:
            return GenerateReply.model_validate_json(response.content).text
        except ValidationError as exc:
            raise UpstreamError(
                "llm",
                "invalid",
                f"reply is not {{'text': non-empty string}}: {_first_error(exc)}",
                attempts=1,
                status=response.status_code,
            ) from None

    def post_log(self, entry: LogEntry) -> None:
        """Post a playbook/analysis entry to the gateway's `/log`; raise UpstreamError if not taken."""
        self._post("gateway", f"{self.settings.gateway_url}/log", entry.model_dump())

    def _post(self, upstream: str, url: str, body: dict[str, Any]) -> httpx.Response:
        attempt = 0
        while True:
            attempt += 1
            retry_after: float | None = None
            try:
                response = self._client.post(url, json=body)
            except httpx.TimeoutException as exc:
                failure: tuple[FailureKind, str, int | None] = (
                    "timeout",
                    f"no answer from {url} in time ({type(exc).__name__})",
                    None,
                )
            except httpx.TransportError as exc:
                failure = ("connect", f"cannot reach {url}: {exc}", None)
            else:
                if response.is_success:
                    return response
                failure = (
                    "status",
                    f"{url} answered HTTP {response.status_code}",
                    response.status_code,
                )
                if response.status_code not in RETRYABLE_STATUS:
                    attempt = self.policy.attempts  # a 4xx will not get better by asking again
                retry_after = _retry_after(response)
            if attempt >= self.policy.attempts:
                kind, detail, status = failure
                raise UpstreamError(upstream, kind, detail, attempts=attempt, status=status)
            self._sleep(self.policy.delay(attempt, retry_after))


async def probe_gateway(settings: Settings, timeout: float = 2.0) -> dict[str, Any]:
    """One `GET {GATEWAY_URL}/health`: whether the gateway answers truthy JSON, and how fast."""
    started = time.monotonic()
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            response = await client.get(f"{settings.gateway_url}/health")
        healthy = response.is_success and bool(response.json())
        detail = f"HTTP {response.status_code}"
    except (httpx.HTTPError, ValueError) as exc:
        healthy, detail = False, f"{type(exc).__name__}: {exc}"
    return {
        "reachable": healthy,
        "detail": detail[:200],
        "seconds": round(time.monotonic() - started, 3),
    }


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _first_error(exc: ValidationError) -> str:
    error = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in error["loc"]) or "body"
    return f"{where}: {error['msg']}"
