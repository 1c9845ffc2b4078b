"""The live dashboard in a real browser: headless Chromium (Debian's chromium and
chromium-driver, driven by Selenium) opens run-all's /ui while a bounded `paysim send` runs,
and the figures on the page change as the payments go through; then the run is in the list of
past runs with its report. `paysim dashboard` serves the same data on a port of its own."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from paysim.infra.config import Settings
from paysim.infra.waiting import wait_until
from paysim.pipeline import store
from tests.helpers import free_port
from tests.integration.pipeline_helpers import child_env, send, start_send

CHROMEDRIVER = "/usr/bin/chromedriver"
# Set to a path (docs/dashboard.png) to keep the screenshot beyond the test's tmp folder.
SCREENSHOT_ENV = "PAYSIM_DASHBOARD_SCREENSHOT"


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    assert Path(CHROMEDRIVER).exists(), "no chromedriver: scripts/test.sh installs chromium-driver"
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1400,1700"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def number(driver: webdriver.Chrome, element_id: str) -> float | None:
    """The first number in an element's text (1,234 read as 1234); None when there is none."""
    try:
        text = driver.find_element(By.ID, element_id).text
    except WebDriverException:
        return None
    match = re.search(r"-?[\d,]+(?:\.\d+)?", text)
    return float(match[0].replace(",", "")) if match else None


def test_the_page_follows_a_run_live_and_lists_it_afterwards(
        pipeline: Settings, browser: webdriver.Chrome, tmp_path: Path) -> None:
    base = f"http://{pipeline.http.host}:{pipeline.http.port}/ui"
    browser.get(base)  # redirected to /ui/: the page's links are relative
    assert browser.current_url.endswith("/ui/")
    assert wait_until(lambda: browser.find_element(By.ID, "status").text == "live", timeout=20)
    assert wait_until(lambda: (number(browser, "kpi-services") or 0) >= 5, timeout=20)

    # A loose threshold: the test checks that a verdict is shown, not how loaded the machine is.
    child, out, err = start_send(pipeline, "--rate", "40", "--duration", "12s", "--seed", "31",
                                 "--threshold", "p99_ms < 60000")
    try:
        # The run's progress appears, and its numbers grow from one second to the next.
        assert wait_until(lambda: (number(browser, "run-sent") or 0) > 0, timeout=30), \
            err.text()
        first_sent = number(browser, "run-sent")
        first_completed = number(browser, "run-completed") or 0
        assert wait_until(lambda: (number(browser, "run-sent") or 0) > (first_sent or 0) + 20,
                          timeout=15)
        assert wait_until(lambda: (number(browser, "run-completed") or 0)
                          > first_completed + 20, timeout=15)
        # Rates from the services' metrics: payments sent and messages processed per second.
        assert wait_until(lambda: (number(browser, "kpi-processed") or 0) > 0, timeout=15)
        assert wait_until(lambda: (number(browser, "kpi-sent") or 0) > 0, timeout=15)
        assert "p99_ms < 60000" in browser.find_element(By.ID, "run").text
        # The threshold's verdict on the run so far, in green, once a payment completed.
        assert wait_until(lambda: [cell.get_attribute("data-state") for cell in
                                   browser.find_elements(By.CSS_SELECTOR,
                                                         "#run-thresholds td.verdict.ok")]
                          == ["passing"], timeout=15)
        assert "passing" in browser.find_element(By.ID, "run-thresholds").text
        assert "approved/00" in browser.find_element(By.ID, "reasons").text
        lines = browser.find_elements(By.CSS_SELECTOR, "#chart-throughput path")
        assert lines and any(line.get_attribute("d").count("L") >= 2 for line in lines)
        shot = tmp_path / "dashboard.png"
        assert browser.save_screenshot(str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
        if os.environ.get(SCREENSHOT_ENV):
            shutil.copyfile(shot, os.environ[SCREENSHOT_ENV])
        assert child.wait(120) == 0, err.text()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    run_id = json.loads(out.text())["run_id"]
    later_id = send(pipeline, "--count", "30", "--seed", "32")["run_id"]

    # Both finished runs are listed; one opens its report, the two compare.
    browser.refresh()
    assert wait_until(lambda: {run_id, later_id} <= set(
        browser.find_element(By.ID, "runs").text.split()), timeout=20)
    browser.find_element(By.LINK_TEXT, run_id).click()
    assert in_report_frame(browser, "paysim run report")
    assert browser.find_elements(By.CSS_SELECTOR, "svg")  # the report's charts
    browser.switch_to.default_content()
    for row in browser.find_elements(By.CSS_SELECTOR, "#runs tbody tr"):
        if {run_id, later_id} & set(row.text.split()):
            row.find_element(By.CSS_SELECTOR, "input[type=checkbox]").click()
    browser.find_element(By.ID, "compare").click()
    assert in_report_frame(browser, "paysim runs compared")
    assert f"A: {run_id}" in browser.find_element(By.TAG_NAME, "body").text  # older is A
    browser.switch_to.default_content()


def in_report_frame(browser: webdriver.Chrome, heading: str) -> bool:
    """Switch into the page's report frame once its h1 says ``heading``."""
    def loaded() -> bool:
        browser.switch_to.default_content()
        browser.switch_to.frame(browser.find_element(By.ID, "report"))
        headings = browser.find_elements(By.TAG_NAME, "h1")
        return bool(headings) and heading in headings[0].text
    return wait_until(loaded, timeout=10)


def test_run_progress_records_go_stale_and_leave_redis(local_stack, settings: Settings) -> None:
    client = store.connect(settings)
    try:
        now = time.time()
        fresh = store.RunProgress(
            run_id="run-fresh", pid=1, scenario=None, started_at=now, seen_at=now,
            elapsed_s=1.0, scheduled=10, sent=5, completed=4, dropped=0, target_rate=None,
            current_rate=5.0, rolling_p99_ms=None, reasons={"approved/00": 4}, thresholds=[])
        store.write_run_progress(client, fresh)
        store.write_run_progress(client, msgspec.structs.replace(
            fresh, run_id="run-old", seen_at=now - store.LIVE_RUN_FRESH_S - 1))
        client.hset(store.LIVE_RUNS_KEY, "junk", b"not json")
        # (Another test's run may still be fresh in the shared Redis: only these are looked at.)
        assert fresh in store.read_run_progress(client)
        left = set(client.hkeys(store.LIVE_RUNS_KEY))
        assert b"run-fresh" in left and not {b"run-old", b"junk"} & left
        store.clear_run_progress(client, "run-fresh")
        assert fresh not in store.read_run_progress(client)
    finally:
        client.close()


def test_paysim_dashboard_serves_the_same_data_on_its_own_port(pipeline: Settings) -> None:
    port = free_port()
    child = subprocess.Popen([sys.executable, "-m", "paysim", "dashboard", "--port", str(port)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=child_env(pipeline))
    try:
        def snapshot() -> dict | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/snapshot",
                                            timeout=5) as answer:
                    return json.loads(answer.read())
            except OSError:
                return None

        assert wait_until(lambda: snapshot() is not None, timeout=20)
        names = {row["name"] for row in snapshot()["services"]}
        assert {"authorizer-0", "processor-0", "notifier-0", "ledger-0", "http-0"} <= names
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as answer:
            page = answer.read().decode()
        assert "<svg" in page and "EventSource" in page
        # Nothing from elsewhere: no http(s) URL the page would load.
        assert not re.search(r"(src|href)=\"https?:", page)
    finally:
        child.terminate()
        assert child.wait(20) == 0, child.stderr.read() if child.stderr else ""
