"""The fsync helper process of `observer.intake.syncer`: fsync each path asked for, answer its errno.

Run by path with `python -I -S` (no site, no package import), so it imports only what is here.
It reads one path per line on stdin and writes one errno per line on stdout (0 on success), and
exits at the end of its input: when the webhook closes the pipe or dies.
"""

from __future__ import annotations

import contextlib
import os
import signal

EIO = 5


def serve(requests: int = 0, replies: int = 1) -> None:
    """The child's loop: fsync each path asked for, answer its errno; stop at end of input."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is for the webhook, which stops us
    inbox = os.fdopen(requests, "rb", buffering=4096)
    open_path, fd = b"", -1
    for line in inbox:
        path = line.rstrip(b"\n")
        error = 0
        try:
            if path != open_path:
                if fd >= 0:
                    os.close(fd)
                open_path, fd = b"", -1
                fd = os.open(path, os.O_RDONLY)
                open_path = path
            os.fsync(fd)
        except OSError as exc:
            error = exc.errno or EIO  # when the OS gave no number
        else:
            release_cache(fd)
        os.write(replies, b"%d\n" % error)


def release_cache(fd: int) -> None:
    """Let the kernel drop the segment's pages now that they are on disk: nothing in the webhook
    reads them again, and a page cache that only grows makes every later write slower on a VM
    whose memory is backed lazily (measured: 75 µs per 184 KB write with this, 590 µs without
    once the spool passed about 1 GB). Advice only: a refusal changes nothing."""
    with contextlib.suppress(OSError):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


if __name__ == "__main__":
    serve()
