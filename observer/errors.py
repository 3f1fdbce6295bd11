"""Every error Observer raises on purpose, in one tree under `ObserverError`.

Callers catch what they can act on: `IntakeError` (nothing was kept: retry), `UpstreamError` (the
gateway or the LLM did not answer usefully), `CommandError` (the `observer` command cannot go on: the
message is for the console), or `ObserverError` for all of them.

    ObserverError
    ├── SettingsError          a configuration value is unusable (names the variable)
    ├── EventError             a request body that cannot become an op (HTTP status + field details)
    ├── DecodeFailed           (internal) the fast decoder did not take a batch: the slow way decides
    ├── ClientGone             (internal) the client left before its body was complete
    ├── BadRow                 a corrections line that cannot become an op (quarantined)
    ├── IntakeError            the spool did not take an op; nothing of it was kept
    │   ├── Overloaded         too much is queued for the disk
    │   └── WriteFailed        the write or the fsync failed
    ├── UpstreamError          a gateway/LLM call that failed after its attempts
    ├── NotDelivered           entries the gateway did not take; they are posted again next run
    ├── WarmRunUnsupported     a deployment the warm worker cannot fork (the message says why)
    ├── TemplateUnavailable    (internal) the warm template could not fork or check this run
    ├── OutcomeInputError      ops or a state the outcomes engine cannot read (names the column)
    └── CommandError           the `observer` command cannot go on
        ├── PortInUse
        ├── StartupFailed
        ├── DeployFailed
        ├── DatabaseUnusable   the PostgreSQL named for Prefect does not take us
        └── PrefectApiUnusable the Prefect server to join does not answer, or must not be joined
"""

from __future__ import annotations

from typing import Any, Literal

FailureKind = Literal["timeout", "connect", "status", "invalid"]
QuarantineKind = Literal["invalid_utf8", "invalid_json", "not_object", "bad_field", "too_long"]


class ObserverError(Exception):
    """Base of every error Observer raises on purpose."""


class SettingsError(ObserverError, ValueError):
    """A configuration value is unusable; the message names the environment variable."""


class EventError(ObserverError, ValueError):
    """A body that cannot become an op; `status` is the HTTP answer, `details` the field problems."""

    def __init__(
        self, message: str, *, status: int = 422, details: list[dict[str, str]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.details = details or []

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": str(self)}
        if self.details:
            body["details"] = self.details
        return body


class ClientGone(ObserverError):
    """The client closed the connection before its body was complete: nothing to store or answer."""


class DecodeFailed(ObserverError, ValueError):
    """msgspec did not take a body as it is: the field-by-field way decides (internal)."""


class BadRow(ObserverError, ValueError):
    """A line that cannot become an op; `kind` is counted, the message goes to the quarantine."""

    def __init__(self, kind: QuarantineKind, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


class IntakeError(ObserverError):
    """The spool did not take an op and nothing of it was kept: the client may retry (503)."""


class Overloaded(IntakeError):
    """Too much is queued for the disk; the client should retry shortly (503 + Retry-After)."""


class WriteFailed(IntakeError):
    """The spool could not be written; nothing of the batch was kept (503 + Retry-After)."""


class UpstreamError(ObserverError):
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


class NotDelivered(ObserverError):
    """Some entries did not reach the gateway; they are not remembered and will be posted again.
    `gateway_down`: the gateway failed as a gateway that is down does (not one entry refused)."""

    def __init__(self, message: str, *, gateway_down: bool = False) -> None:
        super().__init__(message)
        self.gateway_down = gateway_down


class WarmRunUnsupported(ObserverError, ValueError):
    """This deployment cannot be run by forking the warm template; the message says why."""


class TemplateUnavailable(ObserverError, RuntimeError):
    """The warm template could not fork or check this run (it refused, died or is not running):
    the worker starts or settles the run another way (internal)."""


class OutcomeInputError(ObserverError, ValueError):
    """Ops frames or an outcomes state the engine cannot read; nothing was judged."""


class CommandError(ObserverError):
    """The `observer` command cannot go on; the message is meant for the console."""


class PortInUse(CommandError):
    """The webhook's (or the Prefect server's) port is taken."""


class StartupFailed(CommandError):
    """A part of the product did not start, or stopped during start-up."""


class DeployFailed(CommandError):
    """prefect.yaml could not be applied to the Prefect server."""


class DatabaseUnusable(CommandError):
    """The PostgreSQL configured for Prefect cannot be used; the message names the variable."""


class PrefectApiUnusable(CommandError):
    """The Prefect API to join does not answer, or this host must not join it as configured."""
