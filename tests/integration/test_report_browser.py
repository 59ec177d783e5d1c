"""The report opened from disk in headless Chromium (Debian's /usr/bin/chromium, driven by
Playwright): every image loads, the results table is there, and a screenshot is taken.
Slow: it opens the report of conftest's folder_run (a whole `raysys run`, shared with the folder
end-to-end test)."""

import os
import shutil

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]
CHROMIUM = "/usr/bin/chromium"


def test_report_opens_from_disk_with_every_image_loaded(folder_run, tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install chromium` (make test-slow does it)")
    from playwright.sync_api import sync_playwright  # pip install -e '.[browser]' (make test-slow does it)

    _, root = folder_run
    report = tmp_path / "report"
    shutil.copytree(root / "report", report)  # the page must stand on its own folder, not on the run's outputs
    page_path = report / "index.html"

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(page_path.as_uri())
        page.wait_for_load_state("load")
        images = page.evaluate("Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
        rows = page.evaluate("document.querySelectorAll('table')[0].rows.length")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    sources = {src for src, _, _ in images}
    assert {"real_difficulty_hist.png", "synthetic_difficulty_hist.png", "pretrain_samples.png",
            "class_x_lambda_grid.png"} <= sources  # the data, the generator and its images
    broken = [src for src, complete, width in images if not (complete and width > 0)]
    assert broken == []
    assert rows == 3  # header + real_only + dts
    assert (tmp_path / "report.png").stat().st_size > 20_000
