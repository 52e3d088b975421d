"""Bad-input corpus for manifests and paths: every case names its row/column/file, other rows survive.

Budget: ~1 s for ~60 cases (small CSVs in tmp folders, no media decoding, no models).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from t2vz_core.manifest import ManifestFileError, format_errors, read_manifest

OK1 = {"job_id": "ok1", "mode": "canny", "source": "clips/a.mp4", "prompt": "a cat"}
OK2 = {"job_id": "ok2", "mode": "text2video", "prompt": "a dog running"}


pytestmark = pytest.mark.usefixtures("no_env_allowed_roots")


@pytest.fixture
def library(tmp_path: Path) -> Path:
    """The manifest folder: clips/a.mp4 inside; secret/b.mp4 outside; link.mp4 -> the secret."""
    folder = tmp_path / "project"
    (folder / "clips").mkdir(parents=True)
    (folder / "clips" / "a.mp4").write_bytes(b"not decoded here")
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "b.mp4").write_bytes(b"private")
    (folder / "link.mp4").symlink_to(tmp_path / "secret" / "b.mp4")
    return folder


def csv_text(rows: list[dict[str, str]]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [name for name in row if name not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def bad(**cells: str) -> dict[str, str]:
    row = {"job_id": "bad", "mode": "text2video", "prompt": "p"}
    row.update(cells)
    return row


# (case id, the bad row placed at spreadsheet row 3, [(column, words the message must contain)])
ROW_CASES = [
    ("unknown-mode", bad(mode="cartoon"), [("mode", "unknown mode 'cartoon'")]),
    ("empty-mode", bad(mode=" "), [("mode", "mode is required")]),
    ("duplicate-job-id", bad(job_id="ok1"), [("job_id", "duplicate job_id 'ok1': already used in row 2")]),
    ("duplicate-job-id-case", bad(job_id="OK1"), [("job_id", "ignoring case")]),
    ("non-numeric-seed", bad(seed="abc"), [("seed", "whole number, got 'abc'")]),
    ("nan-text", bad(guidance_scale="NaN"), [("guidance_scale", "must be a number, got 'NaN'")]),
    ("infinite", bad(num_inference_steps="inf"), [("num_inference_steps", "whole number")]),
    ("float-for-int", bad(num_inference_steps="1.5"), [("num_inference_steps", "whole number, got '1.5'")]),
    ("decimal-comma", bad(guidance_scale="7,5"), [("guidance_scale", "'.' as the decimal separator")]),
    ("negative-seed", bad(seed="-1"), [("seed", "out of range")]),
    ("empty-prompt", bad(prompt="   "), [("prompt", "prompt is required")]),
    ("missing-source", bad(mode="canny"), [("source", "source is required for mode canny")]),
    (
        "t1-beyond-steps",
        bad(num_inference_steps="20", t0="10", t1="30"),
        [("t1", "0 <= t0 < t1 <= num_inference_steps-1 (= 19)")],
    ),
    ("t0-not-below-t1", bad(t0="47", t1="47"), [("t0", "t0=47 must be smaller than t1=47")]),
    ("default-t0-t1-fewer-steps", bad(num_inference_steps="30", t1="29", t0="40"), [("t0", "smaller than t1")]),
    ("absurd-resolution", bad(resolution="100000"), [("resolution", "out of range: expected 64 to 2048")]),
    ("resolution-not-multiple-of-8", bad(resolution="500"), [("resolution", "multiple of 8")]),
    ("absurd-video-length", bad(video_length="1000000"), [("video_length", "out of range")]),
    ("zero-max-frames", bad(mode="canny", source="clips/a.mp4", max_frames="0"), [("max_frames", "out of range")]),
    ("chunk-size-one", bad(chunk_size="1"), [("chunk_size", "expected 2 to")]),
    (
        "start-after-end",
        bad(mode="canny", source="clips/a.mp4", start="5", end="3"),
        [("end", "end (3 s) must be after start (5 s)")],
    ),
    (
        "clock-start-after-end",
        bad(mode="pose", source="clips/a.mp4", start="1:00", end="0:30"),
        [("end", "must be after start (60 s)")],
    ),
    ("bad-clock", bad(mode="pose", source="clips/a.mp4", start="1:75"), [("start", "not a valid time")]),
    ("bad-output-format", bad(output="mp4;avi"), [("output", "unknown output format 'avi'")]),
    ("job-id-slash", bad(job_id="a/b"), [("job_id", "job_id 'a/b' is not allowed")]),
    ("job-id-shell", bad(job_id="x;rm -rf ~"), [("job_id", "is not allowed")]),
    ("job-id-dotdot", bad(job_id=".."), [("job_id", "must not start with '.'")]),
    ("job-id-reserved", bad(job_id="report"), [("job_id", "reserved")]),
    ("job-id-too-long", bad(job_id="a" * 129), [("job_id", "1-128")]),
    ("source-dotdot", bad(mode="canny", source="../secret/b.mp4"), [("source", "'..' leads to")]),
    ("source-absolute-outside", bad(mode="canny", source="ABS_SECRET"), [("source", "outside the allowed roots")]),
    ("source-symlink-out", bad(mode="depth", source="link.mp4"), [("source", "symlink to")]),
    ("source-missing", bad(mode="pix2pix", source="clips/nope.mp4"), [("source", "not found")]),
    ("source-url", bad(mode="canny", source="http://example.com/a.mp4"), [("source", "is a URL")]),
    ("model-shell", bad(model="; rm -rf /"), [("model", "neither an existing local folder nor a hub id")]),
    ("model-url", bad(model="https://evil.example/model"), [("model", "URL")]),
    ("revision-shell", bad(revision="main; curl x"), [("revision", "not a valid branch")]),
    (
        "revision-on-local-folder",
        bad(model="clips", revision="main"),
        [("revision", "revision applies to hub models; the model is a local folder")],
    ),
    ("controlnet-on-text2video", bad(controlnet="org/cn"), [("controlnet", "not used by mode text2video")]),
    ("source-on-text2video", bad(source="clips/a.mp4"), [("source", "text2video generates from the prompt")]),
    (
        "video-length-on-canny",
        bad(mode="canny", source="clips/a.mp4", video_length="16"),
        [("video_length", "use max_frames")],
    ),
    ("width-without-height", bad(width="512"), [("height", "text2video needs both width and height")]),
    (
        "crop-without-height",
        bad(mode="canny", source="clips/a.mp4", width="512", fit="crop"),
        [("height", "fit=crop needs both width and height")],
    ),
    ("resolution-and-size", bad(width="512", height="256", resolution="512"), [("resolution", "not both")]),
    ("bad-control", bad(mode="canny", source="clips/a.mp4", control="maybe"), [("control", "unknown control")]),
    (
        "unknown-control-backend",
        bad(mode="pose", source="clips/a.mp4", control_backend="posenet"),
        [("control_backend", "unknown control_backend 'posenet'")],
    ),
    (
        "backend-of-another-mode",
        bad(mode="depth", source="clips/a.mp4", control_backend="dwpose"),
        [("control_backend", "does not make depth maps: use one of midas, zoe")],
    ),
    (
        "annotator-without-weights-backend",
        bad(mode="pose", source="clips/a.mp4", annotator="org/annotators"),
        [("annotator", "not used by the mediapipe backend")],
    ),
    (
        "annotator-missing-folder",
        bad(mode="depth", source="clips/a.mp4", annotator="./no-such-weights"),
        [("annotator", "not found")],
    ),
    ("annotator-url", bad(mode="depth", source="clips/a.mp4", annotator="https://x.org/w"), [("annotator", "URL")]),
    (
        "threshold-not-int",
        bad(mode="canny", source="clips/a.mp4", low_threshold="1.5"),
        [("low_threshold", "whole number")],
    ),
    (
        "threshold-out-of-range",
        bad(mode="canny", source="clips/a.mp4", high_threshold="256"),
        [("high_threshold", "out of range: expected 1 to 255")],
    ),
    (
        "thresholds-crossed",
        bad(mode="canny", source="clips/a.mp4", low_threshold="150", high_threshold="150"),
        [("low_threshold", "must be smaller than high_threshold (150)")],
    ),
    (
        "low-above-default-high",
        bad(mode="canny", source="clips/a.mp4", low_threshold="220"),
        [("low_threshold", "(220) must be smaller than high_threshold (200)")],
    ),
    ("bad-refresh", bad(refresh="maybe"), [("refresh", "true or false")]),
    ("output-collision", bad(job_id="ok1.json"), [("job_id", "collides with the .json output of job 'ok1'")]),
    (
        "every-bad-cell-at-once",
        bad(mode="canny", source="clips/a.mp4", seed="x", start="5", end="3", output="avi", num_inference_steps="0"),
        [("seed", "whole number"), ("num_inference_steps", "out of range"), ("end", "after start"), ("output", "avi")],
    ),
]


@pytest.mark.parametrize("row_cells, expected", [c[1:] for c in ROW_CASES], ids=[c[0] for c in ROW_CASES])
def test_bad_row_is_reported_and_the_others_still_run(library, row_cells, expected):
    row_cells = {k: v.replace("ABS_SECRET", str(library.parent / "secret" / "b.mp4")) for k, v in row_cells.items()}
    path = library / "manifest.csv"
    path.write_text(csv_text([OK1, row_cells, OK2]), encoding="utf-8")
    manifest = read_manifest(path)
    assert [job.job_id for job in manifest.jobs] == ["ok1", "ok2"]
    assert [job.row for job in manifest.jobs] == [2, 4]
    assert all(error.row == 3 for error in manifest.errors), manifest.errors
    assert [(e.column) for e in manifest.errors] == [column for column, _ in expected], manifest.errors
    for error, (_column, words) in zip(manifest.errors, expected):
        assert words in error.message, error.message
        assert error.job_id == row_cells["job_id"][:128]
    text = format_errors(manifest.errors, path)
    for column, _ in expected:
        assert f"manifest.csv: row 3, column {column}" in text


# (case id, raw file text, [(row, column, words)], valid job ids)
RAW_CASES = [
    ("bom", "\ufeffjob_id,mode,prompt\nok1,text2video,x\nbad,text2video, \n", [(3, "prompt", "required")], ["ok1"]),
    (
        "quoted-newlines-keep-spreadsheet-rows",
        'job_id,mode,prompt\nok1,text2video,"line one\nline two, with a comma"\nbad,cartoon,x\nok2,text2video,y\n',
        [(3, "mode", "unknown mode")],
        ["ok1", "ok2"],
    ),
    (
        "blank-lines-keep-row-numbers",
        "job_id,mode,prompt\n\nok1,text2video,x\n,,\nbad,cartoon,x\n",
        [(5, "mode", "unknown mode")],
        ["ok1"],
    ),
    (
        "extra-cells",
        "job_id,mode,prompt\nok1,text2video,x\nbad,text2video,a, b\nok2,text2video,y\n",
        [(3, None, "1 more cell(s) than the header")],
        ["ok1", "ok2"],
    ),
    (
        "short-row",
        "job_id,mode,prompt,seed\nok1,text2video,x,1\nbad,text2video\n",
        [(3, "prompt", "required")],
        ["ok1"],
    ),
    (
        "data-under-nameless-column",
        "job_id,mode,prompt,\nok1,text2video,x,\nbad,text2video,x,oops\n",
        [(3, None, "no column name")],
        ["ok1"],
    ),
    ("stray-quote-inside-a-cell", 'job_id,mode,prompt\nok1,text2video,a 5" tall robot\n', [], ["ok1"]),
    (
        "crlf-line-ends",
        'job_id,mode,prompt\r\nok1,text2video,"two\r\nlines"\r\nbad,cartoon,x\r\n',
        [(3, "mode", "unknown mode")],
        ["ok1"],
    ),
    ("header-only", "job_id,mode,prompt\n", [], []),
    ("header-case-spaces-and-notes", " Job_ID , MODE ,Prompt,#notes\nok1,text2video,x,anything\n", [], ["ok1"]),
]


@pytest.mark.parametrize("text, expected, valid", [c[1:] for c in RAW_CASES], ids=[c[0] for c in RAW_CASES])
def test_raw_csv_cases(tmp_path, text, expected, valid):
    path = tmp_path / "raw.csv"
    path.write_bytes(text.encode("utf-8"))
    manifest = read_manifest(path)
    assert [job.job_id for job in manifest.jobs] == valid
    assert [(e.row, e.column) for e in manifest.errors] == [(row, column) for row, column, _ in expected]
    for error, (_, _, words) in zip(manifest.errors, expected):
        assert words in error.message


def test_header_only_manifest_warns(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("job_id,mode,prompt\n\n", encoding="utf-8")
    manifest = read_manifest(path)
    assert (manifest.jobs, manifest.errors, manifest.row_count) == ([], [], 0)
    assert "no job rows" in manifest.warnings[0].message


def test_a_huge_cell_is_a_file_error_not_a_silently_dropped_row(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text(f"job_id,mode,prompt\nok1,text2video,x\nbig,text2video,{'x' * 200_000}\n", encoding="utf-8")
    with pytest.raises(ManifestFileError, match="field larger than field limit") as info:
        read_manifest(path)
    assert info.value.line == 3


def test_quoted_newline_survives_in_the_prompt(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text('job_id,mode,prompt\nok1,text2video,"line one\nline two"\n', encoding="utf-8")
    assert read_manifest(path).jobs[0].prompt == "line one\nline two"


# (case id, file bytes, words the message must contain, line or None)
FILE_CASES = [
    ("empty-file", b"", "the file is empty", None),
    ("whitespace-only", b"\n \n\t\n", "the file is empty", None),
    ("missing-required-columns", b"job_id,source\na,x.mp4\n", "missing required columns mode, prompt", 1),
    (
        "unknown-column",
        b"job_id,mode,prompt,guidence_scale\na,text2video,x,3\n",
        "unknown column 'guidence_scale' (did you mean 'guidance_scale'?)",
        1,
    ),
    ("duplicate-column", b"job_id,mode,prompt,prompt\na,text2video,x,y\n", "'prompt' appears twice", 1),
    (
        "non-utf8-bytes",
        b"job_id,mode,prompt\nok1,text2video,caf\xe9 au lait\n",
        "not valid UTF-8 at byte offset 37 (line 2, character 19",
        2,
    ),
    ("utf16", "job_id,mode,prompt\na,text2video,x\n".encode("utf-16"), "UTF-16", None),
    ("semicolon-separated", b"job_id;mode;prompt\na;text2video;x\n", "separated by ';'", 1),
    (
        "unclosed-quote",
        b'job_id,mode,prompt\nok1,text2video,x\nb,text2video,"never closed\nc,text2video,y\n',
        "a quote that is never closed",
        3,
    ),
    ("nul-bytes", b"job_id,mode,prompt\na,text2video,x\x00y\n", "NUL", 2),
]


@pytest.mark.parametrize("data, words, line", [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES])
def test_unusable_file_raises_naming_the_file(tmp_path, data, words, line):
    path = tmp_path / "broken.csv"
    path.write_bytes(data)
    with pytest.raises(ManifestFileError) as info:
        read_manifest(path)
    assert str(path) in str(info.value)
    assert words in str(info.value)
    assert info.value.line == line


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ManifestFileError, match=r"missing\.csv: cannot read the file"):
        read_manifest(tmp_path / "missing.csv")
    with pytest.raises(ManifestFileError, match="is a folder"):
        read_manifest(tmp_path)
