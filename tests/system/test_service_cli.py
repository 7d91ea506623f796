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

from tests.support.procs import free_port, stop_process, wait_until
from tests.support.training import ROOT

pytestmark = pytest.mark.slow
TEACHER = [sys.executable, "-m", "common.apps.cli"]


def _run_with_tty_stderr(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    """Run with stderr on a pseudo-terminal (as in an interactive shell); returns (code, stdout,
    what the terminal showed)."""
    import pty
    import threading

    master, slave = pty.openpty()
    shown = bytearray()

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the last writer closed the terminal
                return
            if not data:
                return
            shown.extend(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        proc = subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=slave, text=True, timeout=300)
    finally:
        os.close(slave)
    reader.join(timeout=10)
    os.close(master)
    return proc.returncode, proc.stdout, shown.decode(errors="replace")


def test_serve_and_cli_client(tmp_path: Path, service_dataset_root: Path, service_config: dict):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEACHER_")}
    env.update(
        TEACHER_DATABASE_URL=f"sqlite:///{tmp_path / 'state' / 'teacher.db'}",
        TEACHER_STATE_ROOT=str(tmp_path / "state"),
        TEACHER_JOBS_ROOT=str(tmp_path / "jobs"), TEACHER_DATA_ROOT=str(service_dataset_root),
        TORCH_HOME=str(tmp_path / "torch"), TEACHER_HEARTBEAT_S="0.5", TEACHER_WORKER_BEAT_S="1",
        TEACHER_RECONCILE_INTERVAL_S="2",
    )
    log = tmp_path / "serve.log"
    serve = subprocess.Popen([*TEACHER, "serve", "--port", str(port)], env=env, cwd=ROOT,
                             stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def teacher(*args: str, token: str | None = None) -> subprocess.CompletedProcess:
        # No TEACHER_URL: the client finds the stack through the endpoints file serve wrote.
        extra = {"TEACHER_TOKEN": token} if token else {}
        return subprocess.run([*TEACHER, *args], env={**env, **extra}, cwd=tmp_path, capture_output=True,
                              text=True, timeout=300)

    try:
        wait_until(lambda: requests.get(url + "/api/v1/health", timeout=2).json()["status"] == "ok", 90,
                   "teacher serve to be healthy")
        wait_until(lambda: (tmp_path / "state" / "serve.json").is_file(), 60, "serve's endpoints file")
        token = teacher("tokens", "create", "--user", "carol").stdout.strip()
        assert token.startswith("tch_")
        cfg_file = tmp_path / "job.yaml"
        cfg_file.write_text(yaml.safe_dump(service_config))

        r = teacher("submit", str(cfg_file), "--set", "optim.epochs=1", "--wait", token=token)
        assert r.returncode == 0, r.stdout + r.stderr + log.read_text()
        job_id = r.stdout.split()[0]
        short = job_id[:12]  # what the CLI prints in lists and progress lines
        assert "succeeded" in r.stderr and "epoch 1/1" in r.stderr  # the progress line
        # --wait ends with the validation metrics and the best checkpoint, not train metrics only
        assert "val (last epoch): top-1 " in r.stdout and "best.pt: epoch 1, val top-1 " in r.stdout, r.stdout
        r = teacher("status", short, token=token)
        assert r.returncode == 0 and "succeeded" in r.stdout and job_id in r.stdout
        assert "best.pt: epoch 1" in r.stdout
        listing = teacher("status", token=token).stdout.splitlines()
        assert listing[0].split()[:4] == ["ID", "STATUS", "NAME", "CREATED"], listing
        row = next(line for line in listing if line.startswith(short))
        assert "succeeded" in row and "val top-1 " in row and "best.pt epoch 1" in row, row
        r = teacher("logs", short, "--tail", "20", token=token)
        assert "Epoch 1/1 [Val]" in r.stdout
        r = teacher("logs", short, "-f", token=token)
        assert r.returncode == 0 and "Epoch 1/1 [Val]" in r.stdout and "job succeeded" in r.stderr
        r = teacher("download", short, "--out", str(tmp_path / "dl"), token=token)
        assert r.returncode == 0 and Path(r.stdout.strip()).stat().st_size > 0, r.stderr
        assert Path(r.stdout.strip()).name == f"{job_id}-best.pt"
        assert "sha256 verified against the job's manifest" in r.stderr
        assert "\r" not in r.stderr and "[#" not in r.stderr  # not a terminal: no progress bar
        code, out, shown = _run_with_tty_stderr([*TEACHER, "download", short, "--out", str(tmp_path / "dl2")],
                                                {**env, "TEACHER_TOKEN": token}, tmp_path)
        assert code == 0 and Path(out.strip()).stat().st_size > 0, shown
        assert "best.pt [" in shown and "100.0%" in shown and "sha256 verified" in shown, shown
        r = teacher("cancel", short, token=token)
        assert r.returncode == 1 and "409" in r.stderr
        r = teacher("submit", str(cfg_file), "--set", "optim.lr=-1", token=token)
        assert r.returncode == 2 and "optim.lr" in r.stderr
        assert teacher("status", job_id).returncode == 2  # no token
        assert teacher("status", job_id, token="tch_bogus").returncode == 2  # a bad token is bad input

        # A running job: the list shows its progress; `submit --wait` of a cancelled job exits 1
        long_cfg = copy.deepcopy(service_config)
        long_cfg["optim"]["epochs"] = 50
        cfg_file.write_text(yaml.safe_dump(long_cfg))
        waiter = subprocess.Popen([*TEACHER, "submit", str(cfg_file), "--wait"], env={**env, "TEACHER_TOKEN": token},
                                  cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            cancel_id = waiter.stdout.readline().strip()
            row = wait_until(lambda: next((line for line in teacher("status", token=token).stdout.splitlines()
                                           if line.startswith(cancel_id[:12]) and "ETA" in line), None),
                             120, "the running job's progress in the list")
            assert "running" in row and "epoch " in row and "/50" in row and "%" in row, row
            r = teacher("cancel", cancel_id[:12], token=token)
            assert r.returncode == 0 and r.stdout.startswith(cancel_id), r.stdout + r.stderr
            out, err = waiter.communicate(timeout=180)
        finally:
            if waiter.poll() is None:
                waiter.kill()
        assert waiter.returncode == 1 and "job cancelled" in err, (waiter.returncode, err[-2000:])

        # Ctrl-C with a job running: everything stops, the job is interrupted and resumable
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
