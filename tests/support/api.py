"""In-process API test helpers: a fake broker, tokens, a small job body, direct store edits."""
from __future__ import annotations

from typing import Any

from sqlalchemy import select

from common.store import Job, JobStatus, transaction
from common.store.jobs import lock_job


class FakeBroker:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, int]] = []

    def __call__(self, job_id: str, queue: str, priority: int) -> None:
        self.sent.append((job_id, queue, priority))



def mint(app, user: str, admin: bool = False) -> dict[str, str]:  # type: ignore[no-untyped-def]
    from common.auth import create_token
    from common.store import transaction

    with transaction(app.extensions["teacher"].sessions) as s:
        token = create_token(s, user, admin=admin)
    return {"Authorization": f"Bearer {token}"}



CFG: dict[str, Any] = {
    "name": "tiny",
    "model": {"arch": "resnet18"},
    "data": {"format": "imagefolder", "root": "synthetic", "image_size": 32},
    "optim": {"epochs": 1, "batch_size": 8, "lr": 0.01},
}



def submit(call, headers, body=None, **kw):
    return call("post", "/api/v1/jobs", json=CFG if body is None else body, headers=headers, **kw)


def set_status(app, job_id: str, status: JobStatus, **fields: Any) -> None:
    with transaction(app.extensions["teacher"].sessions) as s:
        job = lock_job(s, job_id)
        job.status = status.value
        for k, v in fields.items():
            setattr(job, k, v)


def new_job(app, client, headers, **body) -> str:  # type: ignore[no-untyped-def]
    r = client.post("/api/v1/jobs", json={**CFG, **body}, headers=headers)
    assert r.status_code == 202, r.json
    return r.json["id"]


def set_fields(app, job_id: str, **fields) -> None:  # type: ignore[no-untyped-def]
    with transaction(app.extensions["teacher"].sessions) as s:
        job = lock_job(s, job_id)
        for k, v in fields.items():
            setattr(job, k, v)


def get_job(app, job_id: str) -> Job:  # type: ignore[no-untyped-def]
    with app.extensions["teacher"].sessions() as s:
        return s.scalar(select(Job).where(Job.id == job_id))
