"""`teacher serve` (the local stack) driven by the `teacher` CLI client, as a user would."""
from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml

from .conftest import ROOT, free_port, stop_process, wait_until

pytestmark = pytest.mark.slow
TEACHER = [sys.executable, "-m", "common.cli"]


def test_serve_and_cli_client(tmp_path: Path, service_dataset_root: Path, service_config: dict):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEACHER_")}
    env.update(
        TEACHER_DATABASE_URL=f"sqlite:///{tmp_path / 'state' / 'teacher.db'}",
        TEACHER_JOBS_ROOT=str(tmp_path / "jobs"), TEACHER_DATA_ROOT=str(service_dataset_root),
        TORCH_HOME=str(tmp_path / "torch"), TEACHER_HEARTBEAT_S="0.5", TEACHER_WORKER_BEAT_S="1",
        TEACHER_RECONCILE_INTERVAL_S="2",
    )
    log = tmp_path / "serve.log"
    serve = subprocess.Popen([*TEACHER, "serve", "--port", str(port)], env=env, cwd=ROOT,
                             stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def teacher(*args: str, token: str | None = None) -> subprocess.CompletedProcess:
        extra = {"TEACHER_URL": url, **({"TEACHER_TOKEN": token} if token else {})}
        return subprocess.run([*TEACHER, *args], env={**env, **extra}, cwd=tmp_path, capture_output=True,
                              text=True, timeout=300)

    try:
        wait_until(lambda: requests.get(url + "/api/v1/health", timeout=2).json()["status"] == "ok", 90,
                   "teacher serve to be healthy")
        token = teacher("tokens", "create", "--user", "carol").stdout.strip()
        assert token.startswith("tch_")
        cfg_file = tmp_path / "job.yaml"
        cfg_file.write_text(yaml.safe_dump(service_config))

        r = teacher("submit", str(cfg_file), "--set", "optim.epochs=1", "--wait", token=token)
        assert r.returncode == 0, r.stdout + r.stderr + log.read_text()
        job_id = r.stdout.split()[0]
        assert "succeeded" in r.stderr and "epoch 1/1" in r.stderr  # the progress line
        r = teacher("status", job_id, token=token)
        assert r.returncode == 0 and "succeeded" in r.stdout
        assert job_id in teacher("status", token=token).stdout
        r = teacher("logs", job_id, "--tail", "20", token=token)
        assert "Epoch 1/1 [Val]" in r.stdout
        r = teacher("logs", job_id, "-f", token=token)
        assert r.returncode == 0 and "Epoch 1/1 [Val]" in r.stdout and "job succeeded" in r.stderr
        r = teacher("download", job_id, "--out", str(tmp_path / "dl"), token=token)
        assert r.returncode == 0 and Path(r.stdout.strip()).stat().st_size > 0
        r = teacher("cancel", job_id, token=token)
        assert r.returncode == 1 and "409" in r.stderr
        r = teacher("submit", str(cfg_file), "--set", "optim.lr=-1", token=token)
        assert r.returncode == 2 and "optim.lr" in r.stderr
        assert teacher("status", job_id).returncode != 0  # no token
        assert teacher("status", job_id, token="tch_bogus").returncode == 1

        # Ctrl-C with a job running: everything stops, the job is interrupted and resumable
        long_cfg = copy.deepcopy(service_config)
        long_cfg["optim"]["epochs"] = 50
        cfg_file.write_text(yaml.safe_dump(long_cfg))
        long_id = teacher("submit", str(cfg_file), token=token).stdout.split()[0]
        headers = {"Authorization": f"Bearer {token}"}
        wait_until(lambda: (requests.get(f"{url}/api/v1/jobs/{long_id}", headers=headers, timeout=5)
                            .json().get("progress") or {}).get("step"), 120, "the long job to make progress")
        os.killpg(serve.pid, signal.SIGINT)
        assert serve.wait(timeout=120) == 0, log.read_text()[-3000:]
        with pytest.raises(requests.ConnectionError):
            requests.get(url + "/api/v1/health", timeout=2)
        from sqlalchemy import select

        from common.store import Job
        from worker.store import sessions_for

        with sessions_for(env["TEACHER_DATABASE_URL"])() as s:
            job = s.scalar(select(Job).where(Job.id == long_id))
        assert job.status == "interrupted" and job.exit_code == 3, (job.status, job.exit_code, log.read_text()[-3000:])
    finally:
        stop_process(serve, sig=signal.SIGINT, timeout=60)
