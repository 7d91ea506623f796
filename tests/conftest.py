"""Every fixture of the suite: generated, learnable datasets on disk and small configs that train in
seconds on a CPU (nothing is downloaded); an in-process Flask app with a fake broker; real
processes (redis-server, stacks of gunicorn + Celery workers); PostgreSQL databases.
Helpers that are not fixtures live in tests/support/."""
from __future__ import annotations

import copy
import os
import subprocess
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from common.settings import Settings

from tests.support.api import FakeBroker, mint
from tests.support.openapi_check import check_response
from tests.support.procs import free_port, stop_process, wait_until
from tests.support.stack import Stack, make_stack
from tests.support.training import TINY_CONFIG


@pytest.fixture(scope="session")
def dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root (use as TEACHER_DATA_ROOT) holding ``synthetic/``: 12 classes, 60 train and
    15 val images per class, imagefolder layout plus ``manifest.csv`` (path,label,split,region)."""
    from worker.training.synthetic import SyntheticSpec, make_dataset

    root = tmp_path_factory.mktemp("datasets")
    make_dataset(root / "synthetic", SyntheticSpec())
    return root


@pytest.fixture
def tiny_config() -> dict[str, Any]:
    """A raw (unvalidated) config dict; ``data.root`` is ``synthetic`` under ``dataset_root``."""
    return copy.deepcopy(TINY_CONFIG)


@pytest.fixture
def runs_root(tmp_path: Path) -> Path:
    path = tmp_path / "runs"
    path.mkdir()
    return path


@pytest.fixture
def teacher_env(dataset_root: Path, runs_root: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment for running ``teacher`` in a subprocess (and in-process via monkeypatch)."""
    monkeypatch.setenv("TEACHER_DATA_ROOT", str(dataset_root))
    monkeypatch.setenv("TEACHER_RUNS_ROOT", str(runs_root))
    env = dict(os.environ)
    env.pop("TEACHER_FAULT", None)
    return env


PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"


@pytest.fixture
def pg_database() -> Iterator[str]:
    """The name of a fresh, uniquely named database on the local PostgreSQL (127.0.0.1:5432,
    trust auth), dropped afterwards; the test is skipped when there is no server."""
    import uuid

    from sqlalchemy import create_engine, text

    name = f"teacher_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 is not usable: {exc}")
    yield name
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def pg_database_url(pg_database: str) -> str:
    """The SQLAlchemy URL of :func:`pg_database`."""
    return f"{PG_SERVER}/{pg_database}"


# ----------------------------------------------------------------------- the API in-process
@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # POST /jobs checks the dataset a job names (api/precheck.py): a tiny one, 4 classes.
    from worker.training.synthetic import SyntheticSpec, make_dataset

    make_dataset(tmp_path / "data" / "synthetic", SyntheticSpec(num_classes=4, train_per_class=1, val_per_class=1))
    return Settings(
        database_url=f"sqlite:///{tmp_path / 'state' / 'teacher.db'}",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",  # nothing listens: no accidental broker
        jobs_root=tmp_path / "jobs", data_root=tmp_path / "data", torch_home=tmp_path / "torch",
        max_content_length=64 * 1024, queues=("default", "gpu-large"),
    )


@pytest.fixture
def broker() -> FakeBroker:
    return FakeBroker()


@pytest.fixture
def app(settings: Settings, broker: FakeBroker):  # type: ignore[no-untyped-def]
    from api import create_app

    app = create_app({"TEACHER_SETTINGS": settings, "TEACHER_ENQUEUE": broker, "TESTING": True})
    yield app
    app.extensions["teacher"].engine.dispose()


@pytest.fixture
def client(app):  # type: ignore[no-untyped-def]
    return app.test_client()



@pytest.fixture
def alice(app) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return mint(app, "alice")


@pytest.fixture
def bob(app) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return mint(app, "bob")


@pytest.fixture
def admin(app) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return mint(app, "root", admin=True)



# ----------------------------------------------------------------------- real processes
@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
         "--save", "", "--appendonly", "no", "--protected-mode", "yes"],
        stdout=(workdir / "redis.log").open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    import redis

    client = redis.Redis(port=port, socket_connect_timeout=1)
    wait_until(client.ping, 20, "redis-server")
    yield f"redis://127.0.0.1:{port}/0"
    stop_process(proc)



@pytest.fixture
def stack_factory(tmp_path: Path, redis_server: str, service_dataset_root: Path) -> Iterator[Callable[..., Stack]]:
    stacks: list[Stack] = []

    def factory(database_url: str | None = None, **extra_env: str) -> Stack:
        base = tmp_path / f"stack{len(stacks)}"
        base.mkdir()
        # A private Redis database number per stack: no messages leak between tests.
        db = 1 + len(stacks) + (abs(hash(tmp_path)) % 12)
        stack = make_stack(base, redis_server.rsplit("/", 1)[0] + f"/{db}", service_dataset_root,
                           database_url or f"sqlite:///{base / 'state' / 'teacher.db'}", **extra_env)
        import redis

        redis.Redis.from_url(stack.settings.redis_url).flushdb()
        stacks.append(stack)
        return stack

    yield factory
    for stack in stacks:
        stack.stop()


# ----------------------------------------------------------------------- data and configs
@pytest.fixture(scope="session")
def service_dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A smaller synthetic dataset than the shared `dataset_root` (4 classes, 64 train / 32 val
    images): the service tests run several trainings and must fit in minutes on 2 shared cores.
    Same generator, same layout (`synthetic/` imagefolder + manifest.csv)."""
    from worker.training.synthetic import SyntheticSpec, make_dataset

    root = tmp_path_factory.mktemp("service-data")
    make_dataset(root / "synthetic", SyntheticSpec(num_classes=4, train_per_class=16, val_per_class=8))
    return root


@pytest.fixture
def service_config(tiny_config: dict[str, Any]) -> dict[str, Any]:
    """The shared `tiny_config`, with small batches so an epoch has several steps to observe,
    cancel or kill in the middle of."""
    cfg = tiny_config
    cfg["optim"]["batch_size"] = 16
    cfg["runtime"]["log_interval"] = 1
    return cfg


@pytest.fixture
def doc(client) -> dict[str, Any]:
    r = client.get("/api/v1/openapi.json")
    assert r.status_code == 200
    return r.json


@pytest.fixture
def call(client, doc):
    """client.<method> that also checks every response against the OpenAPI document."""

    def _call(method: str, path: str, **kw: Any):
        r = getattr(client, method)(path, **kw)
        check_response(doc, method, path, r.status_code, r.content_type or "", r.get_json(silent=True))
        return r

    return _call
