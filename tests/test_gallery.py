"""report.html's markup (t2vz_core.gallery) and the previews it shows (t2vz_core.previews), without a
browser; tests/test_gallery_browser.py opens the page in Chromium."""

from __future__ import annotations

import base64
import hashlib
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from review_fixtures import EXPECTED_STATUS, XSS_ERROR, XSS_PROMPT, make_review_folder, panned_astronaut

from t2vz_core import gallery, previews, report


@pytest.fixture(scope="module")
def review(tmp_path_factory):
    out, rows = make_review_folder(tmp_path_factory.mktemp("review"))
    return out, rows, gallery.write_gallery(out, rows, {"manifest": "/data/nightly.csv"}).read_text()


def test_one_card_per_row_with_its_status(review):
    _, rows, page = review
    cards = re.findall(
        r'<article class="card[^"]*" id="card-(\d+)"[^>]*data-status="([^"]*)"[^>]*'
        r'data-job="([^"]*)"',
        page,
    )
    assert [int(i) for i, _, _ in cards] == list(range(len(rows)))
    assert {job: status for _, status, job in cards} == EXPECTED_STATUS
    assert "<title>t2vz: nightly.csv</title>" in page


def test_user_text_is_escaped_and_only_the_page_script_may_run(review):
    _, _, page = review
    assert page.count("<script") == 1  # the page's own, nothing from a prompt or an error
    assert XSS_PROMPT not in page and XSS_ERROR not in page
    assert "&lt;script&gt;window.__xss = &quot;prompt&quot;&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=&quot;window.__xss = &#x27;error&#x27;&quot;&gt;" in page
    # the Content-Security-Policy allows exactly the inline script and style of the page, by hash
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page).group(1)
    for tag, directive in (("script", "script-src"), ("style", "style-src")):
        body = re.search(rf"<{tag}>(.*?)</{tag}>", page, re.S).group(1)
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        assert f"{directive} 'sha256-{digest}';" in csp
    assert "default-src 'none'" in csp and "unsafe-inline" not in csp


def test_self_contained_no_network(review):
    _, _, page = review
    assert not re.search(r"(src|href)=\"(https?:)?//", page)
    assert "@import" not in page


def test_qc_scores_and_failed_row_error_are_shown(review):
    _, _, page = review
    flagged = page[page.index('data-job="canny-flagged"') : page.index('data-job="pose-failed"')]
    assert 'data-ratio="4.000000"' in flagged and '<td class="warp_error_ratio">4.00</td>' in flagged
    assert "warp error ratio ≤ 3.0" in flagged
    t2v = page[page.index('data-job="t2v"') : page.index('data-job="bad-seed"')]
    assert 'data-ratio=""' in t2v and '<td class="source_warp_error">-</td>' in t2v
    assert "no source (text2video)" in t2v
    assert "seed: &#x27;abc&#x27; is not a whole number" in page
    failed = page[page.index('data-job="pose-failed"') : page.index('data-job="t2v"')]
    assert "<img" not in failed  # its previews on disk are an older run's: not shown
    assert "generate 0.20 (failed)" in failed


def test_status_precedence():
    assert gallery.display_status({"status": "flagged", "up_to_date": True}) == "flagged"
    assert gallery.display_status({"status": "ok", "up_to_date": True}) == "up to date"
    assert gallery.display_status({"status": "ok"}) == "ok"
    assert gallery.display_status({"status": "invalid"}) == "invalid"


def test_links_are_relative_inside_the_output_folder_and_file_urls_outside(tmp_path):
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    inside, outside = out / "sub" / "a #1 & b.mp4", tmp_path / "elsewhere.mp4"
    inside.write_bytes(b"x")
    outside.write_bytes(b"x")
    line = report.missing_row(2, "j", "canny") | {"status": "ok", "outputs": [str(inside), str(outside)], "error": ""}
    page = gallery.render_gallery(out, [line])
    assert 'href="sub/a%20%231%20%26%20b.mp4"' in page
    assert f'href="{outside.resolve().as_uri()}"' in page


def test_the_gallery_imports_nothing_heavy():
    """report.html is rewritten on the all-up-to-date fast path: stdlib only."""
    code = (
        "import sys, t2vz_core.gallery; "
        "print(sorted(m for m in ('numpy', 'cv2', 'PIL', 'pandas', 'torch') if m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


def test_previews_are_small_looping_webp_of_the_whole_clip(tmp_path):
    base = panned_astronaut(frames=1, size=96)[0]
    frames = np.stack([np.roll(base, i, axis=1) for i in range(200)])  # 200 distinct frames
    wide = np.concatenate([frames, frames], axis=2)  # 192 x 96: keeps its aspect
    path = previews.write_preview(iter(np.array_split(wide, 13)), 25, tmp_path / "p.webp", total=len(wide))
    with Image.open(path) as image:
        assert image.format == "WEBP" and image.is_animated and image.info["loop"] == 0
        assert image.size == (160, 80)
        assert image.n_frames == 40  # every 5th of 200 frames (<= PREVIEW_FRAMES)
        image.seek(1)
        image.load()
        assert image.info["duration"] == 200  # 5 frames at 25 fps: the clip keeps its 8 s
    with pytest.raises(ValueError, match="no frames"):
        previews.write_preview(iter([]), 8, tmp_path / "empty.webp")
    assert not (tmp_path / "empty.webp").exists()


def test_preview_paths_are_per_job_and_kind(tmp_path):
    assert previews.preview_path(tmp_path, "job-1", "control") == tmp_path / "previews" / "job-1.control.webp"
    with pytest.raises(ValueError, match="preview kind"):
        previews.preview_path(tmp_path, "job-1", "mask")
