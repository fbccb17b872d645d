"""The live view in a real browser (integration: a real sweep on a local Ray, `phasemap serve` and
Debian's chromium driven headless by Playwright).

Skips, with the reason, where chromium or Playwright is not installed (`make test` installs
both where it can: see the Makefile).
"""

import os
import shutil
import subprocess
import sys
import time

import pytest
import yaml

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
playwright = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
if not os.path.exists(CHROMIUM):
    pytest.skip(f"no chromium at {CHROMIUM} (Debian's package `chromium`; `make test` installs it where apt-get can)",
                allow_module_level=True)

# flags the probe of this machine needed: no background connections to a closed network
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
DEPTHS = [1, 2, 3]  # a pack per depth (weight decays share one), trained one after another on 1 CPU, ~5 s each


def sweep_config(root):
    return {
        "name": "live",
        "storage": {"root": str(root)},
        "base": {"task": {"name": "fc1", "input_dim": 8, "teacher_width": 8},
                 "model": {"width": 16},
                 "train": {"steps": 1500, "batch_size": 16, "check_every": 50, "checkpoint_every": 200},
                 "probe": {"n_samples": 64, "count": 3}},
        "axes": {"model.depth": DEPTHS, "optimizer.weight_decay": [0.0, 1e-2]},
        "resources": {"cpus": 1},
    }


def test_page_follows_a_running_sweep_clicks_a_cell_and_runs_a_query(tmp_path):
    root = tmp_path / "results"
    root.mkdir()
    config = tmp_path / "live.yaml"
    config.write_text(yaml.safe_dump(sweep_config(root)))
    server = subprocess.Popen([sys.executable, "-m", "phasemap.cli", "serve", str(root), "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    sweep = None
    try:
        url = server.stdout.readline().split(" at ")[1].split()[0]
        sweep = subprocess.Popen([sys.executable, "-m", "phasemap.cli", "sweep", str(config), "--num-cpus", "1",
                                  "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page(viewport={"width": 1300, "height": 1400})
            page.goto(url)
            figure = page.locator("#fig-phase-diagram")
            deadline = time.monotonic() + 240
            seen = []  # measured cells of the phase diagram, as the page redraws it
            while time.monotonic() < deadline:
                cells = int(figure.get_attribute("data-cells") or 0)
                if not seen or cells != seen[-1]:
                    seen.append(cells)
                    if cells and cells < len(DEPTHS) * 2 and not (tmp_path / "during.png").exists():
                        page.screenshot(path=tmp_path / "during.png", full_page=True)
                if cells == len(DEPTHS) * 2:
                    break
                page.wait_for_timeout(300)
            why = (seen, sweep.poll(), page.locator("#error").inner_text(), figure.locator("figcaption").inner_text())
            assert seen[-1] == len(DEPTHS) * 2, why
            growing = [c for c in seen if c]
            assert len(growing) >= 2 and growing == sorted(growing), why  # grew, without a reload
            assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
            done = f"{len(DEPTHS) * 2} complete"
            page.wait_for_function(f"document.querySelector('#counts').textContent.includes('{done}')")

            # a click on a cell: its networks and their layer figure
            page.locator('#fig-phase-diagram [id^="cell-"]').first.click()
            page.wait_for_selector("#cell:not([hidden]) #net-table tbody tr")
            rows = page.locator("#net-table tbody tr").count()
            assert rows == 1 and "Networks of the cell" in page.locator("#net-title").inner_text()
            assert page.locator("#net-figure svg").count() == 1

            # a query: its table
            page.fill("#query", "SELECT depth, count(DISTINCT member) AS networks FROM last_records "
                                "GROUP BY depth ORDER BY depth")
            page.click("#run")
            page.wait_for_selector("#result tbody tr")
            table = page.locator("#result tbody tr").all_inner_texts()
            assert [t.split() for t in table] == [[str(d), "2"] for d in DEPTHS]
            page.fill("#query", "COPY records TO '/tmp/x.csv'")
            page.click("#run")
            page.wait_for_function("document.querySelector('#sql-message').textContent.includes('SELECT')")
            page.screenshot(path=tmp_path / "after.png", full_page=True)
            browser.close()
        assert sweep.wait(timeout=60) == 0, sweep.stdout.read()
        assert (tmp_path / "during.png").stat().st_size > 10_000 and (tmp_path / "after.png").stat().st_size > 10_000
    finally:
        if sweep is not None and sweep.poll() is None:
            sweep.terminate()
            sweep.wait(timeout=30)
        server.terminate()
        server.wait(timeout=10)
