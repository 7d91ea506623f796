"""Multi-GPU placement on the real stack (gunicorn, redis-server, Celery workers): a worker
with TEACHER_FAKE_DEVICES (test-only) reports 2 GPUs, another reports what this CPU host has
(the real probe: 0 GPUs). POST /jobs with resources.gpus: 4 is a 400 naming the field; gpus: 2
is accepted; the 0-GPU worker never claims it (it passes the message on, saying why), the
2-GPU worker does. On this CPU host its training then fails for lack of CUDA (the training
side's business, not asserted here): the test cancels it once the placement is shown."""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from typing import Any

import pytest

from common.devices import FAKE_ENV
from tests.support.procs import wait_until
from tests.support.stack import ROOT, Stack

pytestmark = pytest.mark.slow

TWO_GPUS = json.dumps({"gpus": [{"name": "Fake H100", "memory_mb": 81559}] * 2})
FINISHED = {"succeeded", "failed", "cancelled"}


def start_worker(stack: Stack, fake: str | None) -> tuple[Any, str]:
    """A worker (its env with or without the fake report) and its name (hostname:pid)."""
    stack.env.pop(FAKE_ENV, None)
    if fake is not None:
        stack.env[FAKE_ENV] = fake
    try:
        proc = stack.start_worker()
    finally:
        stack.env.pop(FAKE_ENV, None)
    return proc, f"{socket.gethostname()}:{proc.pid}"


def health_workers(stack: Stack, headers: dict[str, str]) -> dict[str, dict[str, Any]]:
    """/health's workers as the holder of ``headers`` sees them (checked against the OpenAPI
    document, as every response through the stack)."""
    own, stack.headers = stack.headers, headers
    try:
        r = stack.get("/api/v1/health")
    finally:
        stack.headers = own
    return {w["name"]: w for w in r.json()["checks"]["worker"].get("workers", [])}


def refusals(stack: Stack, log_name: str, job_id: str) -> list[str]:
    text = (stack.base / log_name).read_text(errors="replace")
    return [ln for ln in text.splitlines() if job_id in ln and "asks for 2 GPUs; this worker has 0" in ln]


def workers_page_devices(stack: Stack, admin: dict[str, str]) -> dict[str, str]:
    """The admin Workers page's devices column, read in a real (headless) Chromium: worker
    name -> the cell's text. Skipped without Debian's chromium and chromium-driver."""
    chromium, driver_bin = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if not (chromium and driver_bin):
        pytest.skip("needs chromium and chromium-driver (as tests/system/test_ui_browser.py)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"):
        opts.add_argument(arg)
    previous = os.environ.get("SE_OFFLINE")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never download anything
    try:
        driver = webdriver.Chrome(service=Service(driver_bin), options=opts)
    finally:
        if previous is None:
            os.environ.pop("SE_OFFLINE", None)
        else:
            os.environ["SE_OFFLINE"] = previous
    try:
        driver.set_page_load_timeout(30)
        driver.get(stack.api_url + "/ui/signin")
        driver.find_element(By.ID, "token").send_keys(admin["Authorization"].split(" ", 1)[1])
        driver.find_element(By.ID, "signin-submit").click()
        wait_until(lambda: driver.current_url.endswith("/ui/jobs"), 15, "the jobs list after sign-in")
        driver.get(stack.api_url + "/ui/admin/workers")
        rows = driver.find_elements(By.CSS_SELECTOR, "#workers tr[data-worker]")
        return {r.get_attribute("data-worker"): r.find_element(By.CSS_SELECTOR, "td.devices").text for r in rows}
    finally:
        driver.quit()


def test_jobs_go_to_a_worker_with_the_gpus_they_ask_for(stack_factory, service_config):
    # Beats every 2 s (alive for 6 s): the 2-GPU worker still counts as alive for the submit
    # right after it is killed, so that the 0-GPU worker is the only one to take the message.
    stack = stack_factory(TEACHER_WORKER_BEAT_S="2")
    stack.start_api()
    alice = stack.token("alice")
    root = stack.token("root", admin=True)
    stack.headers = alice
    big, big_name = start_worker(stack, TWO_GPUS)
    _, cpu_name = start_worker(stack, None)

    def reported() -> dict[str, dict[str, Any]] | None:  # each worker probes after it is ready
        w = health_workers(stack, root)
        return w if all(w.get(n, {}).get("devices") for n in (big_name, cpu_name)) else None

    workers = wait_until(reported, 60, "both workers' devices in /health")
    assert workers[big_name]["summary"] == "2 × Fake H100" and workers[big_name]["devices"]["source"] == FAKE_ENV
    assert workers[cpu_name]["devices"]["gpus"] == [] and workers[cpu_name]["summary"].startswith("CPU (")
    assert health_workers(stack, alice) == {} == health_workers(stack, {})
    doctor = subprocess.run([sys.executable, "-m", "common.apps.cli", "doctor", "--only", "workers"], cwd=ROOT,
                            env=stack.env, capture_output=True, text=True, timeout=60)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert f"{big_name} (seen " in doctor.stdout and "; 2 × Fake H100 [TEACHER_FAKE_DEVICES])" in doctor.stdout
    assert re.search(rf"{re.escape(cpu_name)} \(seen \d+s ago; CPU \(\d+ cores?\)\)", doctor.stdout), doctor.stdout
    cells = workers_page_devices(stack, root)
    assert cells[big_name] == "2 × Fake H100 (TEACHER_FAKE_DEVICES)" and re.fullmatch(r"CPU \(\d+ cores?\)", cells[cpu_name])

    cfg = copy.deepcopy(service_config)
    cfg["optim"]["epochs"] = 1
    cfg["runtime"]["device"] = "auto"  # gpus refuse device cpu
    r = stack.post("/api/v1/jobs", json={**cfg, "resources": {"gpus": 4}})
    assert r.status_code == 400, r.text
    assert r.json()["errors"] == {"resources.gpus": ["asks for 4 GPUs; the live workers of queue 'default' have at most 2"]}

    # The 2-GPU worker goes away; while its beat is fresh, gpus: 2 is accepted, and only the
    # 0-GPU worker is there to get the message: it leaves the job queued and passes it on.
    stack.kill_worker(big)  # (SIGKILL: stack.wait_status accepts it; a clean exit it does not)
    job_id = stack.submit({**cfg, "resources": {"gpus": 2}})
    wait_until(lambda: refusals(stack, "worker1.log", job_id), 30, "the 0-GPU worker passing the job on")
    job = stack.job(job_id)
    assert (job["status"], job["attempts"], job["timeline"]) == ("queued", 0, [])

    # A 2-GPU worker (a new process) takes it at the next delivery.
    _, big_name = start_worker(stack, TWO_GPUS)
    job = wait_until(lambda: (j := stack.job(job_id))["timeline"] and j, 60, "an attempt of the job")
    assert job["timeline"][0]["worker"] == big_name, job
    # What training on gpus: 2 does on this CPU host is the training side's business (it fails
    # for lack of CUDA): cancel it rather than wait for its retries (409: it already ended).
    assert stack.post(f"/api/v1/jobs/{job_id}/cancel").status_code in (200, 202, 409)
    job = stack.wait_status(job_id, FINISHED, timeout=60)
    assert job["status"] in ("cancelled", "failed") and job["attempts"] >= 1, job
    assert {a["worker"] for a in job["timeline"]} == {big_name}, job
    cpu_log = (stack.base / "worker1.log").read_text(errors="replace")
    assert "started child pid" not in cpu_log  # the 0-GPU worker never ran an attempt
    assert "left for another worker of queue 'default'" in refusals(stack, "worker1.log", job_id)[0]
