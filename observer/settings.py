"""Observer's settings: the original's environment variables, their defaults, and the new ones.

Every process of the product (webhook, flows, CLI, `observed()`) reads its configuration here, so a
value means the same thing everywhere. A bad value stops start-up with a message naming the variable.
"""

from __future__ import annotations

import math
import tomllib
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from observer.errors import SettingsError
from observer.layout import DataLayout


class Settings(BaseSettings):
    """Configuration from the environment (names kept from the original where it had them)."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    gateway_url: str = Field("http://localhost:3700", validation_alias="GATEWAY_URL")
    lakehouse_url: str = Field("http://localhost:3100", validation_alias="LAKEHOUSE_URL")
    cycle_seconds: float = Field(30.0, validation_alias="OBSERVER_CYCLE")
    # How `observer up` runs flows: "warm" (forked from a warm template, observer/worker/) or
    # "process" (Prefect's process worker, a new interpreter per run: kept as a baseline).
    worker: Literal["warm", "process"] = Field("warm", validation_alias="OBSERVER_WORKER")
    port: int = Field(3800, validation_alias="OBSERVER_PORT", ge=0, le=65535)
    corrections_path: Path = Field(
        Path("data/_kb/overseer_corrections.jsonl"), validation_alias="OVERSEER_CORRECTIONS_PATH"
    )
    host: str = Field("127.0.0.1", validation_alias="OBSERVER_HOST")
    token: str | None = Field(None, validation_alias="OBSERVER_TOKEN")
    max_body_bytes: int = Field(1024 * 1024, validation_alias="OBSERVER_MAX_BODY_BYTES", gt=0)
    max_header_bytes: int = Field(64 * 1024, validation_alias="OBSERVER_MAX_HEADER_BYTES", gt=0)
    max_batch: int = Field(1000, validation_alias="OBSERVER_MAX_BATCH", gt=0)
    header_timeout_seconds: float = Field(10.0, validation_alias="OBSERVER_HEADER_TIMEOUT", gt=0)
    body_timeout_seconds: float = Field(30.0, validation_alias="OBSERVER_BODY_TIMEOUT", gt=0)
    keepalive_timeout_seconds: float = Field(
        5.0, validation_alias="OBSERVER_KEEPALIVE_TIMEOUT", gt=0
    )
    # None: sized for the machine when the webhook starts (observer.webhook.protocol).
    max_connections: int | None = Field(None, validation_alias="OBSERVER_MAX_CONNECTIONS", gt=0)
    data_dir: Path = Field(Path("data"), validation_alias="OBSERVER_DATA_DIR")
    max_pending_events: int = Field(20_000, validation_alias="OBSERVER_MAX_PENDING", gt=0)
    dedup_window: int = Field(100_000, validation_alias="OBSERVER_DEDUP_WINDOW", gt=0)
    spool_segment_bytes: int = Field(
        64 * 1024 * 1024, validation_alias="OBSERVER_SPOOL_SEGMENT_BYTES", gt=0
    )
    http_timeout_seconds: float = Field(30.0, validation_alias="OBSERVER_HTTP_TIMEOUT", gt=0)
    http_attempts: int = Field(3, validation_alias="OBSERVER_HTTP_ATTEMPTS", ge=1, le=10)
    http_backoff_seconds: float = Field(1.0, validation_alias="OBSERVER_HTTP_BACKOFF", ge=0)
    corrections_grace_seconds: float = Field(
        60.0, validation_alias="OBSERVER_CORRECTIONS_GRACE_SECONDS", ge=0
    )
    corrections_max_line_bytes: int = Field(
        1024 * 1024, validation_alias="OBSERVER_CORRECTIONS_MAX_LINE_BYTES", gt=0
    )
    corrections_max_bytes_per_run: int = Field(
        256 * 1024 * 1024, validation_alias="OBSERVER_CORRECTIONS_MAX_BYTES_PER_RUN", gt=0
    )
    # The ops history (observer/history/): a Delta Lake table of every op, the hot ops.jsonl
    # sealed into it. "off" keeps one growing ops.jsonl, as before the table existed.
    history: Literal["on", "off"] = Field("on", validation_alias="OBSERVER_HISTORY")
    history_uri: str | None = Field(None, validation_alias="OBSERVER_HISTORY_URI")
    hot_max_bytes: int = Field(256 * 1024 * 1024, validation_alias="OBSERVER_HOT_MAX_BYTES", gt=0)
    history_days: int = Field(90, validation_alias="OBSERVER_HISTORY_DAYS", ge=1)
    history_compact_seconds: float = Field(
        900.0, validation_alias="OBSERVER_HISTORY_COMPACT_SECONDS", gt=0
    )
    # Retention, compaction, vacuum: one host per table. "auto": on for a table on this host's
    # disk, off for one on object storage (shared: say which host keeps it).
    history_upkeep: Literal["auto", "on", "off"] = Field(
        "auto", validation_alias="OBSERVER_HISTORY_UPKEEP"
    )
    # assess-outcomes' schedule.
    outcomes_seconds: float = Field(300.0, validation_alias="OBSERVER_OUTCOMES_SECONDS", gt=0)
    # assess-outcomes: the thresholds of the rule that judges corrections, diagnoses and playbook
    # entries (observer/outcomes/rule.py). Changing one changes the rule's version in every record.
    outcomes_alpha: float = Field(0.05, validation_alias="OBSERVER_OUTCOMES_ALPHA", gt=0, lt=0.5)
    outcomes_first_look: int = Field(10, validation_alias="OBSERVER_OUTCOMES_FIRST_LOOK", ge=1)
    outcomes_looks: int = Field(5, validation_alias="OBSERVER_OUTCOMES_LOOKS", ge=1, le=20)
    outcomes_min_effect: float = Field(
        0.5, validation_alias="OBSERVER_OUTCOMES_MIN_EFFECT", gt=0, lt=1
    )
    outcomes_lag_seconds: float = Field(60, validation_alias="OBSERVER_OUTCOMES_LAG_SECONDS", ge=0)
    outcomes_window_hours: float = Field(
        72, validation_alias="OBSERVER_OUTCOMES_WINDOW_HOURS", gt=0
    )
    outcomes_pre_hours: float = Field(6, validation_alias="OBSERVER_OUTCOMES_PRE_HOURS", gt=0)
    outcomes_baseline_days: float = Field(
        7, validation_alias="OBSERVER_OUTCOMES_BASELINE_DAYS", gt=0
    )
    outcomes_shrink_weight: float = Field(
        0.5, validation_alias="OBSERVER_OUTCOMES_SHRINK_WEIGHT", ge=0, le=1
    )
    outcomes_shrink_weight_min: float = Field(
        0.2, validation_alias="OBSERVER_OUTCOMES_SHRINK_WEIGHT_MIN", ge=0, le=1
    )
    outcomes_shrink_weight_max: float = Field(
        0.8, validation_alias="OBSERVER_OUTCOMES_SHRINK_WEIGHT_MAX", ge=0, le=1
    )
    outcomes_spike_min_failures: int = Field(
        3, validation_alias="OBSERVER_OUTCOMES_SPIKE_MIN_FAILURES", ge=1
    )
    outcomes_spike_factor: float = Field(
        2.0, validation_alias="OBSERVER_OUTCOMES_SPIKE_FACTOR", ge=1
    )
    outcomes_reference_min_spikes: int = Field(
        3, validation_alias="OBSERVER_OUTCOMES_REFERENCE_MIN_SPIKES", ge=1
    )
    outcomes_reference_quantile: float = Field(
        0.25, validation_alias="OBSERVER_OUTCOMES_REFERENCE_QUANTILE", gt=0, le=0.5
    )
    outcomes_cusum_threshold: float = Field(
        4.0, validation_alias="OBSERVER_OUTCOMES_CUSUM_THRESHOLD", gt=0
    )
    outcomes_watch_days: float = Field(7, validation_alias="OBSERVER_OUTCOMES_WATCH_DAYS", ge=0)
    outcomes_recovery_level: float = Field(
        0.05, validation_alias="OBSERVER_OUTCOMES_RECOVERY_LEVEL", gt=0, lt=1
    )
    outcomes_repeat_min: int = Field(3, validation_alias="OBSERVER_OUTCOMES_REPEAT_MIN", ge=2)
    outcomes_repeat_days: float = Field(7, validation_alias="OBSERVER_OUTCOMES_REPEAT_DAYS", gt=0)
    outcomes_advice_similarity: float = Field(
        0.6, validation_alias="OBSERVER_OUTCOMES_ADVICE_SIMILARITY", gt=0, le=1
    )
    outcomes_retention_days: float = Field(
        14, validation_alias="OBSERVER_OUTCOMES_RETENTION_DAYS", gt=0
    )
    prefect_api_url: str | None = Field(
        None, validation_alias=AliasChoices("PREFECT_API_URL", "OBSERVER_PREFECT_API_URL")
    )
    # Several hosts on one Prefect server: each names itself (see observer/instance.py).
    instance: str | None = Field(
        None,
        validation_alias="OBSERVER_INSTANCE",
        pattern=r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment first; then the checkout's prefect.toml, where Prefect itself finds
        # the API of the server `observer up` starts (so a second terminal needs no export).
        return init_settings, env_settings, _PrefectToml(settings_cls)

    @field_validator("cycle_seconds", mode="before")
    @classmethod
    def _cycle_is_a_positive_number(cls, value: object) -> float:
        # The original's parseInt("0.5") is 0, a busy loop; a real number > 0 is required here.
        try:
            seconds = float(str(value).strip())
        except ValueError:
            raise ValueError(f"must be a number of seconds, got {value!r}") from None
        if not math.isfinite(seconds) or seconds <= 0:
            raise ValueError(f"must be a number of seconds greater than 0, got {value!r}")
        return seconds

    @field_validator("gateway_url", "lakehouse_url")
    @classmethod
    def _url_is_http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https://, got {value!r}")
        return value.rstrip("/")

    @field_validator("history_uri")
    @classmethod
    def _history_uri_is_known(cls, value: str | None) -> str | None:
        if value is None or "://" not in value or value.startswith(("s3://", "s3a://", "file://")):
            return value
        raise ValueError(f"must be a local path, file://… or s3://bucket/prefix, got {value!r}")

    @field_validator(
        "token", "prefect_api_url", "instance", "max_connections", "history_uri", mode="before"
    )
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @property
    def instance_name(self) -> str:
        """This host's name in the history table (`OBSERVER_INSTANCE`, else `observer`)."""
        return self.instance or "observer"

    @property
    def history_location(self) -> str:
        """Where the history table is: `OBSERVER_HISTORY_URI`, else under the data dir."""
        return self.history_uri or str(self.layout.history_dir)

    @property
    def history_is_remote(self) -> bool:
        """Whether the table is on object storage, where several hosts may share it."""
        return self.history_location.startswith(("s3://", "s3a://"))

    @property
    def keeps_history(self) -> bool:
        """Whether this host runs the table's upkeep (retention, compaction, vacuum)."""
        if self.history_upkeep == "auto":
            return not self.history_is_remote
        return self.history_upkeep == "on"

    @cached_property
    def layout(self) -> DataLayout:
        """Every path under the data dir (ops.jsonl, the spool, each flow's state)."""
        return DataLayout(self.data_dir)


class _PrefectToml(PydanticBaseSettingsSource):
    """`[api] url` of ./prefect.toml, the file Prefect reads in the working directory."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ answers for the whole source

    def __call__(self) -> dict[str, Any]:
        try:
            url = tomllib.loads(Path("prefect.toml").read_text()).get("api", {}).get("url")
        except (OSError, tomllib.TOMLDecodeError):
            return {}
        return {"PREFECT_API_URL": url} if isinstance(url, str) else {}


def load_settings(**overrides: object) -> Settings:
    """Read the settings from the environment; raise `SettingsError` naming each bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = _variable_name(error["loc"][0] if error["loc"] else "?")
            problems.append(f"{name}: {error['msg']}")
        raise SettingsError("invalid configuration: " + "; ".join(problems)) from None


def _variable_name(field_or_alias: object) -> str:
    field = Settings.model_fields.get(str(field_or_alias))
    if field is None:
        return str(field_or_alias)
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return str(alias or field_or_alias)
