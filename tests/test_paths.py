"""Path confinement: sources stay in the allowed roots, outputs in the output folder, models are ids or folders.

Budget: < 1 s (tmp files only).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from t2vz_core.errors import InputError
from t2vz_core.paths import (
    check_job_id,
    check_model_ref,
    check_revision,
    is_hub_id,
    output_path,
    resolve_allowed_roots,
    resolve_source,
)


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    """manifests/ (the manifest folder) with a clip, and a sibling secret/ outside it."""
    base = tmp_path / "manifests"
    (base / "clips").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    clip = base / "clips" / "a.mp4"
    clip.write_bytes(b"video")
    secret = tmp_path / "secret" / "b.mp4"
    secret.write_bytes(b"private")
    return {"base": base, "clip": clip, "secret": secret, "tmp": tmp_path}


def test_relative_source_resolves_against_the_manifest_folder(tree, monkeypatch):
    monkeypatch.delenv("T2VZ_ALLOWED_ROOTS", raising=False)
    monkeypatch.chdir(tree["tmp"])  # the current folder must not matter
    assert resolve_source("clips/a.mp4", tree["base"]) == tree["clip"].resolve()
    assert resolve_source("  ./clips/../clips/a.mp4 ", tree["base"]) == tree["clip"].resolve()


@pytest.mark.parametrize(
    "value, expected",
    [
        ("../secret/b.mp4", "'..' leads to"),
        ("clips/../../secret/b.mp4", "'..' leads to"),
        ("ABS_SECRET", "outside the allowed roots"),
        ("clips/missing.mp4", "not found"),
        ("clips", "is a folder"),
        ("https://example.com/a.mp4", "is a URL"),
        ("", "source is empty"),
        ("clips/a.mp4\x00.txt", "NUL"),
    ],
)
def test_bad_sources_are_refused_with_a_clear_message(tree, monkeypatch, value, expected):
    monkeypatch.delenv("T2VZ_ALLOWED_ROOTS", raising=False)
    value = value.replace("ABS_SECRET", str(tree["secret"]))
    with pytest.raises(InputError, match=expected) as info:
        resolve_source(value, tree["base"])
    if value:
        assert repr(value.strip()) in str(info.value)  # the message names the offending value


def test_symlink_pointing_out_is_refused_and_one_pointing_in_is_followed(tree, monkeypatch):
    monkeypatch.delenv("T2VZ_ALLOWED_ROOTS", raising=False)
    (tree["base"] / "out.mp4").symlink_to(tree["secret"])
    (tree["base"] / "in.mp4").symlink_to(tree["clip"])
    (tree["base"] / "outdir").symlink_to(tree["secret"].parent, target_is_directory=True)
    with pytest.raises(InputError, match=r"symlink to .*secret/b\.mp4, outside the allowed roots"):
        resolve_source("out.mp4", tree["base"])
    with pytest.raises(InputError, match="symlink"):
        resolve_source("outdir/b.mp4", tree["base"])
    assert resolve_source("in.mp4", tree["base"]) == tree["clip"].resolve()  # the real file, not the link


def test_allowed_roots_explicit_then_env_then_manifest_folder(tree, monkeypatch):
    monkeypatch.delenv("T2VZ_ALLOWED_ROOTS", raising=False)
    assert list(resolve_allowed_roots(tree["base"])) == [tree["base"].resolve()]
    monkeypatch.setenv("T2VZ_ALLOWED_ROOTS", f"{tree['secret'].parent}:{tree['base']}")
    assert resolve_source(str(tree["secret"]), tree["base"]) == tree["secret"].resolve()
    monkeypatch.setenv("T2VZ_ALLOWED_ROOTS", str(tree["secret"].parent))  # replaces the default
    with pytest.raises(InputError, match="outside the allowed roots"):
        resolve_source("clips/a.mp4", tree["base"])
    # an explicit list wins over the environment
    assert resolve_source("clips/a.mp4", tree["base"], [tree["base"]]) == tree["clip"].resolve()
    with pytest.raises(InputError, match="empty"):
        resolve_allowed_roots(tree["base"], [])


def test_output_path_stays_inside_the_output_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    assert output_path(out, "clip-1", ".mp4") == out.resolve() / "clip-1.mp4"
    assert output_path(out, "clip-1") == out.resolve() / "clip-1"
    for job_id in ("../evil", "a/b", "..", ".", "", "x;rm -rf ~", "a" * 129, "report"):
        with pytest.raises(InputError, match="job_id"):
            output_path(out, job_id, ".mp4")
    for suffix in ("/../../x", ".mp4/..", "mp4"):
        with pytest.raises(InputError, match="suffix"):
            output_path(out, "ok", suffix)
    (out / "linked.mp4").symlink_to(tmp_path / "elsewhere.mp4")
    with pytest.raises(InputError, match="symlink"):
        output_path(out, "linked", ".mp4")


def test_job_id_rule():
    assert check_job_id("Clip_01.v2-final") == "Clip_01.v2-final"
    assert check_job_id("a" * 128)
    for bad in ("a b", "é", "a\nb", ".hidden", "$(id)", "`id`", "a|b", "REPORT", "report.csv", "Report.JSON"):
        with pytest.raises(InputError):
            check_job_id(bad)


@pytest.mark.parametrize(
    "value, ok",
    [
        ("stable-diffusion-v1-5/stable-diffusion-v1-5", True),
        ("timbrooks/instruct-pix2pix", True),
        ("org/name.v1_x", True),
        ("; rm -rf /", False),
        ("https://huggingface.co/org/name", False),
        ("../secrets", False),
        ("org/..", False),
        ("org/name/extra", False),
        ("justaname", False),
        ("org/na me", False),
        ("$(touch x)/y", False),
        ("org/na\nme", False),
    ],
)
def test_hub_ids(value, ok):
    assert is_hub_id(value) is ok


def test_model_refs_local_folders_and_errors(tmp_path):
    (tmp_path / "models" / "sd").mkdir(parents=True)
    (tmp_path / "weights.safetensors").write_bytes(b"")
    local = check_model_ref("models/sd", tmp_path)
    assert local == str((tmp_path / "models" / "sd").resolve())
    assert check_model_ref(str(tmp_path / "models" / "sd")) == local
    assert check_model_ref("org/name", tmp_path) == "org/name"  # not a folder here: a hub id
    with pytest.raises(InputError, match="not found"):
        check_model_ref("./models/missing", tmp_path)
    with pytest.raises(InputError, match="is a file"):
        check_model_ref("weights.safetensors", tmp_path)
    with pytest.raises(InputError, match="neither an existing local folder nor a hub id"):
        check_model_ref("; rm -rf /", tmp_path)
    with pytest.raises(InputError, match="URL"):
        check_model_ref("s3://bucket/model", tmp_path)
    # model folders are not confined to the allowed roots (they are not sources)
    assert check_model_ref(str(tmp_path / "models"), tmp_path / "models" / "sd") == str((tmp_path / "models").resolve())


def test_revisions():
    assert check_revision("main") == "main"
    assert check_revision("a" * 40) == "a" * 40
    assert check_revision("refs/pr/1") == "refs/pr/1"
    for bad in ("; rm", "../x", "a b", "", "-x", "main.lock"):
        with pytest.raises(InputError, match="revision"):
            check_revision(bad)


def test_no_manifest_string_reaches_a_shell():
    """The path/manifest modules must not import anything that runs commands."""
    import t2vz_core.manifest
    import t2vz_core.paths
    import t2vz_core.scan

    files = [Path(t2vz_core.paths.__file__), Path(t2vz_core.scan.__file__)]
    files += sorted(Path(t2vz_core.manifest.__file__).parent.glob("*.py"))
    assert len(files) > 3
    for file in files:
        source = file.read_text()
        for forbidden in ("subprocess", "os.system", "os.popen", "shell=True", "eval(", "exec("):
            assert forbidden not in source, (file.name, forbidden)
    assert os.sep == "/"  # the confinement rules above are written for POSIX paths
