"""Alembic migrations of the job store (env.py, versions/). Configured from code, not from an
alembic.ini: common.store.db.alembic_config(). A new revision::

    .venv/bin/python -m common.store.migrations revision -m "jobs.foo: why" --autogenerate

(against a store at head; review the generated file, and write SQLite-safe operations: the
environment renders batch operations there).
"""
