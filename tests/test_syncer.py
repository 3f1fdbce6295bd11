"""The fsync helper process: it answers, it fails honestly, and the webhook survives without it."""

from __future__ import annotations

import asyncio
import ctypes
import errno
import mmap
import os
import signal
import time
from pathlib import Path

import httpx

from observer.cli.console import process_children
from observer.errors import WriteFailed
from observer.intake.group_commit import FSYNCS_IN_FLIGHT, Intake
from observer.intake.spool import PREALLOCATE_BYTES, SpoolPosition, read_spool
from observer.intake.syncer import Syncer
from observer.intake.syncer_child import RELEASE_BYTES, serve
from observer.settings import Settings
from observer.webhook.ledger import Ledger
from tests.fakes import FailingFsync, WebhookProcess, spool_records

EVENT = {"input_summary": "x", "success": True, "source": "scenario"}


def gone(pid: int, within_s: float = 10.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):  # reaped meanwhile
            return True
        if state == "Z":  # exited, waiting for its parent to reap it
            return True
        time.sleep(0.05)
    return False


def test_the_helper_fsyncs_and_answers_each_errno(tmp_path: Path) -> None:
    target = tmp_path / "segment.jsonl"
    target.write_bytes(b"a\n")

    async def scenario() -> tuple[list[int], int | None]:
        answers: list[int] = []
        lost: list[bool] = []
        syncer = Syncer(
            on_synced=lambda error, covered: answers.extend([error] * covered),
            on_lost=lambda: lost.append(True),
        )
        syncer.start(asyncio.get_running_loop())
        for path in (target, tmp_path / "missing.jsonl", target):
            syncer.request(path)
            before = len(answers)
            while len(answers) == before:
                await asyncio.sleep(0.01)
        process = syncer._process
        syncer.stop()
        assert not lost
        return answers, process.returncode if process else None

    answers, returncode = asyncio.run(scenario())
    assert answers == [0, errno.ENOENT, 0]
    assert returncode == 0  # it left on its own once its input closed


def test_requests_that_queued_during_a_flush_are_answered_by_the_next_one(tmp_path: Path) -> None:
    """The child flushes the newest path it has read once, and says how many requests that
    answers (the parent counts them off oldest first)."""
    older, newer = tmp_path / "1.jsonl", tmp_path / "2.jsonl"
    older.write_bytes(b"a\n")
    newer.write_bytes(b"b\n")
    requests_read, requests_write = os.pipe()
    replies_read, replies_write = os.pipe()
    asked = b"".join(os.fsencode(p) + b"\n" for p in (older, newer, newer))
    os.write(requests_write, asked + os.fsencode(tmp_path / "missing.jsonl") + b"\n")
    os.close(requests_write)
    serve(PREALLOCATE_BYTES, requests_read, replies_write)  # returns at the end of its input
    os.close(replies_write)
    with os.fdopen(replies_read, "rb") as replies:
        assert replies.read() == b"%d 4\n" % errno.ENOENT  # one flush, of the newest path
    os.close(requests_read)


def resident_pages(path: Path) -> int:
    """How many of a file's pages are in the page cache (mincore(2) over a mapping of it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int]
    libc.mmap.argtypes += [ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = path.stat().st_size
    pages = -(-size // mmap.PAGESIZE)
    with path.open("rb") as file:
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, file.fileno(), 0)
        assert address not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        try:
            vector = ctypes.create_string_buffer(pages)
            assert libc.mincore(address, size, vector) == 0, os.strerror(ctypes.get_errno())
            return sum(byte & 1 for byte in vector.raw)
        finally:
            libc.munmap(address, size)


def test_the_helper_drops_fsynced_pages_from_the_cache_but_the_tail(tmp_path: Path) -> None:
    target = tmp_path / "segment.jsonl"
    line = b"x" * 229 + b"\n"
    records = line * (2 * RELEASE_BYTES // len(line) + 4096)
    target.write_bytes(records)  # cached as written
    with target.open("r+b") as segment:  # and allocated ahead, as the spool's writer does
        os.posix_fallocate(segment.fileno(), len(records), PREALLOCATE_BYTES)
    page_count = -(-len(records) // mmap.PAGESIZE)
    assert resident_pages(target) > page_count // 2

    async def scenario() -> list[int]:
        answers: list[int] = []
        syncer = Syncer(on_synced=lambda error, _: answers.append(error), on_lost=lambda: None)
        syncer.start(asyncio.get_running_loop())
        syncer.request(target)
        while not answers:
            await asyncio.sleep(0.01)
        syncer.stop()  # the child releases after answering: wait until it has left
        return answers

    assert asyncio.run(scenario()) == [0]
    # Everything but the records past the last whole step is gone; they (with the page the next
    # write goes into) are still cached.
    tail_pages = -(-(len(records) - 2 * RELEASE_BYTES) // mmap.PAGESIZE)
    assert resident_pages(target) == tail_pages


def test_a_failed_fsync_refuses_the_batch_and_keeps_nothing_of_it(settings: Settings) -> None:
    async def scenario() -> Intake[int]:
        intake = Intake(settings, Ledger(settings))
        intake.open()
        await intake.submit(None, {**EVENT, "input_summary": "kept"})
        helper, intake._syncer = intake._syncer, FailingFsync(intake)  # type: ignore[assignment]
        assert helper is not None
        helper.stop()
        results = await asyncio.gather(
            *(intake.submit(None, {**EVENT, "input_summary": "refused"}) for _ in range(3)),
            return_exceptions=True,
        )
        assert all(isinstance(r, WriteFailed) for r in results)
        assert intake.queued == 0
        intake._syncer = None  # fsync inline from here on: the disk works again
        await intake.submit(None, {**EVENT, "input_summary": "after"})
        intake.close()
        return intake

    intake = asyncio.run(scenario())
    assert intake.write_errors == 1
    records = read_spool(settings.layout.spool_dir, SpoolPosition(0, 0)).records
    assert [b'"refused"' in r.line for r in records] == [False, False]


class HeldDisk:
    """Stands in for the helper process; answers an fsync only when the test says so."""

    def __init__(self, intake: Intake[int]) -> None:
        self.intake = intake
        self.asked: list[Path] = []

    def request(self, path: Path) -> None:
        self.asked.append(path)

    def answer(self, error: int = 0) -> None:
        self.intake._synced(error, 1)

    def stop(self) -> None:
        pass


def held_intake(settings: Settings) -> tuple[Intake[int], HeldDisk]:
    """An intake on an event loop whose fsyncs wait for the test (its real helper stopped)."""
    intake = Intake(settings, Ledger(settings))
    intake.open()
    helper, disk = intake._syncer, HeldDisk(intake)
    assert helper is not None
    helper.stop()
    intake._syncer = disk  # type: ignore[assignment]
    return intake, disk


def submit_all(intake: Intake[int], *summaries: str) -> list[asyncio.Future[int]]:
    return [
        asyncio.ensure_future(intake.submit(None, {**EVENT, "input_summary": summary}))
        for summary in summaries
    ]


def test_later_batches_are_written_and_their_fsyncs_asked_for_while_one_runs(
    settings: Settings,
) -> None:
    """Up to `FSYNCS_IN_FLIGHT` fsyncs asked for at once: while the first runs, each later batch is
    written at once and its fsync asked for (the helper covers the ones that queued with one
    fsync); past the limit, what arrives waits for an answer, then goes as one batch."""

    async def scenario() -> None:
        intake, disk = held_intake(settings)
        first = submit_all(intake, "a")
        await asyncio.sleep(0.01)
        assert (len(spool_records(settings)), len(disk.asked)) == (1, 1)  # written, fsync running
        written = [first]
        for n in range(1, FSYNCS_IN_FLIGHT):
            written.append(submit_all(intake, f"b{n}", f"b{n}"))
            await asyncio.sleep(0.01)
            # One write and one fsync request for both, while the first fsync runs.
            assert (len(spool_records(settings)), len(disk.asked)) == (1 + 2 * n, 1 + n)
        records = len(spool_records(settings))
        held = submit_all(intake, "c0", "c1")
        await asyncio.sleep(0.01)
        assert (len(spool_records(settings)), len(disk.asked)) == (records, FSYNCS_IN_FLIGHT)
        assert intake.queued == records + 2 and not first[0].done()
        disk.answer()
        await asyncio.sleep(0.01)
        assert first[0].result() == 1
        assert not any(future.done() for batch in [*written[1:], held] for future in batch)
        # The held batch went, with its fsync asked for, as soon as the first answer came.
        assert (len(spool_records(settings)), len(disk.asked)) == (
            records + 2,
            FSYNCS_IN_FLIGHT + 1,
        )
        for n, batch in enumerate(written[1:], start=1):
            disk.answer()
            await asyncio.sleep(0.01)
            assert [future.result() for future in batch] == [2 * n, 2 * n + 1]
        assert not any(future.done() for future in held)
        disk.answer()
        await asyncio.sleep(0.01)
        assert [future.result() for future in held] == [records + 1, records + 2]
        assert intake.queued == 0
        intake._syncer = None
        intake.close()

    asyncio.run(scenario())


def test_a_failed_fsync_refuses_every_batch_in_flight_and_later_answers_cover_nothing(
    settings: Settings,
) -> None:
    """After a failed fsync no batch written before it can be called durable, even if the next
    fsync succeeds; the answer still due for the refused second batch must not count for what is
    written after the refusal (it takes the refused records' place in the spool)."""

    async def scenario() -> None:
        intake, disk = held_intake(settings)
        first = submit_all(intake, "refused-a")
        await asyncio.sleep(0.01)
        second = submit_all(intake, "refused-b")
        await asyncio.sleep(0.01)
        assert len(disk.asked) == 2
        disk.answer(errno.EIO)
        await asyncio.sleep(0.01)
        for future in first + second:
            assert isinstance(future.exception(), WriteFailed)
        assert spool_records(settings) == []  # cut back: nothing of them is kept
        [after] = submit_all(intake, "after")
        await asyncio.sleep(0.01)
        assert spool_records(settings) and len(disk.asked) == 3  # written, fsync asked for
        disk.answer()  # the refused second batch's fsync: covers nothing written since
        await asyncio.sleep(0.01)
        assert not after.done()
        disk.answer()
        await asyncio.sleep(0.01)
        assert after.result() == 1
        intake._syncer = None
        intake.close()

    asyncio.run(scenario())


def test_without_the_helper_the_webhook_still_acknowledges_durably(
    webhook: WebhookProcess, settings: Settings
) -> None:
    [helper] = process_children(webhook.process.pid)
    os.kill(helper, signal.SIGKILL)
    assert gone(helper)
    for n in range(5):
        answer = httpx.post(f"{webhook.url}/event", json={**EVENT, "input_summary": f"e{n}"})
        assert answer.status_code == 200, answer.text
    records = list(read_spool(settings.layout.spool_dir, SpoolPosition(0, 0)).records)
    assert len(records) == 5
    assert httpx.get(f"{webhook.url}/health").json()["write_errors"] == 0


def test_the_helper_does_not_outlive_a_killed_webhook(webhook: WebhookProcess) -> None:
    [helper] = process_children(webhook.process.pid)
    assert httpx.post(f"{webhook.url}/event", json=EVENT).status_code == 200
    webhook.kill(signal.SIGKILL)
    assert gone(helper), "the fsync helper is still running after its webhook died"


def test_the_one_request_of_a_sole_client_is_fsynced_without_the_helper(
    settings: Settings,
) -> None:
    """Alone, the helper's round trip only delays the answer; with company, it keeps the loop
    serving during the fsync."""
    clients = 1

    async def scenario() -> HeldDisk:
        intake, disk = held_intake(settings)
        intake.sole_client = lambda: clients == 1
        await asyncio.wait_for(intake.submit(None, {**EVENT, "input_summary": "alone"}), 5)
        assert disk.asked == []  # answered once fsync'd here, without the helper
        nonlocal clients
        clients = 2
        waiting = asyncio.ensure_future(intake.submit(None, {**EVENT, "input_summary": "with"}))
        while not disk.asked:
            await asyncio.sleep(0.01)
        assert not waiting.done()  # waits for the helper's answer
        disk.answer()
        await asyncio.wait_for(waiting, 5)
        intake.close()
        return disk

    disk = asyncio.run(scenario())
    assert len(disk.asked) == 1
    assert [b'"alone"' in line for line in spool_records(settings)] == [True, False]
