"""The dashboard's live integrity section, keyboard use and the phone width, in a real headless
chromium (the fixtures and helpers of test_ui_browser.py) against a real stack whose trainer
records train metrics as 0.0 (the test-only fault ``zero_train_metrics``, the original incident).

One stack and one browser for the module; the tests run in order: the faulty run is watched
live first (its worker starts after the page is open, so the page shows the section before any
epoch and the checks after, without a reload), then the keyboard and the 390 px checks use its
job and a parked one.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.support.procs import wait_until
from tests.support.stack import Stack, make_stack
from tests.support.training import TINY_CONFIG
from tests.system.test_ui_browser import PARKED, by_id, sign_in, shoot
from tests.system.test_ui_browser import browser, downloads, shots  # noqa: F401  (fixtures, one browser for this module)

pytestmark = pytest.mark.slow

MAX_TABS = 60  # more than the jobs list's header, filters and a page of rows need


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_server: str, service_dataset_root: Path) -> Iterator[Stack]:
    import redis

    base = tmp_path_factory.mktemp("ui-keyboard-stack")
    stack = make_stack(base, redis_server.rsplit("/", 1)[0] + "/15", service_dataset_root,
                       f"sqlite:///{base / 'state' / 'teacher.db'}", TEACHER_QUEUES=f"default,{PARKED}",
                       TEACHER_STATE_ROOT=str(base / "state"), TEACHER_FAULT="zero_train_metrics")
    redis.Redis.from_url(stack.settings.redis_url).flushdb()
    try:
        stack.start_api(workers=1, threads=4)  # the worker starts in the first test, once its page is open
        stack.headers = stack.token("alice")
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def state() -> dict[str, Any]:
    return {}


def zeroed_config() -> dict[str, Any]:
    """One short epoch: the fault makes the live check fail after it, and on_fail: stop ends the
    run there (no second epoch to wait for)."""
    cfg = copy.deepcopy(TINY_CONFIG)
    cfg["name"] = "zeroed"
    cfg["optim"]["batch_size"] = 16
    cfg["integrity"] = {"on_fail": "stop"}
    return cfg


def active(driver: Any) -> dict[str, Any]:
    """What has the keyboard focus, read from document.activeElement."""
    return driver.execute_script("""
        var a = document.activeElement, row = a.closest('tr[data-job]'), s = getComputedStyle(a);
        return {tag: a.tagName.toLowerCase(), id: a.id, name: a.getAttribute('name'), href: a.getAttribute('href'),
                text: (a.textContent || '').trim().slice(0, 60), inFilters: !!a.closest('form.filters'),
                job: row ? row.getAttribute('data-job') : null, jobLink: !!a.closest('td.c-name') && a.tagName === 'A'
                  && !a.classList.contains('tag'), outline: s.outlineStyle + ' ' + s.outlineWidth,
                visible: a.matches(':focus-visible'), legend: !!a.closest('#chart-loss .u-legend'),
                pressed: a.getAttribute('aria-pressed')};""")


def press(driver: Any, key: str) -> dict[str, Any]:
    driver.switch_to.active_element.send_keys(key)
    return active(driver)


def check_row(driver: Any, check: str) -> dict[str, str] | None:
    """The integrity section's row of a check, read in one go (the section may be replaced by
    the next live update between two reads of an element)."""
    return driver.execute_script("""
        var rows = document.querySelectorAll('#integrity-body tr');
        for (var i = 0; i < rows.length; i++) {
          var code = rows[i].querySelector('td code');
          if (code && code.textContent === arguments[0])
            return {status: rows[i].querySelector('td[data-label=Status]').textContent.trim(), 'class': rows[i].className};
        }
        return null;""", check)


# Records where the summary's values and the curves' heading are after every change to the summary
# (a MutationObserver: each live update is measured, not a sample of them).
WATCH_LAYOUT = """
window.__layout = [];
function snap() {
  var boxes = Array.prototype.map.call(document.querySelectorAll('.summary .kv'), function (e) {
    var r = e.getBoundingClientRect(); return [r.left, r.top, r.width, r.height].map(Math.round).join(','); });
  window.__layout.push({status: document.getElementById('job-status').textContent.trim(),
    curves: Math.round(document.getElementById('h-curves').getBoundingClientRect().top + window.scrollY), boxes: boxes.join(' ')});
}
new MutationObserver(snap).observe(document.querySelector('.summary'), {subtree: true, childList: true, characterData: true});
snap();
"""


def charted_marks(driver: Any, chart: str, label: str) -> list[tuple[int, float]]:
    """(epoch, value) of each point of a chart's series, read back from uPlot's own data."""
    xs, ys = driver.execute_script(
        "var c = window.teacherJob.charts[arguments[0]].chart, i = c.series.map(function (s) { return s.label; })"
        ".indexOf(arguments[1]); return i < 0 ? [[], []] : [c.data[0], c.data[i]]", chart, label)
    return [(x, y) for x, y in zip(xs, ys) if y is not None]


# ----------------------------------------------------------------------------- tests
def test_the_integrity_section_and_the_marks_on_the_curves_update_live(stack, browser, shots, state):
    """A faulty run, watched from before its first epoch: the checks table appears with
    dead_metric failing, and its epoch is marked on the loss curve, without a reload."""
    sign_in(browser, stack, stack.headers["Authorization"].split(" ", 1)[1])
    job_id = state["zeroed"] = stack.submit(zeroed_config())
    state["parked"] = stack.submit({**zeroed_config(), "name": "parked", "queue": PARKED})
    browser.get(stack.api_url + f"/ui/jobs/{job_id}")
    assert by_id(browser, "integrity-verdict").text == "Checked after the first finished epoch."
    assert not browser.find_elements("css selector", "#integrity-body tr")
    assert charted_marks(browser, "loss", "dead_metric (fail)") == []
    browser.execute_script("window.__sameDocument = 'yes'")  # gone if the page were reloaded
    browser.execute_script(WATCH_LAYOUT)

    stack.start_worker()  # only now: the page above was rendered before any epoch
    row = wait_until(lambda: check_row(browser, "dead_metric"), 180, "the dead_metric row, live")
    assert row == {"status": "fail", "class": "chk-fail"}, row
    assert browser.execute_script("return window.__sameDocument") == "yes"
    assert browser.execute_script("return window.teacherJob.integrity.updates") >= 1
    # nothing moved while the live values changed (queued -> running, progress, attempts, started, val top-1)
    layout = browser.execute_script("return window.__layout")
    live = [(r["curves"], r["boxes"]) for r in layout if r["status"] in ("queued", "running")]
    assert any(r["status"] == "running" for r in layout) and len(live) >= 3, layout
    assert len(set(live)) == 1, layout

    job = stack.wait_status(job_id, {"failed", "succeeded", "cancelled"}, timeout=120)
    assert job["status"] == "failed" and "dead_metric" in job["failure_reason"]  # on_fail: stop, after epoch 1
    wait_until(lambda: by_id(browser, "integrity-when").text == "(the final report)", 30, "the final report, live")
    report = stack.get(f"/api/v1/jobs/{job_id}/report").json()
    dead = next(c for c in report["checks"] if c["id"] == "dead_metric")
    assert dead["status"] == "fail" and dead["metric"] == "train.loss" and dead["epochs"] == [1]
    # the chart's marker series holds a point at each epoch the check names, at the recorded 0.0
    assert charted_marks(browser, "loss", "dead_metric (fail)") == [(1, 0.0)]
    assert charted_marks(browser, "loss", "train loss") == [(1, 0.0)]
    legend = browser.find_element("css selector", "#chart-loss .u-legend").text
    assert "dead_metric (fail)" in legend
    labels = browser.execute_script("return window.teacherJob.charts.loss.chart.series.map(function (s) { return s.label; })")
    assert len(labels) == len(set(labels)), labels  # cross_source against three sources: one mark per metric
    assert "dead_metric" in by_id(browser, "flag-note").text
    assert browser.execute_script("return window.__sameDocument") == "yes"
    shoot(browser, shots, "job-integrity-live")


def test_the_jobs_list_and_a_job_page_by_keyboard(stack, browser, state):
    """Tab from the top of the jobs list: the skip link, the filters, then a job's link; Enter
    opens it. On a job page the cancel confirmation opens and confirms by keyboard, and a chart's
    legend entry hides its series."""
    browser.get(stack.api_url + "/ui/jobs")
    wait_until(lambda: browser.find_elements("css selector", f'tr[data-job="{state["parked"]}"]'), 15, "the rows")
    first = press(browser, "\ue004")  # Tab (selenium's Keys.TAB)
    assert first["text"] == "Skip to content" and first["visible"] and first["outline"] != "none 0px", first
    assert press(browser, "\ue007")["id"] == "main"  # Enter: focus moves to the content
    seen = [press(browser, "\ue004")]
    assert seen[0]["inFilters"] and seen[0]["name"] == "name", seen  # the first thing after the skip: the filters
    while not seen[-1]["jobLink"] and len(seen) < MAX_TABS:
        seen.append(press(browser, "\ue004"))
    link = seen[-1]
    assert link["jobLink"], seen
    filters = [s for s in seen if s["inFilters"]]
    assert {"name", "tag", "status"} <= {s["name"] for s in filters}, filters  # every filter field reached
    assert any(s["tag"] == "button" and s["text"] == "Filter" for s in filters), filters
    assert link["visible"] and link["outline"].startswith("solid 3px"), link  # a visible focus ring
    assert link["job"] in (state["zeroed"], state["parked"])
    press(browser, "\ue007")  # Enter on the focused job link
    wait_until(lambda: browser.current_url.endswith(f"/ui/jobs/{link['job']}"), 15, "the job page")

    # the cancel confirmation, by keyboard only, on the parked (queued) job
    browser.get(stack.api_url + f"/ui/jobs/{state['parked']}")
    focused = press(browser, "\ue004")
    for _ in range(MAX_TABS):
        if focused["tag"] == "summary":
            break
        focused = press(browser, "\ue004")
    assert focused["tag"] == "summary" and focused["text"] == "Cancel job…", focused
    press(browser, "\ue007")  # Enter opens the disclosure
    assert by_id(browser, "cancel-box").get_attribute("open") is not None
    confirm = press(browser, "\ue004")
    assert confirm["id"] == "cancel-confirm" and confirm["visible"], confirm
    press(browser, "\ue007")
    wait_until(lambda: by_id(browser, "job-status").text == "cancelled", 15, "the job cancelled by keyboard")
    assert stack.job(state["parked"])["status"] == "cancelled"

    focused = press(browser, "\ue004")  # on from the cancelled job's page (reloaded by the form's redirect)
    for _ in range(MAX_TABS):
        if focused["legend"]:
            break
        focused = press(browser, "\ue004")
    assert focused["legend"] and focused["text"] == "train loss" and focused["pressed"] == "true", focused
    assert focused["visible"] and focused["outline"].startswith("solid 3px"), focused
    assert press(browser, "\ue007")["pressed"] == "false"  # Enter: the series is hidden
    assert browser.execute_script("return window.teacherJob.charts.loss.chart.series[1].show") is False


@pytest.mark.parametrize("page", ["jobs", "job", "submit", "analyses/new", "compare"])
def test_no_horizontal_overflow_at_390_px(stack, browser, state, page):
    """At 390 px the page body never scrolls sideways (wide tables scroll in their own box), and
    the live numbers use tabular digits (a changing value does not move its neighbours)."""
    path = f"/ui/jobs/{state['zeroed']}" if page == "job" else f"/ui/{page}"
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": False})
    try:
        browser.get(stack.api_url + path)
        if page == "job":
            wait_until(lambda: browser.execute_script("return window.teacherJob.updates") >= 1, 15, "the first poll")
            assert browser.execute_script("return getComputedStyle(document.getElementById('job-top1')).fontVariantNumeric") \
                == "tabular-nums"
            assert browser.find_elements("css selector", "#integrity-body tr.chk-fail")  # the full page, checks included
        elif page == "jobs":
            wait_until(lambda: browser.find_elements("css selector", "tr[data-job]"), 15, "the rows")
        inner, scroll, body = browser.execute_script(
            "return [window.innerWidth, document.documentElement.scrollWidth, document.body.scrollWidth]")
        assert inner == 390
        assert scroll <= inner and body <= inner, (page, inner, scroll, body, browser.execute_script(
            "return Array.prototype.filter.call(document.querySelectorAll('body *'), function (e) {"
            " return e.getBoundingClientRect().right > window.innerWidth + 0.5; }).slice(0, 8)"
            ".map(function (e) { return e.tagName + '#' + e.id + '.' + e.className; })"))
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
