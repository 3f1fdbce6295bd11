"""`observer run FLOW -p key=value`: one flow run now, in this process, against the Prefect API."""

from __future__ import annotations

import inspect
import json
import sys
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from observer.catalog import FLOWS


def parse_assignments(assignments: Sequence[str]) -> dict[str, Any]:
    """`key=value` pairs; a value is JSON when it parses as JSON, else a plain string."""
    values: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        if not sep or not key:
            raise ValueError(f"parameter {assignment!r} is not KEY=VALUE")
        try:
            values[key] = json.loads(raw)
        except json.JSONDecodeError:
            values[key] = raw
    return values


def flow_arguments(flow_obj: Any, values: dict[str, Any]) -> dict[str, Any]:
    """Map `-p` values onto the flow: into its single parameters model, or as keyword arguments."""
    names = list(inspect.signature(flow_obj.fn).parameters)
    hints = typing.get_type_hints(flow_obj.fn)
    if len(names) == 1 and names[0] not in values:
        model = hints.get(names[0])
        if inspect.isclass(model) and issubclass(model, BaseModel):
            return {names[0]: model.model_validate(values)}
    return values


def run_flow_command(name: str | None, assignments: Sequence[str], *, list_only: bool) -> int:
    if list_only or not name:
        for flow_name in FLOWS:
            print(flow_name)
        return 0 if list_only else 2
    if name not in FLOWS:
        print(f"observer: no flow named {name!r}; one of: {', '.join(FLOWS)}", file=sys.stderr)
        return 2
    try:
        flow_obj = FLOWS[name].load()
        arguments = flow_arguments(flow_obj, parse_assignments(assignments))
    except (ValueError, ValidationError) as exc:
        print(f"observer: bad parameters for {name}: {exc}", file=sys.stderr)
        return 2
    state = flow_obj(**arguments, return_state=True)
    result = state.result(raise_on_failure=False)
    if isinstance(result, BaseModel):
        print(result.model_dump_json(indent=2))
    elif result is not None and not isinstance(result, Exception):
        print(result)
    print(f"{name}: {state.name}", file=sys.stderr)
    return 0 if state.is_completed() else 1
