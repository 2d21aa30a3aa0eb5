"""The dashboard: pages over HTTP, and real clicks in headless Chromium against a running node.

Screenshots of the browser test go to ``test-artifacts/`` (kept by CI).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dicomnode.jobs import JobQueue, job_to_dict
from dicomnode.testing.peers import storescu
from tests.conftest import NODE_AE
from tests.test_api import ADMIN, READ, TOKENS, Api, seed
from tests.test_flow import write_study

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
)


def _signed_in(url: str, token: str) -> httpx.Client:
    client = httpx.Client(base_url=url, timeout=30, trust_env=False)
    response = client.post("/dashboard/login", data={"token": token, "next": "/dashboard"})
    assert response.status_code == 303 and response.headers["location"] == "/dashboard"
    return client


@pytest.fixture
def api(make_settings, start_node) -> Iterator[Api]:  # type: ignore[no-untyped-def]
    node = start_node(make_settings(api={"enabled": True, "port": 0, "tokens": TOKENS}))
    url = node.api.url
    clients = [
        _signed_in(url, ADMIN),
        _signed_in(url, READ),
        httpx.Client(base_url=url, trust_env=False),
    ]
    yield Api(node, url, *clients, ids=seed(node))
    for client in clients:
        client.close()


# -- pages over HTTP --------------------------------------------------------------------------


def test_pages_need_a_sign_in_and_render(api: Api) -> None:
    away = api.anonymous.get("/dashboard/failures", follow_redirects=False)
    assert away.status_code == 303
    assert away.headers["location"] == "/dashboard/login?next=%2Fdashboard%2Ffailures"
    refused = api.anonymous.post("/dashboard/login", data={"token": "wrong-token-0123456789"})
    assert refused.status_code == 401 and "Unknown token." in refused.text
    assert api.anonymous.get("/", follow_redirects=False).headers["location"] == "/dashboard"
    for path in ("/dashboard", "/dashboard/failures", "/dashboard/studies", "/dashboard/login"):
        page = api.read.get(path)
        assert page.status_code == 200, (path, page.text[:500])
    jobs = api.read.get("/dashboard", params={"status": "failed"}).text
    assert (
        f'data-job-id="{api.ids["failed"]}"' in jobs
        and f'data-job-id="{api.ids["done"]}"' not in jobs
    )
    assert "ACC001" in api.read.get("/dashboard/studies").text
    detail = api.read.get(f"/dashboard/jobs/{api.ids['done']}").text
    assert 'data-stage="infer"' in detail and "6.00 s" in detail and "cannot connect" not in detail
    lung = api.read.get("/dashboard", params={"pipeline": "lung"}).text
    assert lung.count('class="job-row"') == 2 and "2 job(s)" in lung


def test_bad_filters_and_unknown_jobs_are_pages_not_errors(api: Api) -> None:
    bad = api.read.get("/dashboard", params={"since": "yesterday", "offset": "x"})
    assert bad.status_code == 422 and "offset: must be a whole number" in bad.text
    assert api.read.get("/dashboard", params={"status": "nope"}).status_code == 422
    for raw in ("999999", "0", "abc", "99999999999999999999"):
        missing = api.read.get(f"/dashboard/jobs/{raw}")
        assert missing.status_code == 404 and f"no job with id {raw}" in missing.text
    assert api.read.get("/dashboard", params={"limit": "x", "refresh": "y"}).status_code == 200


def test_only_admins_get_retry_buttons_and_actions(api: Api) -> None:
    failed = api.ids["failed"]
    assert 'class="retry"' not in api.read.get("/dashboard/failures").text
    assert f'data-job-id="{failed}">Retry' in api.admin.get("/dashboard/failures").text
    refused = api.read.post(f"/dashboard/jobs/{failed}/retry")
    assert refused.status_code == 403 and "retry needs an admin token" in refused.text
    forged = api.admin.post(
        f"/dashboard/jobs/{failed}/retry", headers={"Origin": "http://evil.example"}
    )
    assert forged.status_code == 403
    assert job_to_dict(JobQueue(api.node.sessions).get(failed))["status"] == "failed"
    done = api.admin.post(
        f"/dashboard/jobs/{failed}/retry?next=/dashboard/failures", follow_redirects=False
    )
    assert done.status_code == 303 and done.headers["location"] == "/dashboard/failures?done=retry"
    assert JobQueue(api.node.sessions).get(failed).status == "sending"
    again = api.admin.post(f"/dashboard/jobs/{api.ids['running']}/retry")
    assert again.status_code == 409 and "can be retried" in again.text
    outside = api.admin.post(
        f"/dashboard/jobs/{api.ids['queued']}/cancel?next=https://evil.example/",
        follow_redirects=False,
    )
    assert outside.headers["location"] == f"/dashboard/jobs/{api.ids['queued']}?done=cancel"


# -- headless Chromium ----------------------------------------------------------------------


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip(
            "Debian chromium and chromium-driver are not installed (make test installs them as root)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


def shot(driver: Any, name: str) -> None:
    driver.save_screenshot(str(ARTIFACTS / f"dashboard-{name}.png"))


@pytest.mark.slow
def test_dashboard_in_chromium_shows_a_pushed_study_its_timeline_and_retries_a_failure(
    make_settings, start_node, browser, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    node = start_node(
        make_settings(
            api={"enabled": True, "port": 0, "tokens": TOKENS},
            routes=[{"pipeline": "geometry_qa", "match": {"Modality": "CT"}}],
        ),
        workers=1,
    )
    wait = WebDriverWait(browser, 120, poll_frequency=0.2)
    browser.get(f"{node.api.url}/dashboard?refresh=1")
    wait.until(ec.presence_of_element_located((By.ID, "token")))
    browser.find_element(By.ID, "token").send_keys(ADMIN)
    shot(browser, "1-login")
    browser.find_element(By.ID, "sign-in").click()
    wait.until(ec.presence_of_element_located((By.ID, "jobs-body")))
    assert "refresh=1" in browser.current_url and not browser.find_elements(
        By.CSS_SELECTOR, "tr.job-row"
    )

    # Pushed while the page is open: live refresh brings the rows in, no reload.
    (tmp_path / "good").mkdir()
    (tmp_path / "gappy").mkdir()
    good_files = write_study(tmp_path / "good", 6)
    gappy_files = write_study(tmp_path / "gappy", 6)
    del gappy_files[2]  # a lost slice: geometry_qa fails this study
    for files in (good_files, gappy_files):
        sent = storescu(files, host="127.0.0.1", port=node.receiver.port, called_aet=NODE_AE)
        assert sent.returncode == 0, sent.stderr
    good = str(_study_uid(good_files[0]))
    done_row = f'tr.job-row[data-study="{good}"][data-status="done"]'
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, done_row)))
    wait.until(
        ec.presence_of_element_located((By.CSS_SELECTOR, 'tr.job-row[data-status="failed"]'))
    )
    wait.until(ec.text_to_be_present_in_element((By.ID, "count"), "2 job(s)"))
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#charts .throughput svg rect")))
    shot(browser, "2-jobs")

    browser.find_element(By.CSS_SELECTOR, f"{done_row} a.job-link").click()
    wait.until(
        ec.presence_of_element_located((By.CSS_SELECTOR, '#timeline tr.event[data-stage="done"]'))
    )
    stages = [
        row.get_attribute("data-stage")
        for row in browser.find_elements(By.CSS_SELECTOR, "#timeline tr.event")
    ]
    assert stages[0] in ("waiting", "queued") and "geometry" in stages and stages[-1] == "done"
    assert browser.find_element(By.ID, "job-status").text == "done"
    assert good in browser.find_element(By.ID, "summary").text
    shot(browser, "3-timeline")

    browser.find_element(By.ID, "nav-failures").click()
    failed_id = int(
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "tr.failure"))).get_attribute(
            "data-job-id"
        )
    )
    assert "gap(s) suggest missing slices" in browser.find_element(By.ID, "failures").text
    shot(browser, "4-failures")
    browser.find_element(By.CSS_SELECTOR, f'button.retry[data-job-id="{failed_id}"]').click()
    notice = wait.until(ec.presence_of_element_located((By.ID, "notice")))
    assert notice.text.startswith("Retry requested")
    shot(browser, "5-retried")
    job = job_to_dict(JobQueue(node.sessions).get(failed_id), events=True)
    assert job["status"] != "failed" or sum(e["stage"] == "claim" for e in job["events"]) == 2
    assert [e for e in job["events"] if e["stage"] == "retry"]

    # The job runs again (and fails again: the slice is still missing); its page says so.
    deadline = time.monotonic() + 120
    while JobQueue(node.sessions).get(failed_id).status != "failed":
        assert time.monotonic() < deadline, "the retried job did not run"
        time.sleep(0.2)
    browser.get(f"{node.api.url}/dashboard/jobs/{failed_id}")
    claims = browser.find_elements(By.CSS_SELECTOR, '#timeline tr.event[data-stage="claim"]')
    assert len(claims) == 2 and browser.find_element(By.ID, "retry")
    shot(browser, "6-failed-again")


def _study_uid(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
