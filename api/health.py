"""/api/v1/health: API, database, Redis and worker liveness. Public (no token) so that load
balancers can probe it; it reveals only component states."""
from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, text

from api.extensions import services
from api.schemas import HealthSchema
from api.smorest import Blueprint
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
        checks["database"] = {"ok": True}
        if newest is None:
            checks["worker"] = {"ok": False, "detail": "no worker has reported yet"}
        else:
            age = (utcnow() - newest).total_seconds()
            checks["worker"] = {"ok": WorkerBeat.is_alive(age, svc.settings.worker_beat_s), "last_seen_s": round(age, 1)}
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
