"""The durable job store (SQLAlchemy 2): models, engine, migrations and job operations."""
from common.store.db import (
    DEFAULT_DATABASE_URL,
    LATEST_VERSION,
    current_version,
    database_url,
    make_engine,
    make_sessionmaker,
    transaction,
    upgrade,
)
from common.store.models import FINISHED, Base, IdempotencyKey, Job, JobStatus, Token, User, WorkerBeat, utcnow

__all__ = [
    "DEFAULT_DATABASE_URL", "LATEST_VERSION", "current_version", "database_url", "make_engine",
    "make_sessionmaker", "transaction", "upgrade", "FINISHED", "Base", "IdempotencyKey", "Job",
    "JobStatus", "Token", "User", "WorkerBeat", "utcnow",
]
