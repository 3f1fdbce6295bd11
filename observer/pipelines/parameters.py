"""What every flow's parameters model shares: unknown names refused, optional fields plain.

- A misspelt `dryrun` must not silently turn a dry run into a real post. The models forbid extra
  keys (`extra="forbid"`), which their JSON schema says as `additionalProperties: false`, so the
  Prefect server refuses the same names when a deployment enforces its schema (`observer deploy`
  makes every deployment do so): from `observer run`, `prefect deployment run`, the API and the UI.
- An optional field (`float | None`, None meaning "not set") is written as the plain type with no
  default, and a parameters value leaves unset fields out: the UI's run form then shows an empty
  field of that type, not a "None" type to pick, and does not send null for what was left empty.
"""

from __future__ import annotations

from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
)


def _optional_fields_plainly(schema: dict[str, Any]) -> None:
    """`anyOf: [T, null]` with default null → T, no default (the field stays optional)."""
    for field in schema.get("properties", {}).values():
        branches = field.get("anyOf", [])
        if len(branches) == 2 and {"type": "null"} in branches and field.get("default") is None:
            del field["anyOf"]
            field.pop("default", None)
            field.update(next(branch for branch in branches if branch != {"type": "null"}))


class FlowParameters(BaseModel):
    """Base of each flow's parameters model."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_optional_fields_plainly)

    @model_serializer(mode="wrap")
    def _unset_fields_left_out(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {key: value for key, value in handler(self).items() if value is not None}

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> FlowParameters:
        """Validate `values`; a `ValueError` names each unknown key and lists the valid ones."""
        unknown = [key for key in values if key not in cls.model_fields]
        if unknown:
            names = ", ".join(repr(key) for key in unknown)
            raise ValueError(f"unknown parameter(s) {names}; valid: {', '.join(cls.model_fields)}")
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in error['loc']) or 'parameters'}: {error['msg']}"
                for error in exc.errors(include_url=False)
            )
            raise ValueError(problems) from None

    @property
    def label(self) -> str:
        """What a run with these parameters covers: its name in the UI's run list is
        `flow-name (label)`, so the history reads as an audit trail."""
        raise NotImplementedError

    def run_name(self, flow_name: str) -> str:
        return f"{flow_name} ({self.label})"
