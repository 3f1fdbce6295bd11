"""What the worker and its warm template say to each other: one JSON object per line on a socket.

The worker asks for a run (`RunRequest`); the template answers once with `Forked` (the run's pid)
or `Refused` (why it would not fork), and later `Exited` when that process ends. Before starting a
scheduled run the worker may ask whether it would find nothing new (`CheckRequest`); the template
answers `Checked` without forking. `Ready` comes
once, when the template has imported everything. Only the template writes the answers and only
the worker writes the requests, so each side reads complete lines in order.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, TypeAdapter


class RunRequest(BaseModel):
    """Fork a process that runs this flow run through Prefect's engine."""

    kind: Literal["run"] = "run"
    flow_run_id: str
    entrypoint: str = Field(description="`path/to/file.py:flow_function`, relative to `cwd`")
    cwd: str
    env: dict[str, str] = Field(description="the whole environment of the run's process")


class CheckRequest(BaseModel):
    """Would this flow run stop at its first step, finding nothing new? Asked in the template,
    under the run's environment and working directory, so no process is started to find out."""

    kind: Literal["check"] = "check"
    flow_run_id: str
    flow: str = Field(description="the flow's name in `observer.catalog.FLOWS`")
    parameters: dict[str, Any] = Field(description="the run's parameters (`{'params': {...}}`)")
    cwd: str
    env: dict[str, str] = Field(description="the whole environment the run's process would have")


class Ready(BaseModel):
    """The template has imported prefect, polars and the flows."""

    kind: Literal["ready"] = "ready"
    pid: int
    threads: int
    preloaded: list[str]


class Forked(BaseModel):
    """The run's process exists; `threads` is what the template counted just before forking."""

    kind: Literal["forked"] = "forked"
    flow_run_id: str
    pid: int
    threads: int


class Refused(BaseModel):
    """The template did not fork (e.g. it was not single-threaded); nothing was started."""

    kind: Literal["refused"] = "refused"
    flow_run_id: str
    reason: str
    threads: int


class Checked(BaseModel):
    """The answer to a `CheckRequest`: `nothing_new` is the reason the run would stop at once, or
    None when it has work to do (or the check could not tell: `error` says why)."""

    kind: Literal["checked"] = "checked"
    flow_run_id: str
    nothing_new: str | None = None
    run_name: str | None = Field(None, description="the name the flow would give the run")
    error: str | None = None


class Exited(BaseModel):
    """A run's process ended: its exit code, or minus the signal that killed it (as subprocess)."""

    kind: Literal["exited"] = "exited"
    pid: int
    returncode: int


Reply = Annotated[Ready | Forked | Refused | Checked | Exited, Field(discriminator="kind")]
_REPLY: TypeAdapter[Ready | Forked | Refused | Checked | Exited] = TypeAdapter(Reply)
Request = Annotated[RunRequest | CheckRequest, Field(discriminator="kind")]
_REQUEST: TypeAdapter[RunRequest | CheckRequest] = TypeAdapter(Request)


def encode(message: BaseModel) -> bytes:
    return message.model_dump_json().encode() + b"\n"


def decode_reply(line: bytes) -> Ready | Forked | Refused | Checked | Exited:
    return _REPLY.validate_json(line)


def decode_request(line: bytes) -> RunRequest | CheckRequest:
    return _REQUEST.validate_json(line)
