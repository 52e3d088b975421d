"""report.html in a real browser: headless Chromium (Debian's chromium + chromium-driver, which
`make test` installs when missing) opens the page from disk and is driven by Selenium.

Checked: a card for every row, every preview shown has decoded (naturalWidth > 0), the status
and mode filters hide and show cards, sorting by warp_error_ratio reorders them, markup typed
into a prompt or an error stays text, and the console holds no error (a broken preview, a
script error or a Content-Security-Policy violation would log one). A screenshot is saved in
the test's temporary folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from review_fixtures import EXPECTED_STATUS, XSS_PROMPT, make_review_folder

from t2vz_core.gallery import write_gallery

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or (
    "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None
)

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (make test installs them: "
    "apt-get install -y chromium chromium-driver)",
)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    root = tmp_path_factory.mktemp("gallery")
    out, rows = make_review_folder(root)
    path = write_gallery(out, rows, {"manifest": str(root / "nightly.csv")})
    return path, rows, root


@pytest.fixture(scope="module")
def browser(page):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    _, _, root = page
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        "--window-size=1300,1400",
        f"--user-data-dir={root / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _cards(driver):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, "#cards > .card")


def _visible_jobs(driver) -> list[str]:
    return [card.get_attribute("data-job") for card in _cards(driver) if card.is_displayed()]


def _toggle(driver, name: str, value: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, f'input[name="{name}"][value="{value}"]').click()


def test_the_gallery_in_chromium(page, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.wait import WebDriverWait

    path, rows, root = page
    driver = browser
    driver.get(path.as_uri())

    # a card for every row, each with its status
    cards = _cards(driver)
    assert [c.get_attribute("data-job") for c in cards] == [r["job_id"] for r in rows]
    assert {c.get_attribute("data-job"): c.get_attribute("data-status") for c in cards} == EXPECTED_STATUS
    assert driver.find_element(By.ID, "shown").text == f"{len(rows)} of {len(rows)} rows shown"

    # every preview shown decodes (lazy images load once scrolled into view)
    images = driver.find_elements(By.CSS_SELECTOR, ".previews img")
    assert len(images) == 9  # 3 + 2 + 3 + 1: not the failed row's (an older run's)
    for image in images:
        driver.execute_script("arguments[0].scrollIntoView();", image)
        WebDriverWait(driver, 15).until(lambda d, img=image: d.execute_script("return arguments[0].complete;", img))
        width = driver.execute_script("return arguments[0].naturalWidth;", image)
        assert width == 96, f"{image.get_attribute('src')} did not load (naturalWidth {width})"
    driver.execute_script("window.scrollTo(0, 0);")

    # filters hide and show cards
    _toggle(driver, "status", "ok")
    assert _visible_jobs(driver) == ["pix-current", "canny-flagged", "pose-failed", "bad-seed"]
    _toggle(driver, "mode", "canny")
    assert _visible_jobs(driver) == ["pix-current", "pose-failed", "bad-seed"]
    assert driver.find_element(By.ID, "shown").text == f"3 of {len(rows)} rows shown"
    _toggle(driver, "status", "ok")
    _toggle(driver, "mode", "canny")
    assert _visible_jobs(driver) == [r["job_id"] for r in rows]

    # sorting by warp_error_ratio (rows without one last, in manifest order), and back
    Select(driver.find_element(By.ID, "sort")).select_by_value("ratio-desc")
    assert _visible_jobs(driver) == ["canny-flagged", "pix-current", "canny-ok", "pose-failed", "t2v", "bad-seed"]
    Select(driver.find_element(By.ID, "sort")).select_by_value("ratio-asc")
    assert _visible_jobs(driver)[:3] == ["canny-ok", "pix-current", "canny-flagged"]
    Select(driver.find_element(By.ID, "sort")).select_by_value("row")
    assert _visible_jobs(driver) == [r["job_id"] for r in rows]

    # user text stays text: no injected script ran, the prompt reads as typed
    assert driver.execute_script("return window.__xss === undefined;")
    failed = driver.find_element(By.CSS_SELECTOR, '.card[data-job="pose-failed"]')
    assert failed.find_element(By.CSS_SELECTOR, ".prompt").text == XSS_PROMPT
    assert not failed.find_elements(By.CSS_SELECTOR, ".prompt script, .prompt b, .error img")

    # links point at real files next to the page
    for link in driver.find_elements(By.CSS_SELECTOR, ".links a"):
        href = link.get_attribute("href")
        assert href.startswith("file://") and Path(href.removeprefix("file://")).exists(), href

    screenshot = root / "report.png"
    assert driver.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
    errors = [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
    assert errors == []
