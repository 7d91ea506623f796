"""``teacher demo`` (what ``make demo`` runs): the whole product on one machine, from nothing.

It generates the synthetic dataset if missing, starts the local stack (``teacher serve``: a
private Redis, the API under gunicorn, one CPU worker, the reconciler, a SQLite job store),
mints a token, submits ``configs/demo.yaml`` over HTTP, follows it to the end, downloads the
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


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise click.ClickException(f"the local stack exited with {proc.returncode} while starting")
        try:
            if requests.get(f"{url}/api/v1/health", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass  # not listening yet, or too busy starting to answer in time: ask again
        time.sleep(0.3)
    raise click.ClickException(f"the API at {url} was not healthy after {timeout:.0f}s")


@click.command("demo")
@click.option("--port", type=int, default=0, help="API port (default: a free one).")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=CONFIGS_DIR / "demo.yaml", show_default=True)
def demo(port: int, config_path: Path) -> None:
    """Run the demo job end to end on the local stack and print where its outputs are."""
    from common.settings import Settings
    from common.analysis.cli import write_analysis
    from common.serve import _free_port, _stop
    from common.service_cli import ApiClient, _wait
    from common.store.jobs import JobPaths

    dataset = data_root() / load_config_file(config_path)["data"]["root"]
    if not (dataset / "manifest.csv").exists():
        from worker.training.synthetic import make_dataset

        sizes = make_dataset(dataset)
        click.echo(f"demo: generated {sizes['train']} train / {sizes['val']} val images in {dataset}")

    settings = Settings.from_env()
    token = subprocess.run([sys.executable, "-m", "common.cli", "tokens", "create", "--user", "demo"],
                           check=True, capture_output=True, text=True).stdout.strip()
    port = port or _free_port()
    url = f"http://127.0.0.1:{port}"
    stack = subprocess.Popen([sys.executable, "-m", "common.cli", "serve", "--port", str(port)],
                             start_new_session=True)
    try:
        _wait_healthy(url, stack, timeout=120)
        api = ApiClient(url, token)
        body = {"config": "demo"} if config_path.resolve() == (CONFIGS_DIR / "demo.yaml").resolve() else None
        if body is None:
            import yaml

            body = yaml.safe_load(config_path.read_text())
        job = api.request("POST", "/jobs", json=body).json()
        click.echo(f"demo: submitted job {job['id']}; following it (the API is {url})")
        job = _wait(api, job["id"])
        if job["status"] != "succeeded":
            raise click.ClickException(f"the demo job ended {job['status']}: {job.get('failure_reason') or ''}")
        paths = JobPaths.of(settings.jobs_root, job["id"])
        # Over HTTP like any client: `teacher download` verifies the sha256 against the manifest.
        best = Path(subprocess.run(
            [sys.executable, "-m", "common.cli", "download", job["id"], "--checkpoint", "best",
             "--out", str(paths.root / "download"), "--url", url, "--token", token],
            check=True, capture_output=True, text=True).stdout.strip())
    finally:
        _stop(stack, timeout=settings.cancel_grace_s + 60)  # serve stops worker, API, Redis in order
    report, plots = write_analysis([paths.run], paths.run / "analysis")
    history = json.loads((paths.run / "history.json").read_text())
    last = history["epochs"][-1]
    click.echo(report.summary())
    click.echo(
        f"\ndemo: job {job['id']} succeeded: val top-1 {last['val']['top1']:.1f}% after {last['epoch']} epochs "
        f"(chance {100 / history['num_classes']:.1f}%)\n"
        f"  run directory:   {paths.run}\n"
        f"  best checkpoint: {best}\n"
        f"  report:          {paths.run / 'analysis' / 'report.json'} (verdict: {report.verdict})\n"
        f"  plots:           {', '.join(str(p) for p in sorted(plots.values()))}"
    )
    if report.verdict == "fail":
        sys.exit(1)
