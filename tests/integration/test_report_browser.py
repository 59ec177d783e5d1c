"""The report opened from disk in headless Chromium (Debian's /usr/bin/chromium, driven by
Playwright): every image loads, the results table is there, and a screenshot is taken.
Slow: it runs the tiny pipeline through curriculum, evaluate and report first."""

import os
import shutil

import pytest

from raysys.stages import synthesize
from tests.conftest import TINY
from tests.integration.test_curriculum_stage import COMPARE, _copy

pytestmark = [pytest.mark.integration, pytest.mark.slow]
CHROMIUM = "/usr/bin/chromium"


def test_report_opens_from_disk_with_every_image_loaded(tiny_generator, tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install chromium` (make test-slow does it)")
    from playwright.sync_api import sync_playwright  # pip install -e '.[browser]' (make test-slow does it)

    from raysys.cli import main

    cfg = tiny_generator[0]
    synthesize.run(cfg)
    root = tmp_path / "run"
    _copy(cfg, root)
    one_seed = [o if not o.startswith("compare.seeds=") else "compare.seeds=[0]" for o in COMPARE  # the page, not the stats
                if o != "compare.reference=true"]  # nor the headroom (test_curriculum_stage)
    assert main(["run", str(TINY), f"run.root={root}", *one_seed]) == 0
    page_path = root / "report" / "index.html"
    shutil.rmtree(root / "curriculum")  # the page must stand on its own folder, not on run outputs

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(page_path.as_uri())
        page.wait_for_load_state("load")
        images = page.evaluate("Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
        rows = page.evaluate("document.querySelectorAll('table')[0].rows.length")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert len(images) >= 7
    broken = [src for src, complete, width in images if not (complete and width > 0)]
    assert broken == []
    assert rows == 3  # header + real_only + dts
    assert (tmp_path / "report.png").stat().st_size > 20_000
