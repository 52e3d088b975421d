"""Security (issue 6, item 5): outputs stay in the output folder, sources stay in the allowed
roots, weights load from safetensors only, no remote code, no manifest string reaches a shell.

Behavioural checks use the shared corpus run (tests/reliability_support.corpus_run: a real
`t2vz run` subprocess) plus an in-process load and two `t2vz validate` subprocesses; the opt-in to
pickle weights (`t2vz run --allow-pickle`, a real subprocess) is tests/test_cli_pickle.py's run.
The static checks parse every module of t2vz_core, tasks and flows.
Budget: ~3 s beyond the shared corpus run.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from reliability_support import (
    PWNED,
    REPO,
    SHELL_PROMPT,
    cli_command,
    corpus_run,
    explain,
    sidecar,
    write_manifest,
)

pytestmark = pytest.mark.timeout(500)

PACKAGES = ("t2vz_core", "tasks", "flows")


@pytest.fixture(scope="module")
def corpus(tiny_models):
    run = corpus_run(tiny_models)
    assert run["report"] is not None, explain(run["proc"])
    return run


def _inside(path: Path, root: Path) -> bool:
    return os.path.realpath(path).startswith(os.path.realpath(root) + os.sep)


# ---------------------------------------------------------------- outputs stay in the output folder


def test_every_output_lies_inside_the_output_folder(corpus):
    out = corpus["out"]
    for line in corpus["report"]["rows"]:
        for output in line["outputs"]:
            assert _inside(Path(output), out), output
            assert not Path(output).is_symlink(), output
    # nothing was written next to the sources or anywhere else in the test's tree
    written = [
        p
        for p in corpus["root"].rglob("*")
        if p.stat(follow_symlinks=False).st_mtime >= corpus["started_at"]
        and p.is_file()
        and not _inside(p, out)
        and not _inside(p, corpus["root"] / "prefect-home")
        and not _inside(p, corpus["root"] / "prefect-results")
    ]
    assert written == [], written


def test_a_symlink_planted_at_an_output_path_is_never_written_through(corpus):
    outside = corpus["outside"]
    assert (outside / "victim.mp4").read_bytes() == b"do not overwrite"
    assert json.loads((outside / "victim.json").read_text()) == {"do": "not overwrite"}
    line = next(r for r in corpus["report"]["rows"] if r["job_id"] == "sym_video")
    assert line["status"] == "failed" and "refusing to write through a symlink" in line["error"]
    # the sidecar of sym_sidecar replaced the planted link by a regular file in OUTPUT_DIR
    planted = corpus["out"] / "sym_sidecar.json"
    assert not planted.is_symlink() and sidecar(corpus["out"], "sym_sidecar")["status"] == "ok"


# ---------------------------------------------------------------- sources confined to allowed roots


def test_sources_outside_the_allowed_roots_never_run(corpus):
    by_id = {r["job_id"]: r for r in corpus["report"]["rows"]}
    for job_id, why in (
        ("dotdot", "'..' leads to"),
        ("abs_outside", "outside the allowed roots"),
        ("link_out", "symlink to"),
    ):
        assert by_id[job_id]["status"] == "invalid" and why in by_id[job_id]["error"], by_id[job_id]
        assert not (corpus["out"] / f"{job_id}.json").exists()
    # a second root given with --allowed-root is honoured
    assert by_id["odd_size"]["status"] == "ok"
    source = sidecar(corpus["out"], "odd_size")["resolved"]["source"]["path"]
    assert source == os.path.realpath(corpus["extra"] / "odd.mp4")


def test_allowed_roots_are_configurable_by_environment(tmp_path):
    """`t2vz validate` (a real subprocess): a source in another folder is refused by default and
    accepted when T2VZ_ALLOWED_ROOTS lists that folder."""
    (tmp_path / "lib").mkdir()
    (tmp_path / "media").mkdir()
    (tmp_path / "media" / "a.mp4").write_bytes(b"validated, not decoded")
    manifest = write_manifest(
        tmp_path / "lib" / "m.csv",
        [{"job_id": "a", "mode": "canny", "source": str(tmp_path / "media" / "a.mp4"), "prompt": "x"}],
    )
    env = {k: v for k, v in os.environ.items() if k != "T2VZ_ALLOWED_ROOTS"}
    refused = subprocess.run(
        cli_command(["validate", str(manifest)]), env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert refused.returncode == 1 and "outside the allowed roots" in refused.stderr, explain(refused)
    env["T2VZ_ALLOWED_ROOTS"] = f"{tmp_path / 'lib'}{os.pathsep}{tmp_path / 'media'}"
    allowed = subprocess.run(
        cli_command(["validate", str(manifest)]), env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert allowed.returncode == 0 and "1 valid row(s), 0 invalid" in allowed.stdout, explain(allowed)


# ---------------------------------------------------------------- weights: safetensors, no remote code


def test_pickle_only_weights_fail_their_row_with_a_clear_error(corpus):
    line = next(r for r in corpus["report"]["rows"] if r["job_id"] == "bin_weights")
    assert line["status"] == "failed"
    assert "no safetensors weights" in line["error"] and "allow_pickle" in line["error"], line["error"]
    assert str(corpus["root"] / "bin-model") in line["error"]


def test_custom_code_in_a_model_folder_is_never_executed(tiny_models, tmp_path):
    from t2vz_core import models
    from t2vz_core.errors import InputError

    folder = tmp_path / "remote-code"
    shutil.copytree(tiny_models / "sd", folder)
    marker = tmp_path / "REMOTE_CODE_RAN"
    (folder / "unet" / "evil_unet.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from diffusers import UNet2DConditionModel\nclass EvilUNet(UNet2DConditionModel):\n    pass\n"
    )
    index = json.loads((folder / "model_index.json").read_text())
    index["unet"] = ["evil_unet", "EvilUNet"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(InputError, match="custom code"):
        models.load_pipeline("sd", folder, runtime=models.Runtime("cpu"))
    assert not marker.exists()


def _modules() -> list[Path]:
    files = [p for package in PACKAGES for p in sorted((REPO / package).rglob("*.py"))]
    assert len(files) > 30
    return files


def _keyword_true(call: ast.Call, name: str) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is True for k in call.keywords)


def test_no_remote_code_or_custom_pipelines_anywhere():
    for path in _modules():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                assert not _keyword_true(node, "trust_remote_code"), f"{path}:{node.lineno}"
                assert not any(k.arg == "custom_pipeline" for k in node.keywords), f"{path}:{node.lineno}"
                # `**kwargs` could smuggle trust_remote_code=True in: none are built from a manifest
        assert "trust_remote_code=True" not in path.read_text(), path


# ---------------------------------------------------------------- no manifest string reaches a shell

_SHELL_CALLS = {
    ("os", "system"),
    ("os", "popen"),
    ("os", "execl"),
    ("os", "execlp"),
    ("os", "execle"),
    ("os", "execv"),
    ("os", "execvp"),
    ("os", "execvpe"),
    ("os", "spawnl"),
    ("os", "spawnlp"),
    ("os", "spawnv"),
    ("os", "spawnvp"),
    ("os", "posix_spawn"),
    ("os", "posix_spawnp"),
    ("pty", "spawn"),
    ("subprocess", "getoutput"),
    ("subprocess", "getstatusoutput"),
}
_SUBPROCESS = {"run", "call", "check_call", "check_output", "Popen"}


def test_no_shell_anywhere_in_the_code():
    """No os.system/popen/exec*/spawn*, no shell=True, eval or exec; subprocesses only get argument
    lists (the decord worker, workers started by flows.deploy)."""
    for path in _modules():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                where = f"{path.relative_to(REPO)}:{node.lineno}"
                func = node.func
                if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                    assert (func.value.id, func.attr) not in _SHELL_CALLS, where
                    if func.value.id == "subprocess" and func.attr in _SUBPROCESS:
                        assert node.args and not isinstance(node.args[0], (ast.Constant, ast.JoinedStr, ast.BinOp)), (
                            f"{where}: pass an argument list, not a command string"
                        )
                assert not _keyword_true(node, "shell"), where
                if isinstance(func, ast.Name):
                    assert func.id not in ("eval", "exec", "system", "popen"), where
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                assert not {"commands", "pty"} & set(filter(None, names)), f"{path}:{node.lineno}"
                if isinstance(node, ast.ImportFrom) and node.module in ("os", "subprocess"):
                    imported = {a.name for a in node.names}
                    assert not imported & {name for mod, name in _SHELL_CALLS}, f"{path}:{node.lineno}"


def test_shell_metacharacters_in_prompts_and_file_names_run_harmlessly(corpus):
    data = sidecar(corpus["out"], "good_t2v")
    assert data["status"] == "ok" and data["job"]["prompt"] == SHELL_PROMPT
    assert sidecar(corpus["out"], "good_canny")["job"]["prompt"] == SHELL_PROMPT
    for folder in (corpus["cwd"], corpus["root"], corpus["lib"], corpus["out"], Path.home(), REPO):
        for name in PWNED + ("PWNED_8", "PWNED_9"):
            assert not (folder / name).exists(), folder / name
    assert not list(corpus["root"].rglob("PWNED_*"))
