"""Injected faults (issue 6, item 3), through tasks/faults.py (T2VZ_FAULTS) in the shared corpus run.

Rules, each aimed at a job of its own (tests/reliability_support.CORPUS_FAULTS), retries = 2:
- decode@f_eio_decode:eio:2   -> two I/O errors, then success: 3 attempts, row ok
- generate@f_oom:oom:1        -> one out-of-memory, then success with a halved chunk size
- generate@f_fatal:fatal:1    -> a permanent error fires once; had it been retried the second
                                 attempt would pass, so a failed row proves it ran exactly once
- encode@f_eio_forever:eio    -> transient forever: 3 attempts (bounded), then the row fails
Attempt counts come from the task runs on the Prefect server (run_count).
"""

from __future__ import annotations

import pytest
from reliability_support import corpus_run, sidecar, task_runs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(500)]  # the corpus run: ~45 s


@pytest.fixture(scope="module")
def corpus(tiny_models):
    run = corpus_run(tiny_models)
    assert run["report"] is not None, run["proc"].stderr[-3000:]
    return run


@pytest.fixture(scope="module")
def runs(corpus):
    return task_runs(corpus["api"], corpus["report"]["flow_run_id"])


def _status(corpus, job_id: str) -> dict:
    return next(line for line in corpus["report"]["rows"] if line["job_id"] == job_id)


def test_transient_io_errors_are_retried_until_they_pass(corpus, runs):
    assert _status(corpus, "f_eio_decode")["status"] == "ok"
    assert runs["decode-f_eio_decode"]["run_count"] == 3
    assert runs["decode-f_eio_decode"]["state"]["type"] == "COMPLETED"
    assert (corpus["out"] / "f_eio_decode.mp4").is_file()


def test_out_of_memory_is_retried_and_succeeds(corpus, runs):
    line = _status(corpus, "f_oom")
    assert line["status"] == "ok", line["error"]
    assert runs["generate-f_oom"]["run_count"] == 2
    assert (corpus["out"] / "f_oom.mp4").is_file()


def test_out_of_memory_retry_halves_the_chunk_size(corpus):
    resolved = sidecar(corpus["out"], "f_oom")["resolved"]
    assert resolved["request"]["chunk_size"] == 2 and resolved["effective_chunk_size"] == 2, (
        "after an out-of-memory error generation must retry with chunk_size 4 // 2 = 2, "
        f"it ran with {resolved['effective_chunk_size']}"
    )


def test_a_permanent_error_fails_only_its_row_once_with_its_message(corpus, runs):
    line = _status(corpus, "f_fatal")
    assert line["status"] == "failed"
    assert line["error"] == "generate: RuntimeError: injected permanent failure in generate for f_fatal"
    assert runs["generate-f_fatal"]["run_count"] == 1
    data = sidecar(corpus["out"], "f_fatal")
    assert data["failed_step"] == "generate"
    assert data["steps"]["encode"]["status"] == "not run" and data["steps"]["publish"]["status"] == "not run"
    assert not (corpus["out"] / "f_fatal.mp4").exists()
    # bad input is never retried either: one decode attempt for a file that is not a video
    assert runs["decode-text_mp4"]["run_count"] == 1


def test_retries_are_bounded_and_the_last_error_is_reported(corpus, runs):
    line = _status(corpus, "f_eio_forever")
    assert line["status"] == "failed"
    assert "encode: OSError: [Errno 5] injected I/O error in encode for f_eio_forever" == line["error"]
    assert runs["encode-f_eio_forever"]["run_count"] == 3  # 1 + T2VZ_RETRIES (2)
    assert line["generate"] == "computed"


def test_faults_stay_in_their_rows(corpus):
    for job_id in ("good_canny", "good_p2p", "good_t2v", "link_inside"):
        assert _status(corpus, job_id)["status"] == "ok"
