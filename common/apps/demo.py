"""``teacher demo`` (what ``make demo`` runs): the whole product on one machine, from nothing.

It generates the synthetic dataset if missing, starts the local stack (``teacher serve``: a
private Redis, the API under gunicorn, one CPU worker, the reconciler, a SQLite job store),
mints a token (revoked when the demo ends), submits ``configs/demo.yaml`` over HTTP, follows it to the end, downloads the
best checkpoint, runs the integrity report and plots on the job's run directory, prints where
everything is, and stops the stack. Exit 0 only when the job succeeded and no check failed.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import click

from common.config import CONFIGS_DIR, load_config_file
from common.settings import data_root


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float, log_file: Path) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = "".join(log_file.read_text(errors="replace").splitlines(keepends=True)[-5:])
            raise click.ClickException(f"the local stack exited with {proc.returncode} while starting; "
                                       f"the end of {_show(log_file)}:\n{tail}")
        try:
            if requests.get(f"{url}/api/v1/health", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass  # not listening yet, or too busy starting to answer in time: ask again
        time.sleep(0.3)
    raise click.ClickException(f"the API at {url} was not healthy after {timeout:.0f}s (logs: {_show(log_file.parent)}/)")


def _show(path: Path) -> str:
    """A path as the user would type it: relative to the current directory when inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _teacher(*args: str) -> str:
    """Run a `teacher` subcommand as its own process, the way a user would; its stdout."""
    done = subprocess.run([sys.executable, "-m", "common.apps.cli", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise click.ClickException(f"`teacher {args[0]}` failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return done.stdout


def _say(message: str) -> None:
    click.echo(f"demo: {message}")


@click.command("demo")
@click.option("--port", type=int, default=0, help="API port (default: a free one).")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=CONFIGS_DIR / "demo.yaml", show_default=True)
def demo(port: int, config_path: Path) -> None:
    """Run the demo job end to end on the local stack and print where its outputs are."""
    from common.analysis.service import write_analysis
    from common.apps.serve import LOG_DIR_NAME, _free_port, _stop
    from common.apps.service_cli import ApiClient, _wait
    from common.settings import Settings
    from common.store.jobs import JobPaths

    settings = Settings.from_env()
    dataset = data_root() / load_config_file(config_path)["data"]["root"]
    if (dataset / "manifest.csv").exists():
        _say(f"dataset {_show(dataset)} (already there)")
    else:
        from worker.training.synthetic import make_dataset

        sizes = make_dataset(dataset)
        _say(f"generated a synthetic dataset: {sizes['train']} train / {sizes['val']} val images in {_show(dataset)}")

    logs = settings.state_root / LOG_DIR_NAME
    logs.mkdir(parents=True, exist_ok=True)
    token = _teacher("tokens", "create", "--user", "demo").strip()
    port = port or _free_port()
    url = f"http://127.0.0.1:{port}"
    _say(f"starting the local stack (private Redis, API, one CPU worker, SQLite job store); "
         f"service logs in {_show(logs)}/")
    with (logs / "serve.log").open("ab") as serve_log:
        stack = subprocess.Popen([sys.executable, "-m", "common.apps.cli", "serve", "--port", str(port)],
                                 stdin=subprocess.DEVNULL, stdout=serve_log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    try:
        _wait_healthy(url, stack, timeout=120, log_file=logs / "serve.log")
        _say(f"API ready at {url}/api/v1")
        api = ApiClient(url, token)
        body = {"config": "demo"} if config_path.resolve() == (CONFIGS_DIR / "demo.yaml").resolve() else None
        if body is None:
            import yaml

            body = yaml.safe_load(config_path.read_text())
        job = api.request("POST", "/jobs", json=body).json()
        _say(f"submitted {_show(config_path)} as job {job['id']}; following it")
        job = _wait(api, job["id"])
        if job["status"] != "succeeded":
            raise click.ClickException(f"the demo job ended {job['status']}: {job.get('failure_reason') or ''} "
                                       f"(worker log: {_show(logs / 'worker.log')})")
        paths = JobPaths.of(settings.jobs_root, job["id"])
        # Over HTTP like any client: `teacher download` verifies the sha256 against the manifest.
        best = Path(_teacher("download", job["id"], "--checkpoint", "best", "--out", str(paths.root / "download"),
                             "--url", url, "--token", token).strip().splitlines()[-1])
        _say(f"downloaded the best checkpoint over HTTP (sha256 verified against the manifest)")
    finally:
        _say("stopping the local stack")
        _stop(stack, timeout=settings.cancel_grace_s + 60)  # serve stops worker, API, Redis in order
        _teacher("tokens", "revoke", "--token", token)  # the demo's token dies with the demo
    report, plots = write_analysis([paths.run], paths.run / "analysis")
    history = json.loads((paths.run / "history.json").read_text())
    last = history["epochs"][-1]
    click.echo(report.summary())
    click.echo(
        f"\ndemo: job {job['id']} succeeded: val top-1 {last['val']['top1']:.1f}% after {last['epoch']} epochs "
        f"(chance {100 / history['num_classes']:.1f}%)\n"
        f"  run directory:   {_show(paths.run)}\n"
        f"  best checkpoint: {_show(best)}\n"
        f"  report:          {_show(paths.run / 'analysis' / 'report.json')} (verdict: {report.verdict})\n"
        f"  plots:           {', '.join(_show(p) for p in sorted(plots.values()))}\n"
        f"  service logs:    {_show(logs)}/"
    )
    if report.verdict == "fail":
        sys.exit(1)
