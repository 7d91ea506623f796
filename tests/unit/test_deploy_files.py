"""The deployment files keep their safety properties: docker-compose.yml is parsed with
yaml.safe_load and the Dockerfile with a small line parser, so an edit that drops one (a Redis
port on the host, AOF, noeviction, the password, the GPU reservation, a health check, the grace
period...) fails here instead of in production. No Docker engine is needed."""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERIGNORE = ROOT / ".dockerignore"
PYPROJECT = ROOT / "pyproject.toml"

TEACHER_SERVICES = ("migrate", "api", "worker", "reconciler")
LONG_RUNNING = ("redis", "postgres", "api", "worker", "reconciler", "flower")
VAR_REF = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)")  # ${VAR...}, not the escaped $${VAR}
BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|build-essential|make|clang|cmake|python3?-dev|libc6-dev)\b")


# ----------------------------------------------------------------------------- parsing helpers
@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def command_text(svc: dict[str, Any]) -> str:
    cmd = svc.get("command", "")
    return " ".join(cmd) if isinstance(cmd, list) else str(cmd)


def command_argv(svc: dict[str, Any]) -> list[str]:
    cmd = svc.get("command", [])
    return list(cmd) if isinstance(cmd, list) else shlex.split(cmd)


def healthcheck_text(svc: dict[str, Any]) -> str:
    test = svc.get("healthcheck", {}).get("test", "")
    return " ".join(test) if isinstance(test, list) else str(test)


def env_of(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def seconds(value: Any) -> float:
    """A compose duration ("90s", "2m30s", "1h") or a plain number of seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"unparseable duration {value!r}"
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}
    return sum(float(n) * scale[u] for n, u in parts)


def default_of(value: str) -> str:
    """`${VAR:-default}` -> default; a literal stays as it is."""
    m = re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^}]*)\}", value.strip())
    return m.group(1) if m else value


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """Instructions per build stage as (KEYWORD, arguments), continuation lines joined."""
    stages: list[list[tuple[str, str]]] = []
    logical, buf = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stages.append([])
        assert stages, f"instruction before FROM: {line}"
        stages[-1].append((keyword, args.strip()))
    return stages


@pytest.fixture(scope="module")
def final_stage() -> list[tuple[str, str]]:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "the Dockerfile must be multi-stage (build tools stay in the build stage)"
    return stages[-1]


def dockerfile_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in stage:
        if keyword == "ENV":
            for token in shlex.split(args):
                if "=" in token:
                    k, v = token.split("=", 1)
                    env[k] = v
    return env


# ----------------------------------------------------------------------------- redis
def test_redis_has_no_host_port(services: dict[str, dict[str, Any]]) -> None:
    assert "ports" not in services["redis"], "Redis must not be published on the host"
    assert services["redis"].get("network_mode") != "host"


def test_redis_aof_everysec_and_noeviction(services: dict[str, dict[str, Any]]) -> None:
    argv = shlex.split(command_text(services["redis"]))
    pairs = {argv[i]: argv[i + 1] for i in range(len(argv) - 1) if argv[i].startswith("--")}
    assert pairs.get("--appendonly") == "yes"
    assert pairs.get("--appendfsync") == "everysec"
    assert pairs.get("--maxmemory-policy") == "noeviction"


def test_redis_requires_a_password_from_the_environment(services: dict[str, dict[str, Any]]) -> None:
    redis = services["redis"]
    argv = shlex.split(command_text(redis))
    assert "--requirepass" in argv
    password = argv[argv.index("--requirepass") + 1]
    assert password == "$$REDIS_PASSWORD", "the password comes from the environment, never a literal"
    # ${VAR:?message}: compose refuses to start without the secret
    assert env_of(redis)["REDIS_PASSWORD"].startswith("${REDIS_PASSWORD:?")


def test_redis_has_a_data_volume(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    mounts = [v.split(":") for v in services["redis"]["volumes"]]
    named = [m[0] for m in mounts if len(m) >= 2 and m[1] == "/data"]
    assert named and named[0] in (compose.get("volumes") or {}), "Redis /data must be a named volume"


def test_every_redis_url_carries_the_password(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    urls = re.findall(r"redis://[^\s\"']+", COMPOSE.read_text())
    assert urls
    for url in urls:
        assert url.startswith("redis://:${REDIS_PASSWORD:?"), f"Redis URL without the password: {url}"
    for name in TEACHER_SERVICES:
        assert env_of(services[name])["TEACHER_REDIS_URL"].startswith("redis://:${REDIS_PASSWORD:?"), name


# ----------------------------------------------------------------------------- health and restarts
def test_health_checks(services: dict[str, dict[str, Any]]) -> None:
    redis = healthcheck_text(services["redis"])
    assert "redis-cli" in redis and "REDIS_PASSWORD" in redis and "PONG" in redis
    api = healthcheck_text(services["api"])
    assert "/api/v1/health" in api and "8000" in api
    assert "pg_isready" in healthcheck_text(services["postgres"])


def test_restart_policies(services: dict[str, dict[str, Any]]) -> None:
    for name in LONG_RUNNING:
        assert services[name].get("restart") == "unless-stopped", name
    assert services["migrate"].get("restart") in ("no", None), "a one-shot must not restart"


def test_depends_on_conditions(services: dict[str, dict[str, Any]]) -> None:
    for name in ("api", "worker", "reconciler"):
        deps = services[name]["depends_on"]
        assert deps["redis"]["condition"] == "service_healthy", name
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["flower"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert command_argv(services["migrate"]) == ["teacher", "db", "upgrade"]


# ----------------------------------------------------------------------------- api
def test_api_runs_gunicorn_on_a_configurable_host_port(services: dict[str, dict[str, Any]]) -> None:
    api = services["api"]
    argv = command_argv(api)
    assert argv[:2] == ["gunicorn", "api:create_app()"] and "0.0.0.0:8000" in argv
    (port,) = api["ports"]
    assert re.fullmatch(r"(\$\{[A-Z_]+:-[0-9.]+\}:)?\$\{TEACHER_API_PORT:-\d+\}:8000", port), port


def test_only_api_and_flower_publish_ports(services: dict[str, dict[str, Any]]) -> None:
    published = {name for name, svc in services.items() if svc.get("ports")}
    assert published == {"api", "flower"}
    assert all(p.startswith("127.0.0.1:") for p in services["flower"]["ports"]), "Flower stays on loopback"


# ----------------------------------------------------------------------------- worker
def test_worker_runs_one_job_at_a_time(services: dict[str, dict[str, Any]]) -> None:
    argv = command_argv(services["worker"])
    assert argv[:4] == ["celery", "-A", "worker.celery_app", "worker"]
    assert argv[argv.index("--concurrency") + 1] == "1"
    assert "-Q" in argv
    # The solo pool runs the supervisor in the process that receives SIGTERM; see the comment
    # in docker-compose.yml and test_worker_shutdown_is_the_supervisors_graceful_requeue.
    assert argv[argv.index("--pool") + 1] == "solo"


def test_worker_reserves_a_gpu(services: dict[str, dict[str, Any]]) -> None:
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)


def test_worker_shutdown_is_the_supervisors_graceful_requeue(services: dict[str, dict[str, Any]]) -> None:
    """On SIGTERM the supervisor stops the training child (SIGKILL after TEACHER_CANCEL_GRACE_S),
    records the job `interrupted` and re-queues it. Docker must not SIGKILL the worker before
    that: stop_grace_period > the worker's soft shutdown (the child's grace) plus a margin.
    REMAP_SIGTERM=SIGQUIT would turn `docker compose stop` into Celery's cold shutdown, which
    cancels the running task and fails the job (solo: NotImplementedError; prefork: SystemExit)."""
    worker = services["worker"]
    env = env_of(worker)
    soft = float(default_of(env["TEACHER_CANCEL_GRACE_S"]))
    grace = seconds(worker["stop_grace_period"])
    assert grace >= soft + 30, f"stop_grace_period {grace}s must exceed the child's {soft}s grace by a margin"
    assert worker.get("stop_signal", "SIGTERM") == "SIGTERM"
    assert env.get("REMAP_SIGTERM", "") != "SIGQUIT"
    assert worker.get("init") is True, "tini as PID 1 forwards SIGTERM and reaps zombies"


# ----------------------------------------------------------------------------- shared settings
def test_teacher_services_share_volumes_and_settings(services: dict[str, dict[str, Any]]) -> None:
    for name in TEACHER_SERVICES:
        svc = services[name]
        targets = {v.split(":")[1] for v in svc["volumes"]}
        assert {"/data/datasets", "/data/jobs", "/data/state", "/data/torch"} <= targets, name
        assert all(v.startswith("./volumes/") for v in svc["volumes"]), name
        env = env_of(svc)
        assert env["TORCH_HOME"] == "/data/torch" and env["TEACHER_JOBS_ROOT"] == "/data/jobs", name
        assert "/data/state/" in env["TEACHER_DATABASE_URL"], name


def test_reconciler_runs(services: dict[str, dict[str, Any]]) -> None:
    argv = command_argv(services["reconciler"])
    assert argv == ["python", "-m", "worker.reconciler"] or argv[:4] == ["celery", "-A", "worker.celery_app", "beat"]


def test_optional_profiles(services: dict[str, dict[str, Any]]) -> None:
    assert services["postgres"]["profiles"] == ["postgres"]
    assert services["postgres"]["image"].startswith("postgres:16")
    assert "POSTGRES_PASSWORD" in env_of(services["postgres"])["POSTGRES_PASSWORD"]
    assert services["flower"]["profiles"] == ["flower"]
    flower = command_text(services["flower"])
    assert "FLOWER_BASIC_AUTH" in flower and "exit 1" in flower, "Flower must refuse to start without basic auth"


def strings_in(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in strings_in(k) + strings_in(v)]
    if isinstance(node, list):
        return [s for v in node for s in strings_in(v)]
    return [node] if isinstance(node, str) else []


def test_every_compose_variable_is_documented_in_env_example(compose: dict[str, Any]) -> None:
    used = {name for text in strings_in(compose) for name in VAR_REF.findall(text)}  # comments excluded
    documented = set(re.findall(r"^#?\s*([A-Z_][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.M))
    assert used, "no ${VAR} found: the parser is broken"
    assert not used - documented, f"undocumented in .env.example: {sorted(used - documented)}"


def test_env_example_has_placeholders_only() -> None:
    values = dict(re.findall(r"^([A-Z_][A-Z0-9_]*)=(.*)$", ENV_EXAMPLE.read_text(), re.M))
    for key in ("REDIS_PASSWORD", "POSTGRES_PASSWORD", "FLOWER_PASSWORD"):
        assert values[key].startswith("change-me"), key
    lines = ENV_EXAMPLE.read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^[A-Z_][A-Z0-9_]*=", line):
            assert i > 0 and lines[i - 1].startswith("#"), f"{line.split('=')[0]} has no comment line"


# ----------------------------------------------------------------------------- Dockerfile
def test_dockerfile_final_stage_is_slim_python_311_non_root(final_stage: list[tuple[str, str]]) -> None:
    assert final_stage[0][1].split()[0] == "python:3.11-slim"
    users = [args for keyword, args in final_stage if keyword == "USER"]
    assert users, "the final stage must set USER"
    assert users[-1] not in ("root", "0", "0:0")
    assert users[-1] == "teacher"
    useradd = " ".join(args for keyword, args in final_stage if keyword == "RUN")
    assert re.search(r"useradd .*--uid \$\{TEACHER_UID\}", useradd)
    assert dict(re.findall(r"ARG (\w+)=(\S+)", "\n".join(f"{k} {a}" for k, a in final_stage)))["TEACHER_UID"] != "0"


def test_dockerfile_final_stage_has_no_build_tools_or_pip_cache(final_stage: list[tuple[str, str]]) -> None:
    for keyword, args in final_stage:
        if keyword == "RUN":
            assert not BUILD_TOOLS.search(args), f"build tools in the final stage: {args}"
            assert "pip install" not in args or "--no-cache-dir" in args, args
    stages = dockerfile_stages()
    assert any(BUILD_TOOLS.search(a) for k, a in stages[0] if k == "RUN"), "the build stage is where tools belong"
    copies = [a for k, a in final_stage if k == "COPY" and "--from=" in a]
    assert copies, "the final stage copies the installed environment from the build stage"


def test_dockerfile_installs_the_project_from_pyproject(final_stage: list[tuple[str, str]]) -> None:
    text = DOCKERFILE.read_text()
    installs = [a for stage in dockerfile_stages() for k, a in stage if k == "RUN" and "pip install" in a]
    assert any("--no-cache-dir" in a and "'.[service]'" in a for a in installs), installs
    assert "COPY pyproject.toml" in text
    pins = dict(re.findall(r'"(torch|torchvision)==([^"]+)"', PYPROJECT.read_text()))
    assert set(pins) == {"torch", "torchvision"}, "pyproject must pin torch and torchvision"
    # The only torch the image gets is pyproject's: no second pin or index that could disagree.
    instructions = " ".join(a for stage in dockerfile_stages() for _, a in stage)  # comments excluded
    assert not re.search(r"\btorch(vision)?\s*[=<>~!]=", instructions), "the Dockerfile must not pin torch itself"
    assert "download.pytorch.org" not in instructions and "index-url" not in instructions


def test_dockerfile_environment_and_healthcheck(final_stage: list[tuple[str, str]]) -> None:
    env = dockerfile_env(final_stage)
    assert env.get("PYTHONUNBUFFERED") == "1"
    assert env.get("TORCH_HOME") == "/data/torch"
    assert env.get("TEACHER_DATA_ROOT", "").startswith("/data/")
    assert env.get("TEACHER_JOBS_ROOT", "").startswith("/data/")
    assert env.get("TEACHER_DATABASE_URL", "").startswith("sqlite:////data/")
    checks = [a for k, a in final_stage if k == "HEALTHCHECK"]
    assert len(checks) == 1 and "/api/v1/health" in checks[0] and "CMD" in checks[0]
    cmd = [a for k, a in final_stage if k == "CMD"]
    assert cmd and "gunicorn" in cmd[-1] and "api:create_app()" in cmd[-1]


def test_dockerfile_has_no_baked_in_secrets() -> None:
    text = DOCKERFILE.read_text()
    for needle in ("PASSWORD", "TOKEN", "SECRET", "REDIS_URL"):
        assert not re.search(rf"^\s*(ENV|ARG)\b.*{needle}", text, re.M | re.I), needle


def test_dockerignore_keeps_local_state_out() -> None:
    entries = {line.strip().rstrip("/") for line in DOCKERIGNORE.read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".venv", "volumes", ".git", ".env", "tests", "**/__pycache__"} <= entries
    # ...but not what the build copies
    for needed in ("pyproject.toml", "README.md", "api", "common", "worker", "configs"):
        assert needed not in entries, needed


# ----------------------------------------------------------------------------- docker compose itself
def test_docker_compose_config_is_valid(tmp_path: Path) -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker client on PATH")
    try:
        version = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"`docker compose version` did not run: {exc}")
    if version.returncode != 0:
        pytest.skip(f"the docker compose plugin is not installed: {(version.stderr or version.stdout).strip()[:200]}")
    env = tmp_path / "env"
    env.write_text(ENV_EXAMPLE.read_text())
    for profile_args in ([], ["--profile", "postgres", "--profile", "flower"]):
        r = subprocess.run([docker, "compose", "-f", str(COMPOSE), "--env-file", str(env), *profile_args, "config", "-q"],
                           capture_output=True, text=True, timeout=30, cwd=ROOT)
        assert r.returncode == 0, r.stderr
