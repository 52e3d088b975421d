"""Big imports without the cyclic garbage collector's full passes.

Importing torch, diffusers and the pipeline classes (or Prefect's server app) adds about a million
long-lived objects. CPython runs a full collection each time the old generation grows by a
quarter, so one such import sets off about eight of them, each walking the whole heap, and none
frees anything: modules live as long as the process. Measured in a `t2vz run` that generates:
1.3 s of CPU out of its ~10, and 0.5 s in a local server's start.

`paused_gc()` turns the collector off around such imports and then freezes what exists
(`gc.freeze`): later collections skip those objects. What the freeze keeps: garbage cycles that
other threads made during the pause (a few seconds) stay until exit. Frozen objects are
unfrozen at exit, so extensions that count leaked objects there (nanobind, under triton) see
them freed as usual.
"""

from __future__ import annotations

import atexit
import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.RLock()  # the collector's on/off state is one per process
_depth = 0  # nested pauses (an import that imports a module using paused_gc): the outermost ends it
_unfreeze_at_exit = False


@contextmanager
def paused_gc() -> Iterator[None]:
    """No automatic collection inside; everything alive at the end is frozen."""
    global _depth, _unfreeze_at_exit
    with _lock:
        was_enabled = gc.isenabled()
        gc.disable()
        _depth += 1
        try:
            yield
        finally:
            _depth -= 1
            if _depth == 0:
                gc.freeze()
                if not _unfreeze_at_exit:
                    atexit.register(gc.unfreeze)
                    _unfreeze_at_exit = True
            if was_enabled:
                gc.enable()
