"""/api/v1/health: API, database, Redis and worker liveness. Public (no token) so that load
balancers can probe it; to them it reveals only component states. An admin's token (optional;
a missing or bad one is simply anonymous here, never a 401) also gets each worker: its queues,
liveness and the devices it reported (``checks.worker.workers``)."""
from __future__ import annotations

from typing import Any

from flask import request
from sqlalchemy import func, select, text

from api.extensions import services
from api.schemas import HealthSchema
from api.smorest import Blueprint
from common.auth import AuthError, authenticate
from common.devices import describe, stored
from common.store import WorkerBeat, utcnow

blp = Blueprint("health", __name__, url_prefix="/api/v1/health", description="Service health")


@blp.route("", methods=["GET"])
@blp.response(200, HealthSchema)
@blp.alt_response(503, schema=HealthSchema, description="the database or Redis is unreachable")
def health() -> Any:
    svc = services()
    checks: dict[str, dict[str, Any]] = {"api": {"ok": True}}
    try:
        with svc.sessions() as s:
            s.execute(text("SELECT 1"))
            newest = s.scalar(select(func.max(WorkerBeat.seen_at)))
            workers = _workers(s, svc.settings.worker_beat_s) if _is_admin(s) else None
        checks["database"] = {"ok": True}
        if newest is None:
            checks["worker"] = {"ok": False, "detail": "no worker has reported yet"}
        else:
            age = (utcnow() - newest).total_seconds()
            checks["worker"] = {"ok": WorkerBeat.is_alive(age, svc.settings.worker_beat_s), "last_seen_s": round(age, 1)}
        if workers is not None:
            checks["worker"]["workers"] = workers
    except Exception as exc:  # reported, not raised: this endpoint exists to describe failures
        checks["database"] = {"ok": False, "detail": type(exc).__name__}
        checks["worker"] = {"ok": False, "detail": "unknown (database down)"}
    try:
        svc.redis().ping()
        checks["redis"] = {"ok": True}
    except Exception as exc:
        checks["redis"] = {"ok": False, "detail": type(exc).__name__}
    if not (checks["database"]["ok"] and checks["redis"]["ok"]):
        return {"status": "down", "checks": checks}, 503
    return {"status": "ok" if checks["worker"]["ok"] else "degraded", "checks": checks}


def _is_admin(s: Any) -> bool:
    """Whether the request carries an admin's live token. Device details are for operators
    only: anonymous probes and ordinary users see component states."""
    header = request.headers.get("Authorization")
    if not header:
        return False
    try:
        return authenticate(s, header).is_admin
    except AuthError:
        return False


def _workers(s: Any, beat_s: float) -> list[dict[str, Any]]:
    now = utcnow()
    out = []
    for beat in s.scalars(select(WorkerBeat).order_by(WorkerBeat.name)):
        age = (now - beat.seen_at).total_seconds()
        devices = stored(beat.devices)
        out.append({"name": beat.name, "queues": [q for q in (beat.queues or "").split(",") if q],
                    "alive": WorkerBeat.is_alive(age, beat_s), "last_seen_s": round(age, 1),
                    "devices": devices.to_json() if devices else None,
                    "summary": describe(devices) if devices else "not reported"})
    return out
