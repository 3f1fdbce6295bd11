"""The fsync helper process of `observer.intake.syncer`: make each path asked for durable, answer
its errno.

Run by path with `python -I -S` (no site, no package import), so it imports only what is here; its
one argument is how far a segment is allocated ahead of its records (the spool's
`PREALLOCATE_BYTES`). It reads one path per line on stdin; for each flush it writes a line on stdout
with the errno (0 on success) and how many of the requests it covered; it exits at the end of its
input: when the webhook closes the pipe or dies.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

EIO = 5
RELEASE_BYTES = 8 * 1024 * 1024


def serve(ahead: int, requests: int = 0, replies: int = 1) -> None:
    """The child's loop: `fdatasync` the newest path asked for, answer its errno and how many
    requests it covered; stop at end of input.

    Requests that queued while a flush ran are answered by one flush: it covers everything
    written to the file before it starts (earlier segments were made durable when left)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is for the webhook, which stops us
    open_path, fd, released = b"", -1, 0
    pending = b""
    while True:
        data = os.read(requests, 65536)
        if not data:
            return
        pending += data
        *lines, pending = pending.split(b"\n")
        if not lines:
            continue
        path = lines[-1]
        error = 0
        try:
            if path != open_path:
                if fd >= 0:
                    os.close(fd)
                open_path, fd, released = b"", -1, 0
                fd = os.open(path, os.O_RDONLY)
                open_path = path
            os.fdatasync(fd)
        except OSError as exc:
            error = exc.errno or EIO  # when the OS gave no number
        os.write(replies, b"%d %d\n" % (error, len(lines)))
        if not error:
            released = release_cache(fd, released, ahead)  # after the answer: nobody waits for it


def release_cache(fd: int, released: int, ahead: int) -> int:
    """Let the kernel drop the segment's pages that are on disk, in steps of `RELEASE_BYTES` well
    behind the end of its records (at most `ahead` bytes before the file's end; the page the next
    write goes into stays cached: dropping it would make that write read it back); return how far
    the segment is released.

    Nothing in the webhook reads them again, and a page cache that only grows made every later
    write slower on a VM whose memory is backed lazily (measured here: 590 µs per 184 KB write once
    the spool passed about 1 GB, 75 µs with the pages dropped). Advice only: a refusal changes
    nothing."""
    try:
        end = os.fstat(fd).st_size - ahead
    except OSError:
        return released
    upto = end - end % RELEASE_BYTES
    if upto > released:
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, released, upto - released, os.POSIX_FADV_DONTNEED)
        released = upto
    return released


if __name__ == "__main__":
    serve(int(sys.argv[1]))
