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
from observer.intake.group_commit import Intake
from observer.intake.spool import PREALLOCATE_BYTES, SpoolPosition, read_spool
from observer.intake.syncer import Syncer
from observer.intake.syncer_child import RELEASE_BYTES
from observer.settings import Settings
from observer.webhook.ledger import Ledger
from tests.fakes import WebhookProcess

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
        syncer = Syncer(on_synced=answers.append, on_lost=lambda: lost.append(True))
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
        syncer = Syncer(on_synced=answers.append, on_lost=lambda: None)
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


class FailingDisk:
    """Stands in for the helper process and answers every fsync with EIO (a unit test's stub)."""

    def __init__(self, intake: Intake[int]) -> None:
        self.intake = intake

    def request(self, path: Path) -> None:
        asyncio.get_running_loop().call_soon(self.intake._synced, errno.EIO)

    def stop(self) -> None:
        pass


def test_a_failed_fsync_refuses_the_batch_and_keeps_nothing_of_it(settings: Settings) -> None:
    async def scenario() -> Intake[int]:
        intake = Intake(settings, Ledger(settings))
        intake.open()
        await intake.submit(None, {**EVENT, "input_summary": "kept"})
        helper, intake._syncer = intake._syncer, FailingDisk(intake)  # type: ignore[assignment]
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

    def answer(self) -> None:
        self.intake._synced(0)

    def stop(self) -> None:
        pass


def test_what_arrives_during_an_fsync_waits_and_is_written_as_one_batch(
    settings: Settings,
) -> None:
    def spool_lines() -> int:
        return len(list(read_spool(settings.layout.spool_dir, SpoolPosition(0, 0)).records))

    async def scenario() -> None:
        intake = Intake(settings, Ledger(settings))
        intake.open()
        disk = HeldDisk(intake)
        intake._syncer = disk  # type: ignore[assignment]
        first = asyncio.ensure_future(intake.submit(None, {**EVENT, "input_summary": "a"}))
        await asyncio.sleep(0.01)
        assert (spool_lines(), len(disk.asked)) == (1, 1)  # written, its fsync running
        later = [
            asyncio.ensure_future(intake.submit(None, {**EVENT, "input_summary": f"b{n}"}))
            for n in range(3)
        ]
        await asyncio.sleep(0.01)
        assert (spool_lines(), len(disk.asked), intake.queued) == (1, 1, 4)  # queued, unwritten
        assert not first.done()
        disk.answer()
        await asyncio.sleep(0.01)
        assert first.done() and not any(f.done() for f in later)
        assert (spool_lines(), len(disk.asked)) == (4, 2)  # one write, one fsync for all three
        disk.answer()
        await asyncio.sleep(0.01)
        assert [f.result() for f in later] == [2, 3, 4]
        assert intake.queued == 0
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
        intake = Intake(settings, Ledger(settings))
        intake.open()
        helper, disk = intake._syncer, HeldDisk(intake)
        assert helper is not None
        helper.stop()
        intake._syncer = disk  # type: ignore[assignment]
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
    records = read_spool(settings.layout.spool_dir, SpoolPosition(0, 0)).records
    assert [b'"alone"' in r.line for r in records] == [True, False]
