"""The web dashboard in a real headless browser (Debian's chromium + chromedriver, driven by
selenium) against the real stack: gunicorn, Redis, a Celery worker training for real.

One stack and one browser for the module; the tests run in order and build on each other
(sign in -> submit the demo config through the form -> watch it succeed -> download). Each page
is captured at 1280 and 390 px wide into a temp dir (printed; TEACHER_UI_SHOTS to choose it).
Without chromium the module is skipped, unless CI is set: then it must run.
"""
from __future__ import annotations

import base64
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from tests.support.procs import wait_until
from tests.support.stack import Stack, make_stack
from tests.support.ui import XSS, incident_history

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER) and not os.environ.get("CI"):
    pytest.skip("the browser tests need Debian's chromium and chromium-driver (apt-get install chromium "
                "chromium-driver); .ci/run installs them, and under CI=true they must run", allow_module_level=True)

PARKED = "parked"  # a queue no worker of this stack listens to: its jobs stay queued
WIDTHS = (1280, 390)


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_server: str, service_dataset_root: Path) -> Iterator[Stack]:
    import redis

    base = tmp_path_factory.mktemp("ui-stack")
    stack = make_stack(base, redis_server.rsplit("/", 1)[0] + "/14", service_dataset_root,
                       f"sqlite:///{base / 'state' / 'teacher.db'}", TEACHER_QUEUES=f"default,{PARKED}",
                       TEACHER_STATE_ROOT=str(base / "state"))
    redis.Redis.from_url(stack.settings.redis_url).flushdb()
    try:
        stack.start_api(workers=2, threads=4)  # two processes: sessions must hold across them
        stack.start_worker()
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def tokens(stack: Stack) -> dict[str, str]:
    return {user: stack.token(user)["Authorization"].split(" ", 1)[1] for user in ("alice", "bob")}


@pytest.fixture(scope="module")
def shots() -> Path:
    path = Path(os.environ.get("TEACHER_UI_SHOTS") or tempfile.mkdtemp(prefix="teacher-ui-shots-"))
    path.mkdir(parents=True, exist_ok=True)
    print(f"\nUI screenshots: {path}")
    return path


@pytest.fixture(scope="module")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ui-downloads")


@pytest.fixture(scope="module")
def browser(downloads: Path) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    previous = os.environ.get("SE_OFFLINE")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never download a browser or driver
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000",
                "--no-first-run", "--disable-extensions", "--lang=en-US"):
        opts.add_argument(arg)
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER or "/usr/bin/chromedriver"), options=opts)
    driver.set_page_load_timeout(30)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    try:
        yield driver
    finally:
        driver.quit()
        if previous is None:
            os.environ.pop("SE_OFFLINE", None)
        else:
            os.environ["SE_OFFLINE"] = previous


@pytest.fixture(scope="module")
def state() -> dict[str, Any]:
    """What one test leaves for the next (the demo job's id)."""
    return {}


# ----------------------------------------------------------------------------- helpers
def shoot(driver: Any, shots: Path, name: str) -> None:
    """The whole page at each width (device metrics emulated, so 390 px is a phone's layout)."""
    for width in WIDTHS:
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": width < 600})
        time.sleep(0.3)  # let the layout (and uPlot's resize handler) settle before the capture  # noqa: TID251
        height = driver.execute_script("return Math.min(document.documentElement.scrollHeight, 5000)")
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}})
        (shots / f"{name}-{width}.png").write_bytes(base64.b64decode(shot["data"]))
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def by_id(driver: Any, element_id: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id)


def sign_in(driver: Any, stack: Stack, token: str) -> None:
    driver.get(stack.api_url + "/ui/")
    assert "/ui/signin" in driver.current_url
    by_id(driver, "token").send_keys(token)
    by_id(driver, "signin-submit").click()
    wait_until(lambda: driver.current_url.endswith("/ui/jobs"), 15, "the jobs list after sign-in")


def sign_out(driver: Any) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, "form.signout button").click()
    wait_until(lambda: "/ui/signin" in driver.current_url, 15, "the sign-in page after sign-out")


def api(stack: Stack, token: str, method: str, path: str, **kw: Any) -> requests.Response:
    return requests.request(method, stack.api_url + path, headers={"Authorization": f"Bearer {token}"},
                            timeout=30, **kw)


def xss_job(stack: Stack, token: str) -> str:
    """A parked job whose config carries markup in a free-text value (csv filter values; job
    names only take letters, digits, '.', '_' and '-')."""
    cfg = {"name": "xss", "queue": PARKED, "model": {"arch": "resnet18"},
           "data": {"format": "csv", "root": "synthetic", "image_size": 32,
                    "filter": {"column": "region", "values": [XSS, "north", "south", "east", "west"]}},
           "optim": {"epochs": 1, "batch_size": 16, "lr": 0.01}}
    r = api(stack, token, "post", "/api/v1/jobs", json=cfg)
    assert r.status_code == 202, r.text
    return r.json()["id"]


# ----------------------------------------------------------------------------- tests
def test_sign_in_submit_the_demo_config_and_watch_it_succeed_live(stack, tokens, browser, shots, state):
    browser.get(stack.api_url + "/ui/jobs")
    assert "/ui/signin" in browser.current_url  # no session: sign in first
    shoot(browser, shots, "signin")
    sign_in(browser, stack, tokens["alice"])

    browser.get(stack.api_url + "/ui/submit?config=demo")
    editor = by_id(browser, "yaml")
    demo = (Path(__file__).resolve().parents[2] / "configs" / "demo.yaml").read_text()
    assert editor.get_property("value").strip() == demo.strip()  # prefilled from configs/demo.yaml
    shoot(browser, shots, "submit")
    by_id(browser, "submit-job").click()
    wait_until(lambda: "/ui/jobs/" in browser.current_url, 30, "the new job's page")
    job_id = browser.current_url.rstrip("/").rsplit("/", 1)[1]
    state["job"] = job_id
    assert api(stack, tokens["alice"], "get", f"/api/v1/jobs/{job_id}").json()["name"] == "demo"
    # a second, shorter run for the comparison (trains after this one)
    r = api(stack, tokens["alice"], "post", "/api/v1/jobs",
            json={"config": "demo", "name": "demo-short", "overrides": {"optim": {"epochs": 2, "lr": 0.003}}})
    assert r.status_code == 202, r.text
    state["short"] = r.json()["id"]

    browser.execute_script("window.__sameDocument = 'yes'")  # gone if the page were reloaded
    wait_until(lambda: browser.execute_script("return window.teacherJob && window.teacherJob.epochs") >= 1,
               240, "the first finished epoch on the chart")
    shoot(browser, shots, "job-running")
    wait_until(lambda: by_id(browser, "job-status").text == "succeeded", 300, "the page to show succeeded")
    wait_until(lambda: browser.execute_script("return window.teacherJob.finished"), 30, "the final update")
    assert browser.execute_script("return window.__sameDocument") == "yes"  # updated in place, never reloaded
    attempts = by_id(browser, "attempt-rows").find_elements("tag name", "tr")
    assert len(attempts) == 1 and "succeeded" in attempts[0].text  # the timeline, from the job's JSON

    epochs = api(stack, tokens["alice"], "get", f"/api/v1/jobs/{job_id}/metrics").json()["epochs"]
    assert len(epochs) == 6  # configs/demo.yaml trains 6 epochs
    drawn = browser.execute_script(
        "var c = window.teacherJob.charts; return [c.loss.chart.data[0], c.loss.chart.data[2], c.acc.chart.data[2]]")
    assert drawn[0] == [e["epoch"] for e in epochs]  # one point per finished epoch, read back from uPlot
    assert drawn[1] == pytest.approx([e["val"]["loss"] for e in epochs])
    assert drawn[2] == pytest.approx([e["val"]["top1"] for e in epochs])
    assert by_id(browser, "chart-loss").get_attribute("data-points") == "6"
    steps, lr = browser.execute_script("var c = window.teacherJob.charts; return [c.steps.chart.data, c.lr.chart.data]")
    assert len(steps[0]) >= 1 and all(v is not None for v in steps[1])  # the last epoch's step stream
    assert lr[1] == pytest.approx([e["lr"] for e in epochs])  # lr per epoch
    assert len(by_id(browser, "epoch-rows").find_elements("tag name", "tr")) == 6
    assert by_id(browser, "cancel-box").get_attribute("hidden") is not None  # a finished job has no cancel
    assert by_id(browser, "log").text.strip()  # the log tail followed along
    browser.refresh()  # a fresh render of the finished job: checks, plots, checkpoints
    wait_until(lambda: browser.execute_script("return window.teacherJob.updates") >= 1, 15, "the first poll")
    shoot(browser, shots, "job-succeeded")


def test_download_a_checkpoint_and_verify_its_sha256(stack, tokens, browser, downloads, state):
    from selenium.webdriver.common.by import By

    job_id = state["job"]
    browser.get(stack.api_url + f"/ui/jobs/{job_id}")
    wait_until(lambda: browser.execute_script("return window.teacherJob.finished"), 15, "the page's one live update")
    manifest = {c["name"]: c for c in api(stack, tokens["alice"], "get", f"/api/v1/jobs/{job_id}/checkpoints").json()["checkpoints"]}
    link = wait_until(lambda: browser.find_element(By.LINK_TEXT, "best.pt"), 15, "the best.pt link")
    row = link.find_element(By.XPATH, "./ancestor::tr")
    assert manifest["best.pt"]["sha256"] in row.text  # the page shows the manifest's digest
    link.click()
    target = downloads / f"{job_id}-best.pt"
    wait_until(lambda: target.is_file() and not list(downloads.glob("*.crdownload")), 60, "the download")
    assert target.stat().st_size == manifest["best.pt"]["size"]
    assert hashlib.sha256(target.read_bytes()).hexdigest() == manifest["best.pt"]["sha256"]


def test_jobs_list_shows_the_job_and_polls_conditionally(stack, browser, shots, state):
    browser.get(stack.api_url + "/ui/jobs")
    row = wait_until(lambda: browser.find_element("css selector", f'tr[data-job="{state["job"]}"]'), 15, "the row")
    assert "succeeded" in row.text and any(v in row.text for v in ("pass", "warn", "fail"))
    # nothing changes any more: the next polls are answered 304 (and leave the rows alone)
    wait_until(lambda: browser.execute_script("return window.teacherJobs.notModified") >= 1, 20, "a 304 poll")
    assert browser.execute_script("return window.teacherJobs.updates || 0") == 0
    shoot(browser, shots, "jobs")


def test_compare_two_jobs(stack, tokens, browser, shots, state):
    stack.headers = {"Authorization": f"Bearer {tokens['alice']}"}
    stack.wait_status(state["short"], {"succeeded"}, timeout=240)
    browser.get(stack.api_url + "/ui/compare")
    for job_id in (state["job"], state["short"]):
        by_id(browser, f"pick-{job_id}").click()
    shoot(browser, shots, "compare-pick")
    by_id(browser, "compare-submit").click()
    wait_until(lambda: browser.execute_script("return window.teacherCompare && window.teacherCompare.runs"), 15,
               "the compare charts")
    ids, data = browser.execute_script("var c = window.teacherCompare; return [c.ids, c.top1.data]")
    assert sorted(ids) == sorted([state["job"], state["short"]])
    series = dict(zip(ids, data[1:]))
    assert data[0] == [1, 2, 3, 4, 5, 6]  # 6 and 2 epochs overlaid on one axis
    long_run = api(stack, tokens["alice"], "get", f"/api/v1/jobs/{state['job']}/metrics").json()["epochs"]
    assert series[state["job"]] == pytest.approx([e["val"]["top1"] for e in long_run])
    assert series[state["short"]][2:] == [None] * 4 and None not in series[state["short"]][:2]
    diff = by_id(browser, "config-diff").text
    assert "optim.epochs" in diff and "optim.lr" in diff and "name" in diff and "model.arch" not in diff
    rows = by_id(browser, "compare-metrics").find_elements("css selector", "tbody tr")
    assert sorted(r.get_attribute("data-job") for r in rows) == sorted(ids)
    shoot(browser, shots, "compare")


def test_markup_in_config_values_and_the_editor_is_shown_escaped(stack, tokens, browser, shots, state):
    job_id = xss_job(stack, tokens["alice"])
    state["parked"] = job_id
    log = stack.settings.jobs_root / job_id / "child.log"  # the log tail the page shows
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"a log line {XSS}\n")
    browser.get(stack.api_url + f"/ui/jobs/{job_id}")
    wait_until(lambda: browser.execute_script("return window.teacherJob.updates") >= 1, 15, "the first poll")
    assert XSS in by_id(browser, "config").text  # shown as text
    assert f"a log line {XSS}" in by_id(browser, "log").text
    with log.open("a") as fh:  # a line arriving live goes in through the poll, as text too
        fh.write(f"live {XSS}\n")
    wait_until(lambda: f"live {XSS}" in by_id(browser, "log").text, 15, "the live log line")
    assert browser.execute_script("return typeof window.__xss") == "undefined"  # and never run
    assert not browser.find_elements("css selector", "#config img, #config script, #log img, #log script")

    browser.get(stack.api_url + "/ui/submit")
    yaml_text = f"name: '</textarea>{XSS}'\nmodel: {{arch: resnet18}}\n"
    browser.execute_script("document.getElementById('yaml').value = arguments[0]", yaml_text)
    by_id(browser, "submit-job").click()
    wait_until(lambda: browser.find_elements("id", "field-errors"), 15, "the field errors")
    assert "name" in by_id(browser, "field-errors").text
    assert by_id(browser, "yaml").get_property("value").strip() == yaml_text.strip()  # kept as typed, as text
    assert browser.execute_script("return typeof window.__xss") == "undefined"
    shoot(browser, shots, "submit-errors")


def test_failing_checks_are_marked_on_the_curves(stack, browser, shots, state):
    incident_history(stack.settings.jobs_root / state["parked"] / "run")
    browser.get(stack.api_url + f"/ui/jobs/{state['parked']}")
    wait_until(lambda: browser.execute_script("return window.teacherJob.updates") >= 1, 15, "the first poll")
    marked = browser.execute_script(
        "var c = window.teacherJob.charts.loss.chart, out = {};"
        "c.series.forEach(function (s, i) { out[s.label] = c.data[i]; }); return out")
    assert marked["dead_metric (fail)"] == [0.0, 0.0, 0.0, 0.0]  # train loss 0.0 at every epoch, marked
    assert marked["constant_series (warn)"] == pytest.approx([9.5393] * 4)  # val loss stuck, marked
    shoot(browser, shots, "job-flagged")


HEALTHY_LOG = Path(__file__).resolve().parents[1] / "data/analysis_corpus/imagenet18-pt-examples-style-healthy/console.txt"


def test_upload_a_log_for_analysis_and_read_its_report(stack, browser, shots):
    """The upload form creates the analysis through the API's code (api.analysis.analyse_uploads)
    and lands on its report: a healthy pytorch/examples console log passes."""
    browser.find_element("link text", "Analyses").click()
    browser.find_element("id", "new-analysis").click()
    wait_until(lambda: browser.current_url.endswith("/ui/analyses/new"), 15, "the upload form")
    shoot(browser, shots, "analysis-new")
    by_id(browser, "files").send_keys(str(HEALTHY_LOG))
    by_id(browser, "num_classes").send_keys("1000")
    by_id(browser, "analyse").click()
    wait_until(lambda: "/ui/analyses/new" not in browser.current_url, 30, "the report page")
    analysis_id = browser.current_url.rsplit("/", 1)[1]
    assert by_id(browser, "analysis-verdict").text == "pass"
    assert "console.txt" in by_id(browser, "analysis-files").text
    assert "num_classes = 1000" in by_id(browser, "analysis-hints").text
    plots = wait_until(lambda: browser.execute_script(
        "var imgs = document.querySelectorAll('#analysis-plots img');"
        "return imgs.length && Array.prototype.every.call(imgs, function (i) { return i.complete && i.naturalWidth > 0; })"
        " ? imgs.length : 0"), 15, "the plots loaded")
    assert plots >= 1
    shoot(browser, shots, "analysis")
    browser.find_element("link text", "All your analyses").click()
    assert analysis_id[:8] in by_id(browser, "analyses").text


def test_an_uploaded_incident_history_is_charted_with_its_failing_check_marked(browser, shots, tmp_path):
    """The analysis report draws the job page's curves (curves.js) from the series stored with
    the analysis: one point per epoch of the uploaded file, and the dead_metric failure (train
    loss 0.0 throughout: the original incident) as dots on the loss chart."""
    incident_history(tmp_path / "run")
    browser.find_element("link text", "Analyses").click()
    browser.find_element("id", "new-analysis").click()
    wait_until(lambda: browser.current_url.endswith("/ui/analyses/new"), 15, "the upload form")
    by_id(browser, "files").send_keys(str(tmp_path / "run" / "history.json"))
    by_id(browser, "num_classes").send_keys("12")
    by_id(browser, "analyse").click()
    wait_until(lambda: "/ui/analyses/new" not in browser.current_url, 30, "the report page")
    assert by_id(browser, "analysis-verdict").text == "fail"
    wait_until(lambda: browser.execute_script("return !!window.teacherAnalysis"), 15, "the curves drawn")
    charts = browser.execute_script(
        "var out = {}, charts = window.teacherAnalysis.charts;"
        "Object.keys(charts).forEach(function (name) { var c = charts[name].chart, d = {};"
        "  c.series.forEach(function (s, i) { d[s.label] = c.data[i]; }); out[name] = d; });"
        "return out")
    assert charts["loss"]["epoch"] == [1, 2, 3, 4]  # one point per epoch of the uploaded history
    assert charts["loss"]["train loss"] == [0.0] * 4
    assert charts["loss"]["val loss"] == pytest.approx([9.5393] * 4)
    assert charts["loss"]["dead_metric (fail)"] == [0.0] * 4  # the failing check, marked at its epochs
    assert charts["acc"]["train top-1"] == pytest.approx([11.0, 12.0, 13.0, 14.0])
    assert browser.execute_script(  # the curves replace the loss PNG; its image is the no-script fallback
        "return getComputedStyle(document.querySelector('#analysis-plots img.fallback')).display") == "none"
    assert "dead_metric" in by_id(browser, "flag-note").text
    shoot(browser, shots, "analysis-curves")


def test_inline_scripts_are_blocked_by_the_csp_and_the_cookie_is_hardened(stack, browser):
    browser.get(stack.api_url + "/ui/jobs")
    ran = browser.execute_script(
        "var s = document.createElement('script'); s.textContent = 'window.__inline = 1;';"
        "document.body.appendChild(s); return typeof window.__inline")
    assert ran == "undefined"  # script-src 'self': an injected inline script does not run
    csp = requests.get(stack.api_url + "/ui/signin", timeout=10).headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    cookie = browser.get_cookie("teacher_session")
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Lax" and cookie["secure"] is False  # plain HTTP
    assert browser.execute_script("return document.cookie").find("teacher_session") == -1  # not readable by JS


def test_a_form_post_without_the_csrf_token_is_refused(stack, tokens, browser, state):
    job_id = state["parked"]
    browser.get(stack.api_url + f"/ui/jobs/{job_id}")
    browser.execute_script("document.querySelector('#cancel-box input[name=csrf_token]').remove();"
                           "document.getElementById('cancel-box').open = true")
    by_id(browser, "cancel-confirm").click()
    wait_until(lambda: "refused" in by_id(browser, "error-message").text, 15, "the refusal")
    assert "CSRF" in by_id(browser, "error-message").text
    assert api(stack, tokens["alice"], "get", f"/api/v1/jobs/{job_id}").json()["status"] == "queued"
    browser.get(stack.api_url + f"/ui/jobs/{job_id}")  # with the token it goes through
    browser.execute_script("document.getElementById('cancel-box').open = true")
    by_id(browser, "cancel-confirm").click()
    wait_until(lambda: by_id(browser, "job-status").text == "cancelled", 15, "the cancelled job")


def test_another_users_job_and_its_files_are_404(stack, tokens, browser, shots, state):
    sign_out(browser)
    sign_in(browser, stack, tokens["bob"])
    job_id = state["job"]
    for path in (f"/ui/jobs/{job_id}", f"/ui/jobs/{job_id}/checkpoints/best", f"/ui/jobs/{job_id}/plots/loss.png"):
        browser.get(stack.api_url + path)
        assert browser.title.startswith("404"), path
    shoot(browser, shots, "not-found")
    browser.get(stack.api_url + "/ui/jobs")
    assert job_id not in browser.page_source


def test_admin_sees_the_workers_and_queue_depths(stack, browser, shots):
    sign_out(browser)
    sign_in(browser, stack, stack.token("root", admin=True)["Authorization"].split(" ", 1)[1])
    browser.find_element("link text", "Workers").click()
    rows = wait_until(lambda: by_id(browser, "workers").find_elements("css selector", "tbody tr[data-worker]"), 15,
                      "the worker rows")
    assert len(rows) == 1 and "alive" in rows[0].text and "default" in rows[0].text
    assert PARKED in by_id(browser, "queues").text
    shoot(browser, shots, "workers")


def test_sign_out_and_be_refused(stack, browser, state):
    copied = browser.get_cookie("teacher_session")
    sign_out(browser)
    browser.get(stack.api_url + f"/ui/jobs/{state['job']}")
    assert "/ui/signin" in browser.current_url
    # The session ended on the server: putting the signed-out cookie back signs no one in.
    browser.add_cookie({"name": copied["name"], "value": copied["value"], "path": copied["path"]})
    browser.get(stack.api_url + f"/ui/jobs/{state['job']}")
    assert "/ui/signin" in browser.current_url
    status = browser.execute_script(
        "return await fetch(arguments[0], {credentials: 'same-origin'}).then(function (r) { return r.status; })",
        f"/ui/jobs/{state['job']}/live.json")
    assert status == 401
