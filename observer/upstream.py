"""Every HTTP call Observer makes to the gateway and the lakehouse LLM goes through here.

The original had no timeouts, ignored status codes and trusted any reply carrying `text`. Here each
call has a timeout, retries with exponential backoff (and jitter) on timeouts, connection errors,
429 and 5xx, checks the status, and validates the reply; what still fails is an `UpstreamError`
saying which upstream, what happened and after how many attempts.

The gateway's outages are remembered (`GatewayOutage`, `state/gateway.json`): every post to `/log`
that fails as a gateway that is down fails (no answer, no connection, a 5xx) counts, the first
one that succeeds ends the outage. While it lasts, `gateway_wait` gives scheduled runs the reason
to wait, with a back-off that doubles from one cycle up to `MAX_BACKOFF_SECONDS`.
"""

from __future__ import annotations

import json
import random
import ssl
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any, NamedTuple, TypeVar

import httpx
import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError

from observer.errors import FailureKind, NotDelivered, UpstreamError
from observer.files import file_lock, load_state, save_state
from observer.jsfmt import js_json, js_truthy
from observer.settings import Settings

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER_SECONDS = 30.0
#: The longest a scheduled run waits for a gateway that keeps failing before it tries again.
MAX_BACKOFF_SECONDS = 600.0

Parsed = TypeVar("Parsed")


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
        """Ask the LLM; return its validated `text` or raise UpstreamError.

        A reply without a non-empty string `text` is retried like a 5xx: a model server that
        answers garbage once often answers properly the next time.
        """
        url = f"{self.settings.lakehouse_url}/ai/generate"
        return self._post("llm", url, request.model_dump(), parse=_generated_text)

    def post_log(self, entry: LogEntry) -> None:
        """Post a playbook/analysis entry to the gateway's `/log`; raise UpstreamError if not taken.

        The outcome moves the gateway's outage record: a failure that says the gateway is down
        counts one more failed try, an answer (a success, or a 4xx refusing this entry) ends the
        outage."""
        url = f"{self.settings.gateway_url}/log"
        try:
            self._post("gateway", url, entry.model_dump(), parse=None)
        except UpstreamError as error:
            if gateway_is_down(error):
                GatewayOutage.failed(self.settings, error)
            else:  # it answered: it refused this entry, but it is up
                GatewayOutage.answered(self.settings)
            raise
        GatewayOutage.answered(self.settings)

    def _post(
        self,
        upstream: str,
        url: str,
        body: dict[str, Any],
        parse: Callable[[httpx.Response], Parsed] | None,
    ) -> Parsed | None:
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
                    if parse is None:
                        return None
                    try:
                        return parse(response)
                    except ValueError as exc:
                        failure = ("invalid", str(exc), response.status_code)
                else:
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


def _generated_text(response: httpx.Response) -> str:
    try:
        return GenerateReply.model_validate_json(response.content).text
    except ValidationError as exc:
        raise ValueError(
            f"reply is not {{'text': non-empty string}}: {_first_error(exc)}"
        ) from None


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


@dataclass(frozen=True)
class GatewayReply:
    """One gateway call made once (no retry: an agent's call may not be idempotent).

    `error` is None on success; else it says what failed: the network, the status, a reply that is
    not JSON, or the reply's own JSON `error` field (the original's only failure signal).
    """

    data: Any
    error: str | None
    status: int | None = None


_JSON_HEADERS = {"content-type": "application/json"}


def call_gateway(
    request: GatewayPost | GatewayReply, client: httpx.Client | None = None
) -> GatewayReply:
    """Send a `gateway_post` once, with its timeout; never raises for network, status or reply
    problems. Pass `client` to reuse connections."""
    if isinstance(request, GatewayReply):
        return request
    try:
        with nullcontext(client) if client else httpx.Client(verify=_ssl_context()) as http:
            return _gateway_reply(http.post(request.url, **request.options))
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        return request.failed(exc)


async def acall_gateway(
    request: GatewayPost | GatewayReply, client: httpx.AsyncClient | None = None
) -> GatewayReply:
    """The async twin of `call_gateway`."""
    if isinstance(request, GatewayReply):
        return request
    try:
        async with (
            nullcontext(client) if client else httpx.AsyncClient(verify=_ssl_context()) as http
        ):
            return _gateway_reply(await http.post(request.url, **request.options))
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        return request.failed(exc)


@cache
def _ssl_context() -> ssl.SSLContext:
    # Building a default SSL context costs milliseconds; a per-call client reuses this one.
    return ssl.create_default_context()


def gateway_post(
    settings: Settings, endpoint: str, body: Any, timeout: float | None = None
) -> GatewayPost | GatewayReply:
    """`body` as JSON for `{GATEWAY_URL}{endpoint}` (`timeout` defaults to OBSERVER_HTTP_TIMEOUT),
    or the failed reply a body that is not JSON gets without any call."""
    try:
        text = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        message = f"body is not JSON: {exc}"
        return GatewayReply({"error": message}, message)
    seconds = settings.http_timeout_seconds if timeout is None else timeout
    return GatewayPost(f"{settings.gateway_url}{endpoint}", text.encode(), seconds)


class GatewayPost(NamedTuple):
    """What `call_gateway` and `acall_gateway` send: the URL, the JSON bytes, the timeout."""

    url: str
    content: bytes
    seconds: float

    @property
    def options(self) -> dict[str, Any]:
        # fetch() follows redirects; so do these calls, so a moved endpoint behaves as it did.
        return {
            "content": self.content,
            "headers": _JSON_HEADERS,
            "timeout": self.seconds,
            "follow_redirects": True,
        }

    def failed(self, exc: Exception) -> GatewayReply:
        return _transport_failure(self.url, self.seconds, exc)


def _transport_failure(url: str, seconds: float, exc: Exception) -> GatewayReply:
    if isinstance(exc, httpx.TimeoutException):
        message = f"timeout: no answer from {url} within {seconds:g}s"
    else:
        message = f"cannot reach {url}: {exc or type(exc).__name__}"
    return GatewayReply({"error": message}, message)


def _gateway_reply(response: httpx.Response) -> GatewayReply:
    status = response.status_code
    data: Any = None
    if response.content.strip():
        try:
            data = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            message = f"reply is not JSON (HTTP {status})"
            return GatewayReply({"error": message}, message, status)
    field = data.get("error") if isinstance(data, dict) else None
    reason = None
    if js_truthy(field):
        reason = field if isinstance(field, str) else js_json(field)
    if not response.is_success:
        return GatewayReply(data, f"HTTP {status}" + (f": {reason}" if reason else ""), status)
    return GatewayReply(data, reason, status)


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


# ── the gateway's outages ───────────────────────────────────────────────────────────────────────


def gateway_is_down(error: BaseException) -> bool:
    """Whether a failed post says the gateway is down (no answer, no connection, a 5xx, a reply
    that is no reply), rather than that it refused this one entry (a 4xx)."""
    if isinstance(error, NotDelivered):
        return error.gateway_down
    if not isinstance(error, UpstreamError) or error.upstream != "gateway":
        return False
    return error.status is None or error.status >= 500 or error.kind != "status"


class GatewayOutage(BaseModel):
    """The gateway as the runs that post to it found it: down since when, after how many failed
    tries, until when scheduled runs wait (`state/gateway.json`, replaced atomically)."""

    outages: int = 0  # outages seen so far: the console says each one once
    down_since: str | None = None  # the first failed try of the outage going on, if one is
    failures: int = 0  # failed tries in a row
    last_error: str = ""
    next_try: float = 0.0  # wall-clock time: scheduled runs wait until then
    back_at: str | None = None  # when the last outage ended

    @property
    def down(self) -> bool:
        return self.down_since is not None

    @classmethod
    def read(cls, settings: Settings) -> GatewayOutage:
        return load_state(settings.layout.gateway_state, cls)

    @classmethod
    def failed(cls, settings: Settings, error: UpstreamError) -> GatewayOutage:
        """One more failed try: the outage starts or goes on, and the back-off doubles (one cycle
        after the first failure, then 2, 4, … cycles, at most MAX_BACKOFF_SECONDS)."""
        with file_lock(settings.layout.gateway_lock):
            outage = cls.read(settings)
            if not outage.down:
                outage = outage.model_copy(
                    update={"outages": outage.outages + 1, "down_since": _now(), "failures": 0}
                )
            failures = outage.failures + 1
            wait = min(settings.cycle_seconds * 2 ** (failures - 1), MAX_BACKOFF_SECONDS)
            outage = outage.model_copy(
                update={
                    "failures": failures,
                    "last_error": error.detail[:300],
                    "next_try": time.time() + wait,
                }
            )
            save_state(settings.layout.gateway_state, outage)
        return outage

    @classmethod
    def answered(cls, settings: Settings) -> None:
        """The gateway took a post: an outage going on is over."""
        if not cls.read(settings).down:
            return  # the usual case: one small read, no write
        with file_lock(settings.layout.gateway_lock):
            outage = cls.read(settings)
            if outage.down:
                update = {"down_since": None, "failures": 0, "next_try": 0.0, "back_at": _now()}
                save_state(settings.layout.gateway_state, outage.model_copy(update=update))

    def wait_reason(self, now: float | None = None) -> str | None:
        """Why a scheduled run should not try the gateway now, or None (not down, or its
        back-off is over: the run tries, and its outcome moves the record)."""
        now = time.time() if now is None else now
        if not self.down or now >= self.next_try:
            return None
        next_try = datetime.fromtimestamp(self.next_try, UTC)
        return (
            f"gateway down: since {self.down_since}, {self.failures} failed tr"
            f"{'y' if self.failures == 1 else 'ies'} (last: {self.last_error}); scheduled runs"
            f" wait until {next_try:%H:%M:%S} UTC, a run made by hand tries now; nothing is lost"
        )


def gateway_wait(settings: Settings) -> str | None:
    """For a scheduled run of a flow that posts to the gateway: why it should wait (the gateway
    known down, its back-off not over), or None. A stat and a small file."""
    return GatewayOutage.read(settings).wait_reason()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
