"""Where everything lives under the data dir: the one module that knows the paths.

data/                              OBSERVER_DATA_DIR
├── _observer/
│   ├── ops.jsonl                  the hot file: the newest ops (written by ingestion only)
│   ├── segments/NNNN….jsonl       sealed hot files waiting for the history table, named by position
│   ├── history/ops/               the history table (Delta Lake, day partitions), unless elsewhere
│   ├── spool/NNNNNNNNNNNN.jsonl   acknowledged ops not ingested yet (+ .lock)
│   ├── state/                     each flow's checkpoint, watermark or cache, and its lock
│   ├── logs/                      what `observer up`'s server, worker and webhook print
│   └── quarantine/                corrections lines that could not become ops
└── _prefect/                      PREFECT_HOME of `observer up`: the Prefect database
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path


@dataclass(frozen=True)
class DataLayout:
    """Every path under one data dir; built once per `Settings` (`settings.layout`)."""

    data_dir: Path

    @cached_property
    def observer_dir(self) -> Path:
        return self.data_dir / "_observer"

    @cached_property
    def prefect_home(self) -> Path:
        return self.data_dir / "_prefect"

    @cached_property
    def ops_path(self) -> Path:
        return self.observer_dir / "ops.jsonl"

    @cached_property
    def segments_dir(self) -> Path:
        """Sealed hot files, each named by the stream position of its first byte."""
        return self.observer_dir / "segments"

    @cached_property
    def history_dir(self) -> Path:
        """The history table's default place (OBSERVER_HISTORY_URI may put it elsewhere)."""
        return self.observer_dir / "history" / "ops"

    @cached_property
    def spool_dir(self) -> Path:
        return self.observer_dir / "spool"

    @cached_property
    def state_dir(self) -> Path:
        return self.observer_dir / "state"

    @cached_property
    def logs_dir(self) -> Path:
        """What `observer up`'s children print (the console shows one line per bad run)."""
        return self.observer_dir / "logs"

    # ── ingestion ───────────────────────────────────────────────────────────────────────────────

    @cached_property
    def ingest_checkpoint(self) -> Path:
        """Spool position and ops.jsonl size ingestion has reached."""
        return self.state_dir / "ingest.json"

    @cached_property
    def ingested_ids(self) -> Path:
        """Event ids already ingested, one a line: the idempotency memory."""
        return self.state_dir / "ingested-ids.txt"

    @cached_property
    def ingest_lock(self) -> Path:
        return self.state_dir / "ingest.lock"

    # ── corrections ─────────────────────────────────────────────────────────────────────────────

    @cached_property
    def corrections_checkpoint(self) -> Path:
        return self.state_dir / "corrections.json"

    @cached_property
    def corrections_quarantine(self) -> Path:
        return self.observer_dir / "quarantine" / "corrections.jsonl"

    @cached_property
    def corrections_lock(self) -> Path:
        return self.state_dir / "corrections.lock"

    # ── analysis ────────────────────────────────────────────────────────────────────────────────

    @cached_property
    def analysis_state(self) -> Path:
        """Watermark and delivered groups."""
        return self.state_dir / "analyze-errors.json"

    @cached_property
    def analysis_cache(self) -> Path:
        """LLM answers by model, prompt version and group."""
        return self.state_dir / "analyze-errors-cache.json"

    @cached_property
    def analysis_lock(self) -> Path:
        return self.state_dir / "analyze-errors.lock"

    # ── playbooks ───────────────────────────────────────────────────────────────────────────────

    @cached_property
    def playbooks_state(self) -> Path:
        """What each endpoint's last delivered entry covered."""
        return self.state_dir / "consolidate-playbooks.json"

    @cached_property
    def playbooks_lock(self) -> Path:
        return self.state_dir / "consolidate-playbooks.lock"

    # ── history ─────────────────────────────────────────────────────────────────────────────────

    @cached_property
    def history_state(self) -> Path:
        """What compact-history last did to the table (upkeep times)."""
        return self.state_dir / "compact-history.json"

    @cached_property
    def history_lock(self) -> Path:
        """Held by the one process of this host that commits to the table."""
        return self.state_dir / "compact-history.lock"

    # ── outcomes ────────────────────────────────────────────────────────────────────────────────

    @cached_property
    def interventions_journal(self) -> Path:
        """The diagnoses and playbook entries delivered to the gateway, one JSON line each,
        appended at delivery (analyze-errors, consolidate-playbooks), read by assess-outcomes."""
        return self.state_dir / "interventions.jsonl"

    @cached_property
    def interventions_lock(self) -> Path:
        return self.state_dir / "interventions.lock"

    @cached_property
    def outcomes_state(self) -> Path:
        """assess-outcomes' checkpoint: its watermark, journal mark, changes waiting to be posted,
        and which engine file holds the judging's state (the commit point of a run)."""
        return self.state_dir / "assess-outcomes.json"

    def outcomes_engine(self, generation: int) -> Path:
        """The judging's state as of one run (`generation`), named by the checkpoint."""
        return self.state_dir / f"assess-outcomes-engine-{generation:08d}.json"

    @cached_property
    def outcomes_posted(self) -> Path:
        """The ids of changes posted since the checkpoint, one a line, fsync'd after each post."""
        return self.state_dir / "assess-outcomes-posted.txt"

    @cached_property
    def outcomes_lock(self) -> Path:
        return self.state_dir / "assess-outcomes.lock"

    @cached_property
    def outcomes_view(self) -> Path:
        """Every intervention with its verdict, and the alerts: what `observer outcomes` prints."""
        return self.state_dir / "outcomes.json"

    # ── the gateway ─────────────────────────────────────────────────────────────────────────────

    @cached_property
    def gateway_state(self) -> Path:
        """Whether the gateway is down as the runs that post to it found it, and their back-off
        (read by the worker, the flows, `observer status` and the console)."""
        return self.state_dir / "gateway.json"

    @cached_property
    def gateway_lock(self) -> Path:
        return self.state_dir / "gateway.lock"
