"""End to end with real processes: redis-server, a Celery worker running the real `teacher
train`, the API under gunicorn over HTTP, SQLite or PostgreSQL as the store."""
from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import pytest

from tests.support.procs import wait_until
from tests.support.stack import Stack

pytestmark = pytest.mark.slow


def evaluate_checkpoint(path: Path, dataset_root: Path) -> tuple[float, int]:
    """Val top-1 (percent) of a downloaded checkpoint, with plain torch/torchvision."""
    import torch
    import torchvision
    from torchvision import datasets, transforms as T

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    cfg, state = ckpt["config"], ckpt["model"]
    num_classes = state["fc.weight"].shape[0]
    model = torchvision.models.get_model(cfg["model"]["arch"], weights=None, num_classes=num_classes)
    model.load_state_dict(state)
    model.eval()
    size = cfg["data"]["image_size"]
    tf = T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor(),
                    T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    ds = datasets.ImageFolder(str(dataset_root / cfg["data"]["root"] / cfg["data"]["val_split"]), tf)
    correct = 0
    with torch.no_grad():
        for images, labels in torch.utils.data.DataLoader(ds, batch_size=128):
            correct += int((model(images).argmax(1) == labels).sum())
    return 100.0 * correct / len(ds), len(ds)


def download(stack: Stack, job_id: str, name: str, out: Path) -> Path:
    r = stack.get(f"/api/v1/jobs/{job_id}/checkpoints/{name}")
    assert r.status_code == 200, r.text
    assert int(r.headers["Content-Length"]) == len(r.content)
    out.write_bytes(r.content)
    return out


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_submit_train_download_and_verify(request, store, stack_factory, service_config, service_dataset_root, tmp_path):
    url = request.getfixturevalue("pg_database_url") if store == "postgres" else None
    stack = stack_factory(url)
    stack.start_api()
    stack.headers = stack.token("alice")

    cfg = copy.deepcopy(service_config)
    cfg["optim"]["epochs"] = 1  # the fault tests cover multi-epoch histories
    r = stack.post("/api/v1/jobs", json=cfg, headers={"Idempotency-Key": "e2e-1"})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    if store == "postgres":
        # Redis loses its data before any worker saw the message: the store still has the job,
        # and the reconciler re-sends it (once the publish grace period has passed).
        import redis

        redis.Redis.from_url(stack.settings.redis_url).flushdb()
        wait_until(lambda: job_id in stack.reconcile()["lost"], 30, "the reconciler to re-send the lost job")
        assert stack.reconcile()["lost"] == []  # the message is back: no duplicate
    stack.start_worker()
    chained = None
    if store == "sqlite":  # `init_from` chaining: waits for the first job, then starts from its best
        child_cfg = {**copy.deepcopy(service_config), "name": "regional",
                     "optim": {**service_config["optim"], "epochs": 1},
                     "init_from": {"job": job_id, "checkpoint": "best"}}
        r2 = stack.post("/api/v1/jobs", json=child_cfg)
        assert r2.status_code == 202 and r2.json()["status"] == "waiting", r2.text
        chained = r2.json()["id"]

    seen_progress = wait_until(lambda: (stack.job(job_id).get("progress") or {}).get("step"), 180, "live progress")
    assert seen_progress > 0
    job = stack.wait_status(job_id, {"succeeded", "failed"}, timeout=300)
    assert job["status"] == "succeeded", (job["failure_reason"], stack.logs())
    assert job["attempts"] == 1 and job["exit_code"] == 0 and job["finished_at"]
    assert job["progress"]["epoch"] == job["progress"]["epochs"] == cfg["optim"]["epochs"]

    history = stack.get(f"/api/v1/jobs/{job_id}/metrics").json()
    assert [e["epoch"] for e in history["epochs"]] == list(range(1, cfg["optim"]["epochs"] + 1))
    ckpts = {c["name"]: c for c in stack.get(f"/api/v1/jobs/{job_id}/checkpoints").json()["checkpoints"]}
    best = ckpts["best.pt"]
    path = download(stack, job_id, "best", tmp_path / "best.pt")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == best["sha256"]
    top1, n = evaluate_checkpoint(path, service_dataset_root)
    recorded = next(e for e in history["epochs"] if e["epoch"] == best["epoch"])["val"]
    assert n == recorded["samples"]
    assert top1 == pytest.approx(recorded["top1"], abs=1e-6), (top1, recorded)

    # The export the trainer wrote at the end: model.json describes the best epoch, model.pt matches it.
    export = stack.get(f"/api/v1/jobs/{job_id}/export")
    assert export.status_code == 200, export.text
    meta = export.json()
    assert meta["epoch"] == best["epoch"] and meta["source"]["sha256"] == best["sha256"]
    weights = stack.get(f"/api/v1/jobs/{job_id}/export/model.pt")
    assert weights.status_code == 200 and hashlib.sha256(weights.content).hexdigest() == meta["sha256"]

    logs = stack.get(f"/api/v1/jobs/{job_id}/logs", params={"tail": 50}).json()
    n_epochs = cfg["optim"]["epochs"]
    assert any(f"Epoch {n_epochs}/{n_epochs} [Val]" in line for line in logs["lines"]), logs
    # follow mode on a finished job: replays the tail and ends
    sse = stack.get(f"/api/v1/jobs/{job_id}/logs", params={"tail": 5, "follow": "true"})
    assert sse.headers["Content-Type"].startswith("text/event-stream") and sse.text.endswith("event: end\ndata: succeeded\n\n")
    # duplicate delivery of a finished job does nothing
    from worker.celery_app import publish

    publish(stack.settings, job_id, "default", 5)
    health = stack.get("/api/v1/health").json()
    assert health["status"] == "ok", health
    metrics = stack.get("/metrics").text
    assert 'teacher_jobs{status="succeeded"}' in metrics

    if chained:
        child = stack.wait_status(chained, {"succeeded", "failed"}, timeout=240)
        assert child["status"] == "succeeded", (child["failure_reason"], stack.logs())
        assert child["config"]["init_from"] == f"{job_id}/run/checkpoints/best.pt"
        assert child["started_at"] >= job["finished_at"]
    assert stack.job(job_id)["attempts"] == 1  # the duplicate message did not start it again
