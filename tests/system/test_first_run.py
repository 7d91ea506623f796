"""A newcomer's first run, exactly as the README says: a fresh `git clone`, no `TEACHER_*`
variable set, then `make demo`; and `make run` plus the README's own token and curl lines.

These run the product the way a person does: the default (relative) settings, the Makefile, the
working directory of a clone. Every other service test sets absolute temp roots, which is how
`make demo` could be broken while the rest of the suite was green.

The clone gets a light virtual environment of its own (`.venv` with a `.pth` file that puts the
clone first and this project's installed packages after it) instead of a 6 GB install per
test; the Makefile's real install path from a fresh clone is what `.ci/run` itself exercises on
every CI run (a fresh clone, `make test`, which runs `make install` first).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def fresh_clone(dest: Path) -> Path:
    """`git clone` of this repository; uncommitted changes of the working tree are laid over it
    so that the test checks the code on disk (in CI the two are the same)."""
    clone = dest / "clone"
    _git("clone", "-q", str(ROOT), str(clone), cwd=dest)
    for rel in ([] if os.environ.get("FIRST_RUN_COMMITTED_ONLY") else
                _git("ls-files", "-m", "-o", "--exclude-standard", "-z").split("\0")):
        if rel and (ROOT / rel).is_file():
            (clone / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, clone / rel)
    for rel in _git("ls-files", "-d", "-z").split("\0"):
        if rel:
            (clone / rel).unlink(missing_ok=True)
    _light_venv(clone)
    return clone


def _light_venv(clone: Path) -> None:
    venv = clone / ".venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = Path(sysconfig.get_paths(vars={"base": str(venv), "platbase": str(venv)})["purelib"])
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    # The clone's code first (what an editable install does), then this venv's packages.
    (purelib / "_teacher_clone.pth").write_text("\n".join([str(clone), *sorted(ours)]) + "\n")
    script = venv / "bin" / "teacher"
    script.write_text(f"#!{venv / 'bin' / 'python'}\nfrom common.apps.cli import main\nmain()\n")
    script.chmod(0o755)
    # The Makefile's "installed" mark must be newer than pyproject.toml.
    earlier = time.time() - 60
    os.utime(clone / "pyproject.toml", (earlier, earlier))
    (venv / ".installed").touch()


def user_env(clone: Path) -> dict[str, str]:
    """A newcomer's shell: no TEACHER_* variable; `. .venv/bin/activate` where the README says so."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TEACHER_")}


def _activated(env: dict[str, str], clone: Path) -> dict[str, str]:
    out = dict(env, VIRTUAL_ENV=str(clone / ".venv"))
    out["PATH"] = f"{clone / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return out


def readme_block(after: str) -> list[str]:
    """The command lines of the first code block after ``after`` in README.md, comments dropped."""
    text = (ROOT / "README.md").read_text()
    block = text.split(after, 1)[1].split("```", 2)[1]
    return [re.sub(r"\s+#\s.*$", "", line).strip() for line in block.strip().splitlines() if line.strip()]


def _manifest_sha(run: Path, name: str) -> str:
    manifest = json.loads((run / "checkpoints" / "manifest.json").read_text())
    return next(e["sha256"] for e in manifest["checkpoints"] if e["name"] == name)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


needs_redis = pytest.mark.skipif(shutil.which("redis-server") is None,
                                 reason="redis-server is not installed (.ci/run installs it)")


@needs_redis
def test_make_demo_in_a_fresh_clone_with_default_settings(tmp_path):
    clone = fresh_clone(tmp_path)
    env = user_env(clone)
    try:
        proc = subprocess.run(["make", "demo"], cwd=clone, env=env, capture_output=True, text=True, timeout=1500)
    finally:
        _kill_leftovers(_serve_pids(clone))  # only if the demo died without stopping its stack
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]

    jobs = list((clone / "volumes" / "jobs").iterdir())
    assert len(jobs) == 1, jobs
    run = jobs[0] / "run"
    best = run / "checkpoints" / "best.pt"
    assert best.is_file()
    downloaded = list((jobs[0] / "download").glob("*best.pt"))
    assert len(downloaded) == 1 and _sha256(downloaded[0]) == _manifest_sha(run, "best.pt")
    assert {"loss.png", "accuracy.png"} <= {p.name for p in (run / "analysis").glob("*.png")}
    assert json.loads((run / "analysis" / "report.json").read_text())["verdict"] == "pass"

    # A short, readable account: no service banners on the terminal; they are in log files.
    assert "celery@" not in out and "Booting worker" not in out and "Redis is now ready" not in out
    assert len(out.splitlines()) < 60, out
    logs = clone / "volumes" / "state" / "logs"
    for name in ("redis", "worker", "api", "serve"):
        assert (logs / f"{name}.log").stat().st_size > 0, name
    assert (logs / "reconciler.log").is_file()
    assert "volumes/state/logs/" in out
    assert "celery@" in (logs / "worker.log").read_text()
    # The demo's token is revoked when the demo ends.
    tokens = subprocess.run([str(clone / ".venv" / "bin" / "teacher"), "tokens", "list"], cwd=clone, env=env,
                            capture_output=True, text=True, timeout=120)
    assert tokens.returncode == 0, tokens.stderr
    demo_rows = [line for line in tokens.stdout.splitlines() if "\tdemo\t" in line]
    assert demo_rows and all("revoked" in line for line in demo_rows), tokens.stdout


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_group(proc: subprocess.Popen, clone: Path, timeout: float = 120) -> None:
    state = _serve_pids(clone)  # read first: serve removes the file when it stops
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C, as a person stops `make run`
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    _kill_leftovers(state)


def _serve_pids(clone: Path) -> list[int]:
    try:
        state = json.loads((clone / "volumes" / "state" / "serve.json").read_text())
    except (OSError, ValueError):
        return []
    return [state["pid"], *state.get("pids", {}).values()]


def _kill_leftovers(pids: list[int]) -> None:
    """The stack's services run in sessions of their own: a hung shutdown must not leave them."""
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


@needs_redis
def test_make_run_then_the_readmes_token_and_curl_lines(tmp_path):
    lines = readme_block("Your first job on the local stack, by hand:")
    assert lines[0] == ". .venv/bin/activate"
    assert lines[1].startswith("export TEACHER_URL=http://127.0.0.1:8000 TEACHER_TOKEN=$(teacher tokens create")
    submit = next(line for line in lines if "--data-binary @configs/demo.yaml" in line)
    poll = next(line for line in lines if line.endswith("/api/v1/jobs/JOB_ID"))
    fetch = next(line for line in lines if "-o best.pt" in line)
    setup = lines[: lines.index(submit)]

    clone = fresh_clone(tmp_path)
    env = user_env(clone)
    port = 8000
    make_args = ["make", "run"]
    if not _port_free(port):  # something else on this machine has :8000; same commands, another port
        port = _free_port()
        make_args.append(f"SERVE_ARGS=--port {port}")
        setup = [line.replace("127.0.0.1:8000", f"127.0.0.1:{port}") for line in setup]
    log = (tmp_path / "make-run.log").open("wb")
    stack = subprocess.Popen(make_args, cwd=clone, env=env, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
    try:
        state_file = clone / "volumes" / "state" / "serve.json"
        deadline = time.monotonic() + 180
        while not state_file.exists():
            assert stack.poll() is None, (tmp_path / "make-run.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "make run did not come up"
            time.sleep(0.5)

        def shell(*commands: str, timeout: float = 300) -> subprocess.CompletedProcess:
            script = "set -e\n" + "\n".join(setup + list(commands)) + "\n"
            return subprocess.run(["bash", "-c", script], cwd=clone, env=env, capture_output=True, text=True,
                                  timeout=timeout)

        # The README's lines as written, up to the submission; the doctor among them must pass.
        first = shell(submit)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        assert "doctor: no problems found" in first.stdout, first.stdout
        job = json.loads(first.stdout.strip().splitlines()[-1])
        assert job["status"] in ("queued", "running"), job
        # A new shell mints a new token each time (the export line); that is how a user would
        # repeat the lines too, so the job's owner `me` may read it with any of them.
        deadline = time.monotonic() + 600
        while True:
            polled = shell(poll.replace("JOB_ID", job["id"]))
            assert polled.returncode == 0, polled.stderr
            status = json.loads(polled.stdout.strip().splitlines()[-1])
            if status["status"] in ("succeeded", "failed", "cancelled"):
                break
            assert time.monotonic() < deadline, status
            time.sleep(2)
        assert status["status"] == "succeeded", status
        got = shell(fetch.replace("JOB_ID", job["id"]))
        assert got.returncode == 0, got.stderr
        run = clone / "volumes" / "jobs" / job["id"] / "run"
        assert _sha256(clone / "best.pt") == _manifest_sha(run, "best.pt")
    finally:
        _stop_group(stack, clone)
        log.close()
    assert not (clone / "volumes" / "state" / "serve.json").exists()  # removed when the stack stops
