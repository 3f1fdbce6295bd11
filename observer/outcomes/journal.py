"""The journal of the interventions that are not ops: every diagnosis analyze-errors delivered
(one per failure group its LLM analysis named) and every playbook entry consolidate-playbooks
delivered, one `Intervention` as a JSON line each (`state/interventions.jsonl`).

Writers append at delivery, fsync'd, under the journal's lock (`record`); dry runs deliver
nothing, so they record nothing. assess-outcomes reads the complete lines after its mark
(`read_new`), a `FileMark`: a journal replaced meanwhile is read from its start, and an
intervention read twice is known to the engine by its id. Once what it has read passes
COMPACT_BYTES, the reader rewrites the journal with the lines it has not read (a new file, so the
old mark no longer matches it: a run that dies before saving its new mark reads the new file from
its start, which holds exactly the lines it had not read). The journal stays small.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from pydantic import ValidationError

from observer.files import append_durably, file_lock, read_from, write_atomic
from observer.identity import FileMark
from observer.outcomes.interventions import Intervention
from observer.settings import Settings

#: What the reader has read beyond this is cut off the journal's start.
COMPACT_BYTES = 1024 * 1024


@dataclass
class JournalRead:
    """The interventions read, where the next read starts, and what could not be read."""

    interventions: list[Intervention] = field(default_factory=list)
    mark: FileMark | None = None
    unreadable: int = 0
    note: str = ""


def record(settings: Settings, interventions: Iterable[Intervention]) -> str | None:
    """Append the delivered interventions, durably. The delivery stands whatever happens here:
    a journal that cannot be written leaves them unjudged, and the reason is returned (for the
    run's log), never raised."""
    lines = b"".join(i.model_dump_json().encode() + b"\n" for i in interventions)
    if not lines:
        return None
    layout = settings.layout
    try:
        with file_lock(layout.interventions_lock):
            append_durably(layout.interventions_journal, lines)
    except OSError as exc:
        return f"not recorded for judging ({layout.interventions_journal}: {exc})"
    return None


def read_new(settings: Settings, mark: FileMark | None, *, compact: bool) -> JournalRead:
    """The interventions recorded after `mark` (all of them when it is another file's, or None),
    and the mark after them. With `compact`, a journal read beyond COMPACT_BYTES is first cut to
    what was not read."""
    layout = settings.layout
    path = layout.interventions_journal
    with file_lock(layout.interventions_lock):
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return JournalRead()
        offset, note = 0, ""
        if mark is not None:
            change = mark.change(path)
            if change is None:
                offset = mark.offset
            else:
                note = f"the journal was {change}: read from its start"
        if compact and offset >= COMPACT_BYTES:
            write_atomic(path, read_from(path, offset, size - offset))
            offset, size = 0, size - offset
            note = "the journal was cut to what was not read yet"
        data = read_from(path, offset, size - offset)
        complete = data[: data.rfind(b"\n") + 1]
        read = JournalRead(mark=FileMark.at(path, offset + len(complete)), note=note)
    for line in complete.splitlines():
        try:
            read.interventions.append(Intervention.model_validate_json(line))
        except ValidationError:
            read.unreadable += bool(line.strip())
    return read
