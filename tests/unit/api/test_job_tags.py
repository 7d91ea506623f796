"""Job tags and the jobs list's tag and name filters: the API in-process (Flask test client,
fake broker) and the store's list_jobs."""
from __future__ import annotations

from sqlalchemy import event

from common.store import User, transaction
from common.store.jobs import list_jobs
from tests.support.api import CFG, submit


def ids(call, headers, query: str = "") -> list[str]:
    r = call("get", "/api/v1/jobs" + query, headers=headers)
    assert r.status_code == 200, r.json
    return [j["id"] for j in r.json["jobs"]]


def test_submit_with_tags_keeps_their_order_without_duplicates(call, alice):
    r = submit(call, alice, {**CFG, "tags": ["exp:lr", "b", "exp:lr", "a=1", "v1.2_x-y"]})
    assert r.status_code == 202, r.json
    assert r.json["tags"] == ["exp:lr", "b", "a=1", "v1.2_x-y"]
    assert call("get", f"/api/v1/jobs/{r.json['id']}", headers=alice).json["tags"] == ["exp:lr", "b", "a=1", "v1.2_x-y"]
    assert "tags" not in r.json["config"]  # a service option, not part of the training config
    assert submit(call, alice).json["tags"] == []


def test_a_named_config_body_takes_tags(call, alice):
    r = submit(call, alice, {"config": "demo", "tags": ["demo"]})
    assert r.status_code in (202, 400), r.json
    if r.status_code == 400:  # the demo dataset may be absent here; tags must not be the cause
        assert "tags" not in r.json["errors"], r.json
    else:
        assert r.json["tags"] == ["demo"]


def test_bad_tags_are_400_naming_tags(call, alice):
    for bad in (["has space"], [""], ["x" * 65], ["é"], ["a/b"], [f"t{i}" for i in range(17)], "notalist", [3]):
        r = submit(call, alice, {**CFG, "tags": bad})
        assert r.status_code == 400, bad
        assert any(k == "tags" or k.startswith("tags.") for k in r.json["errors"]), (bad, r.json)
    r = submit(call, alice, {**CFG, "overrides": {"tags": ["a"]}})  # a service option, not config
    assert r.status_code == 400 and "tags" in r.json["errors"], r.json
    assert ids(call, alice) == []  # nothing was created


def test_list_filters_by_tags_and_name(call, alice, bob):
    a = submit(call, alice, {**CFG, "name": "resnet-a", "tags": ["exp", "lr:0.1"]}).json["id"]
    b = submit(call, alice, {**CFG, "name": "resnet-b", "tags": ["exp"]}).json["id"]
    c = submit(call, alice, {**CFG, "name": "vit_c", "tags": ["lr:0.1"]}).json["id"]
    submit(call, bob, {**CFG, "name": "resnet-a", "tags": ["exp", "lr:0.1"]})
    assert ids(call, alice, "?tag=exp") == [b, a]
    assert ids(call, alice, "?tag=exp&tag=lr:0.1") == [a]  # every given tag
    assert ids(call, alice, "?tag=lr:0.1") == [c, a]
    assert ids(call, alice, "?tag=nope") == []
    assert ids(call, alice, "?name=resnet-a") == [a]
    assert ids(call, alice, "?name=resnet") == []  # exact without '*'
    assert ids(call, alice, "?name=resnet*") == [b, a]
    assert ids(call, alice, "?name=RESNET*") == []  # case-sensitive
    assert ids(call, alice, "?name=vit_*") == [c]
    assert ids(call, alice, "?name=vi%25*") == []  # '%' is no wildcard
    assert ids(call, alice, "?name=resnet*&tag=lr:0.1") == [a]
    assert ids(call, alice, "?name=resnet*&limit=1") == [b]
    for bad in ("tag=has%20space", "tag=", "name="):
        r = call("get", f"/api/v1/jobs?{bad}", headers=alice)
        assert r.status_code == 400, bad
    # bob sees only his own job, whatever the filter
    bobs = call("get", "/api/v1/jobs?tag=exp&name=resnet*", headers=bob).json["jobs"]
    assert len(bobs) == 1 and bobs[0]["user"] != "alice" and a not in [j["id"] for j in bobs]


def test_list_jobs_loads_a_pages_tags_in_one_query(app, call, alice):
    for i in range(6):
        submit(call, alice, {**CFG, "name": f"j{i}", "tags": [f"t{i}", "all"]})
    svc = app.extensions["teacher"]
    statements: list[str] = []
    engine = svc.sessions.kw["bind"]

    def count(conn, cursor, statement, *args):
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        with transaction(svc.sessions) as s:
            user = s.query(User).filter_by(name="alice").one()
            statements.clear()
            jobs = list_jobs(s, user, tags=["all"], name="j*", limit=50)
            tags = [job.tags for job in jobs]
            queries = len(statements)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert tags == [[f"t{i}", "all"] for i in reversed(range(6))]
    # the jobs, their users, their attempts, their tags: not one query per job
    assert queries <= 4, statements


def test_cli_submit_tags_and_lists_by_tag(client, call, alice, monkeypatch, tmp_path):
    """`teacher submit --tag` and `teacher status --tag/--name`, their requests answered by
    the app in-process (the CLI's HTTP client routed to the Flask test client)."""
    import yaml
    from click.testing import CliRunner

    from common.apps import service_cli

    def request(self, method, path, *, ok=(200, 202), **kw):  # noqa: ANN001
        r = client.open("/api/v1" + path, method=method, json=kw.get("json"), query_string=kw.get("params"),
                        headers={**alice, **(kw.get("headers") or {})})
        assert r.status_code in ok, r.json
        return type("R", (), {"json": lambda _self: r.json})()

    monkeypatch.setattr(service_cli.ApiClient, "request", request)
    cfg = tmp_path / "job.yaml"
    cfg.write_text(yaml.safe_dump({**CFG, "name": "cli-job"}))
    run = CliRunner().invoke
    out = run(service_cli.submit, [str(cfg), "--tag", "exp:1", "--tag", "b", "--token", "x"])
    assert out.exit_code == 0, out.output
    job_id = out.output.strip()
    untagged = submit(call, alice, {**CFG, "name": "cli-job"}).json["id"]
    listed = run(service_cli.status, ["--tag", "exp:1", "--tag", "b", "--name", "cli-*", "--token", "x"])
    assert listed.exit_code == 0 and job_id[:12] in listed.output and untagged[:12] not in listed.output, listed.output
    assert call("get", f"/api/v1/jobs/{job_id}", headers=alice).json["tags"] == ["exp:1", "b"]
