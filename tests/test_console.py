"""A quiet console: `t2vz run` prints progress, per-row results and its summary, nothing else.

The demo manifest runs as `make demo` runs it (a subprocess, a temporary Prefect server of
its own, tiny models): its console must hold no traceback and no warning line. The parts
that make it quiet are checked on their own: native stderr routed into logging, library
warnings demoted to DEBUG, the temporary server's output sent to a file.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from flows import console
from t2vz_core.native_stderr import native_stderr_to_log

REPO = Path(__file__).resolve().parents[1]
T2VZ = Path(sys.executable).parent / "t2vz"

# What a library's warning or a crash looks like on a console.
NOISE = re.compile(
    r"Traceback|Warning\b|WARNING|^W\d{4} |^I\d{4} |^INFO: |CancelledError|"
    r"deprecated|absl::",
    re.MULTILINE,
)


@pytest.mark.slow
def test_demo_run_prints_only_progress_results_and_summary(tmp_path, tiny_models):
    """`make demo` on a fresh clone: rows ok, and not one warning or traceback line."""
    (tmp_path / "manifests").mkdir()
    shutil.copy(REPO / "manifests" / "demo.csv", tmp_path / "manifests" / "demo.csv")
    shutil.copytree(REPO / "manifests" / "media", tmp_path / "manifests" / "media")  # a symlink is refused
    (tmp_path / ".t2vz").mkdir()
    (tmp_path / ".t2vz" / "models").symlink_to(tiny_models)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # its own server
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    # a fresh database migrates first: allow for a loaded test machine (default 20 s)
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"
    command = [str(T2VZ)] if T2VZ.exists() else [sys.executable, "-m", "flows.cli"]
    result = subprocess.run(
        [*command, "run", "manifests/demo.csv", "--output-dir", "out"],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        cwd=tmp_path,
    )
    printed = result.stdout + result.stderr
    assert result.returncode == 0, printed
    assert "5 ok, 0 failed, 0 invalid" in result.stdout
    noise = [line for line in printed.splitlines() if NOISE.search(line)]
    assert not noise, "\n".join(noise)


def test_native_stderr_is_logged_not_printed(capfd, caplog):
    """What C code writes to fd 2 (as TFLite and absl do) becomes DEBUG records."""
    log = logging.getLogger("t2vz_core.test_native")
    with caplog.at_level(logging.DEBUG, logger=log.name), native_stderr_to_log(log):
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n\n")
        subprocess.run([sys.executable, "-c", "import os; os.write(2, b'W0000 from a child\\n')"], check=True)
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.DEBUG, "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."),
        (logging.DEBUG, "W0000 from a child"),
    ]


def test_library_warnings_become_debug_records(caplog, monkeypatch):
    """At the default level a library's FutureWarning is a DEBUG record (kept, not shown);
    t2vz's own warnings keep their level."""
    warnings_log = logging.getLogger("py.warnings")
    filters = list(warnings_log.filters)
    try:
        console.configure_run_console(verbose=False)
        with caplog.at_level(logging.DEBUG), warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("`torch_dtype` is deprecated", FutureWarning, stacklevel=1)
            logging.getLogger("t2vz_core.media.decode").warning("decord failed; using PyAV")
        levels = [(r.name, r.levelname) for r in caplog.records]
        assert levels == [("py.warnings", "DEBUG"), ("t2vz_core.media.decode", "WARNING")]
    finally:
        logging.captureWarnings(False)
        warnings_log.filters[:] = filters
