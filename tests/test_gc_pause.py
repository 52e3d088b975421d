"""t2vz_core.gc_pause: big imports without the collector's full passes (pure library)."""

from __future__ import annotations

import gc
import importlib.util
import subprocess
import sys

import pytest

from t2vz_core.gc_pause import paused_gc


def _grow_heap() -> list:
    """~600,000 long-lived container objects: the old generation grows as it does in an import."""
    return [[index] for index in range(200_000)] + [{"k": index} for index in range(200_000)]


@pytest.fixture
def full_collections():
    """How many full (generation 2) collections the interpreter ran while the test held it."""
    seen = []

    def count(phase, info):
        if phase == "start" and info["generation"] == 2:
            seen.append(info)

    was_enabled = gc.isenabled()
    gc.enable()
    gc.callbacks.append(count)
    try:
        yield seen
    finally:
        gc.callbacks.remove(count)
        if not was_enabled:
            gc.disable()


def test_growth_outside_runs_full_collections_inside_none(full_collections):
    kept = [_grow_heap()]
    assert full_collections, "the control: a growing heap triggers full collections"
    full_collections.clear()
    frozen_before = gc.get_freeze_count()
    with paused_gc():
        assert not gc.isenabled()
        kept.append(_grow_heap())
    assert full_collections == []
    assert gc.isenabled()
    # What the pause made is frozen: later collections do not walk it again.
    assert gc.get_freeze_count() >= frozen_before + 400_000
    # Frozen objects are still freed when nothing refers to them.
    kept.clear()
    assert gc.get_freeze_count() < frozen_before + 400_000


def test_a_disabled_collector_stays_disabled(full_collections):
    gc.disable()
    with paused_gc():
        pass
    assert not gc.isenabled()


def test_nested_pauses_end_with_the_outermost(full_collections):
    with paused_gc():
        with paused_gc():
            pass
        assert not gc.isenabled()
        kept = _grow_heap()
    assert full_collections == [] and gc.isenabled()
    del kept


def test_the_collector_comes_back_when_the_import_fails(full_collections):
    with pytest.raises(ImportError), paused_gc():
        import t2vz_core.no_such_module  # noqa: F401
    assert gc.isenabled()


_FROZEN_TRITON = """
import atexit, gc, sys
from t2vz_core.gc_pause import paused_gc
with paused_gc():
    import triton.language
if sys.argv[1] == "keep-frozen":
    atexit.unregister(gc.unfreeze)
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton (torch's, on Linux) not installed")
def test_frozen_objects_are_unfrozen_at_exit_so_nanobind_reports_no_leak():
    """torch imports triton, whose nanobind counts the objects still alive at exit: frozen ones
    are never freed, and the console of every run would end with "nanobind: leaked ..." lines."""
    runs = {
        how: subprocess.run([sys.executable, "-c", _FROZEN_TRITON, how], capture_output=True, text=True, timeout=60)
        for how in ("as-is", "keep-frozen")
    }
    assert runs["as-is"].returncode == 0 and runs["as-is"].stderr == ""
    assert "nanobind: leaked" in runs["keep-frozen"].stderr  # the control: what the unfreeze prevents
