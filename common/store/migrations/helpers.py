"""Helpers for revisions (importable: the versions/ files are loaded by path, not as a package)."""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


def missing_columns(table: str, *names: str) -> set[str]:
    """Which of ``names`` the table lacks, on the migration's connection."""
    present = {c["name"] for c in sa.inspect(op.get_bind()).get_columns(table)}
    return set(names) - present


def include_object(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    """What autogenerate compares: everything but the old numbered scheme's schema_version table
    (no model declares it; upgrade() drops it once it has adopted a store of that scheme)."""
    return not (type_ == "table" and name == "schema_version")
