"""Route what native (C/C++) code prints on stderr into Python logging.

Some native libraries write straight to file descriptor 2, past Python's logging and its
levels: mediapipe's TensorFlow Lite prints "Created TensorFlow Lite XNNPACK delegate" and
absl prints "All log messages before absl::InitializeLog() ..." plus its own warnings when
a graph first runs, whatever GLOG_minloglevel, TF_CPP_MIN_LOG_LEVEL or absl's Python
verbosity say (measured with mediapipe 0.10.14). `native_stderr_to_log` points fd 2 at a
temporary file for the block, then hands each captured line to a logger, at a level the
caller picks, where a console policy (or --verbose) decides whether anyone sees it.

fd 2 belongs to the whole process: keep the block short (one call that is known to print).
Anything another thread writes to stderr meanwhile is logged too, not lost.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterator

_LOCK = threading.Lock()  # one redirection at a time: they would restore each other's fd


@contextlib.contextmanager
def native_stderr_to_log(logger: logging.Logger, level: int = logging.DEBUG) -> Iterator[None]:
    """Capture fd 2 inside the block and log each non-blank line to `logger` at `level`."""
    with _LOCK, tempfile.TemporaryFile() as sink:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        try:
            saved = os.dup(2)
        except OSError:  # no fd 2 (a detached process): nothing to capture
            yield
            return
        try:
            os.dup2(sink.fileno(), 2)
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            for line in sink.read().decode(errors="replace").splitlines():
                if line.strip():
                    logger.log(level, "%s", line.rstrip())
