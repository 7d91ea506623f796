"""The dashboard in-process (Flask test client, fake broker): sign-in and sessions, CSRF, the
CSP, ownership, escaping, submission errors and the live view's conditional requests. The same
things in a real browser against the real stack: tests/system/test_ui_browser.py."""
from __future__ import annotations

import re
from typing import Any

import pytest

from tests.support.api import CFG, mint
from tests.support.ui import XSS, csrf_of, incident_history


@pytest.fixture
def app(settings, broker):  # type: ignore[no-untyped-def]
    from api import create_app

    app = create_app({"TEACHER_SETTINGS": settings, "TEACHER_ENQUEUE": broker, "TESTING": True,
                      "SECRET_KEY": "test-secret"})
    yield app
    app.extensions["teacher"].engine.dispose()


def signed_in(client, headers: dict[str, str]):  # type: ignore[no-untyped-def]
    token = headers["Authorization"].split(" ", 1)[1]
    page = client.get("/ui/signin")
    r = client.post("/ui/signin", data={"token": token, "csrf_token": csrf_of(page.text)})
    assert r.status_code == 302 and r.headers["Location"].endswith("/ui/jobs"), r.text
    return client


def submit_api(client, headers: dict[str, str], **changes: Any) -> str:  # type: ignore[no-untyped-def]
    r = client.post("/api/v1/jobs", json={**CFG, **changes}, headers=headers)
    assert r.status_code == 202, r.text
    return r.json["id"]


def test_pages_need_a_session_and_the_api_is_unchanged(client, alice):
    r = client.get("/ui/jobs")
    assert r.status_code == 302 and "/ui/signin" in r.headers["Location"]
    assert client.get("/ui/jobs/rows", headers={"Accept": "text/html"}).status_code == 401  # a poll: no redirect
    assert client.get("/ui/jobs/" + "a" * 32 + "/live.json").status_code == 401
    assert client.get("/api/v1/jobs").status_code == 401  # the API still wants a bearer token
    assert client.get("/api/v1/jobs", headers=alice).status_code == 200


def test_sign_in_sets_a_hardened_cookie_holding_no_token(client, alice):
    token = alice["Authorization"].split(" ", 1)[1]
    page = client.get("/ui/signin")
    r = client.post("/ui/signin", data={"token": token, "csrf_token": csrf_of(page.text)})
    assert r.status_code == 302
    cookie = r.headers["Set-Cookie"]
    assert cookie.startswith("teacher_session=") and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Path=/ui/" in cookie and "Secure" not in cookie  # plain HTTP here
    from itsdangerous import URLSafeTimedSerializer  # noqa: F401  (the value is signed, not secret)
    import base64
    import zlib

    value = cookie.split("=", 1)[1].split(";", 1)[0]
    payload = value.split(".")[0 if not value.startswith(".") else 1]
    raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    raw = zlib.decompress(raw) if value.startswith(".") else raw
    from common.auth import hash_token

    # Only the session's secret (the store keeps its hash): neither the token nor its hash.
    assert token.encode() not in raw and hash_token(token).encode() not in raw and b'"sid"' in raw
    assert client.get("/ui/jobs").status_code == 200


def test_cookie_is_secure_over_https(client, alice):
    token = alice["Authorization"].split(" ", 1)[1]
    page = client.get("/ui/signin", base_url="https://localhost")
    r = client.post("/ui/signin", data={"token": token, "csrf_token": csrf_of(page.text)}, base_url="https://localhost",
                    headers={"Referer": "https://localhost/ui/signin"})  # Flask-WTF checks it over HTTPS
    assert r.status_code == 302 and "Secure" in r.headers["Set-Cookie"]


def test_a_bad_token_is_refused(client):
    page = client.get("/ui/signin")
    r = client.post("/ui/signin", data={"token": "tch_nope", "csrf_token": csrf_of(page.text)})
    assert r.status_code == 401 and "invalid or revoked token" in r.text
    assert client.get("/ui/jobs").status_code == 302


def test_every_form_needs_the_csrf_token(client, alice):
    token = alice["Authorization"].split(" ", 1)[1]
    client.get("/ui/signin")
    r = client.post("/ui/signin", data={"token": token})
    assert r.status_code == 400 and "CSRF" in r.text
    signed_in(client, alice)
    job_id = submit_api(client, alice)
    assert client.post(f"/ui/jobs/{job_id}/cancel").status_code == 400
    assert client.post("/ui/signout").status_code == 400
    assert client.post("/ui/submit", data={"yaml": "name: x"}).status_code == 400
    assert client.get(f"/api/v1/jobs/{job_id}", headers=alice).json["status"] == "queued"  # not cancelled
    page = client.get(f"/ui/jobs/{job_id}")
    r = client.post(f"/ui/jobs/{job_id}/cancel", data={"csrf_token": csrf_of(page.text)})
    assert r.status_code == 302
    assert client.get(f"/api/v1/jobs/{job_id}", headers=alice).json["status"] == "cancelled"


def test_sign_out_revocation_and_expiry_end_the_session(app, client, alice):
    import datetime as dt

    from sqlalchemy import update

    from common.auth import revoke_tokens
    from common.store import transaction, utcnow
    from common.store.models import UiSession

    signed_in(client, alice)
    copied = client.get_cookie("teacher_session", path="/ui/").value
    page = client.get("/ui/jobs")
    r = client.post("/ui/signout", data={"csrf_token": csrf_of(page.text)})
    assert r.status_code == 302 and client.get("/ui/jobs").status_code == 302
    client.set_cookie("teacher_session", copied, path="/ui/")  # a copy of the signed-out cookie
    assert client.get("/ui/jobs").status_code == 302  # its row is gone: refused

    signed_in(client, alice)
    with transaction(app.extensions["teacher"].sessions) as s:
        revoke_tokens(s, token=alice["Authorization"].split(" ", 1)[1])
    assert client.get("/ui/jobs").status_code == 302  # revoked: the next request is refused

    bob = mint(app, "bob")
    signed_in(client, bob)
    assert client.get("/ui/jobs").status_code == 200
    with transaction(app.extensions["teacher"].sessions) as s:
        s.execute(update(UiSession).values(expires_at=utcnow() - dt.timedelta(seconds=1)))
    assert client.get("/ui/jobs").status_code == 302


def test_csp_forbids_inline_scripts_on_every_ui_response(client, alice):
    signed_in(client, alice)
    for path in ("/ui/signin", "/ui/jobs", "/ui/submit", "/ui/static/ui.js", "/ui/jobs/" + "0" * 32):
        csp = client.get(path).headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp, path
    page = client.get("/ui/jobs").text
    assert not re.search(r"<script>(?!</script>)|<script(?![^>]*\bsrc=)[^>]*>", page)  # no inline script
    assert " on" not in re.sub(r"<pre.*?</pre>", "", page).lower().replace("\n on", "") or "onclick" not in page


def test_another_users_job_and_its_files_are_404(app, client, alice, bob):
    job_id = submit_api(client, alice)
    signed_in(client, bob)
    for path in (f"/ui/jobs/{job_id}", f"/ui/jobs/{job_id}/live.json", f"/ui/jobs/{job_id}/checkpoints/best",
                 f"/ui/jobs/{job_id}/plots/loss.png", f"/ui/jobs/{job_id[:8]}"):
        assert client.get(path).status_code == 404, path
    page = client.get("/ui/jobs")
    assert job_id not in page.text
    r = client.post(f"/ui/jobs/{job_id}/cancel", data={"csrf_token": csrf_of(page.text)})
    assert r.status_code == 404
    admin = mint(app, "root", admin=True)
    signed_in(client, admin)
    assert client.get(f"/ui/jobs/{job_id}").status_code == 200
    assert "<th>User</th>" in client.get("/ui/jobs").text


def xss_job(**changes: Any) -> dict[str, Any]:
    """A job whose config carries markup in a free-text value (a csv filter value: names are
    restricted to letters, digits, '.', '_' and '-')."""
    return {**CFG, "data": {**CFG["data"], "format": "csv", "filter": {"column": "region", "values": [XSS, "north", "south", "east", "west"]}},
            **changes}


def test_config_values_log_lines_and_the_edited_yaml_are_escaped(client, alice, settings):
    r = client.post("/api/v1/jobs", json=xss_job(), headers=alice)
    assert r.status_code == 202, r.text
    job_id = r.json["id"]
    signed_in(client, alice)
    html = client.get(f"/ui/jobs/{job_id}").text
    assert 'id="attempt-rows"' in html and "Not started yet." in html  # the timeline, empty for now
    assert "<script>window.__xss" not in html and "<img src=x" not in html
    assert "&lt;script&gt;window.__xss" in html
    log = settings.jobs_root / job_id / "child.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"step 1 {XSS}\n")
    html = client.get(f"/ui/jobs/{job_id}").text
    assert f"step 1 &lt;script&gt;" in html and "<img src=x" not in html
    assert client.get(f"/ui/jobs/{job_id}/live.json").json["log"] == [f"step 1 {XSS}"]  # JSON: written as text by job.js
    page = client.get("/ui/submit")
    r = client.post("/ui/submit", data={"yaml": "name: '</textarea>" + XSS + "'\n", "csrf_token": csrf_of(page.text)})
    assert r.status_code == 400 and "</textarea><script>" not in r.text and "&lt;/textarea&gt;&lt;script&gt;" in r.text


def test_jobs_list_filters_and_pages(client, alice):
    ids = [submit_api(client, alice, name=f"run-{i}") for i in range(3)]
    submit_api(client, alice, name="other")
    signed_in(client, alice)
    html = client.get("/ui/jobs?name=run-").text
    assert all(i in html for i in ids) and ">other<" not in html
    from api.ui import views

    old, views.PAGE_SIZE = views.PAGE_SIZE, 2
    try:
        first = client.get("/ui/jobs").text
        assert 'id="next-page"' in first
        older = re.search(r'id="next-page" href="([^"]+)"', first).group(1).replace("&amp;", "&")
        second = client.get(older).text
        assert ids[1] in second and ids[0] in second and "other" not in second and 'id="next-page"' not in second
    finally:
        views.PAGE_SIZE = old
    assert "queued" in client.get("/ui/jobs?status=queued").text
    assert ids[0] not in client.get("/ui/jobs?status=running").text


def test_live_view_answers_304_while_the_job_is_unchanged(client, alice):
    job_id = submit_api(client, alice)
    signed_in(client, alice)
    r = client.get(f"/ui/jobs/{job_id}/live.json")
    assert r.status_code == 200 and r.json["job"]["id"] == job_id and r.headers["ETag"]
    again = client.get(f"/ui/jobs/{job_id}/live.json", headers={"If-None-Match": r.headers["ETag"]})
    assert again.status_code == 304 and not again.data
    rows = client.get("/ui/jobs/rows")
    assert client.get("/ui/jobs/rows", headers={"If-None-Match": rows.headers["ETag"]}).status_code == 304
    page = client.get(f"/ui/jobs/{job_id}")
    client.post(f"/ui/jobs/{job_id}/cancel", data={"csrf_token": csrf_of(page.text)})
    changed = client.get(f"/ui/jobs/{job_id}/live.json", headers={"If-None-Match": r.headers["ETag"]})
    assert changed.status_code == 200 and changed.json["job"]["status"] == "cancelled"


def test_submit_form_prefills_validates_and_redirects(client, alice, broker):
    signed_in(client, alice)
    page = client.get("/ui/submit?config=demo")
    assert "name: demo" in page.text and "arch: resnet18" in page.text
    good = ("name: t\nmodel:\n  arch: resnet18\ndata:\n  format: imagefolder\n  root: synthetic\n  image_size: 32\n"
            "optim:\n  epochs: 1\n  batch_size: 8\n  lr: 0.01\n")
    bad = good.replace("epochs: 1", "epochs: -1")
    r = client.post("/ui/submit", data={"yaml": bad, "csrf_token": csrf_of(page.text)})
    assert r.status_code == 400
    assert re.search(r'data-field="optim.epochs" data-line="9"', r.text), r.text  # next to its line
    r = client.post("/ui/submit", data={"yaml": good, "csrf_token": csrf_of(page.text)})
    assert r.status_code == 302 and "/ui/jobs/" in r.headers["Location"]
    job_id = r.headers["Location"].rsplit("/", 1)[1]
    assert broker.sent[-1][0] == job_id
    r = client.post("/ui/submit", data={"yaml": "name: [unclosed", "csrf_token": csrf_of(page.text)})
    assert r.status_code == 400 and "not valid YAML" in r.text


def test_open_redirect_is_refused(client, alice):
    token = alice["Authorization"].split(" ", 1)[1]
    page = client.get("/ui/signin")
    r = client.post("/ui/signin?next=//evil.example/", data={"token": token, "csrf_token": csrf_of(page.text)})
    assert r.headers["Location"].endswith("/ui/jobs")


def test_an_unwritable_state_root_disables_only_the_dashboard(settings, broker, tmp_path):
    import dataclasses

    from api import create_app

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the state root should be")
    app = create_app({"TEACHER_SETTINGS": dataclasses.replace(settings, state_root=blocker / "state"),
                      "TEACHER_ENQUEUE": broker, "TESTING": True})
    try:
        client = app.test_client()
        assert client.get("/ui/signin").status_code == 503
        assert client.get("/api/v1/health").status_code in (200, 503)  # the API itself still starts
        alice = mint(app, "alice")
        assert client.get("/api/v1/jobs", headers=alice).status_code == 200
    finally:
        app.extensions["teacher"].engine.dispose()


def test_the_signing_key_is_made_once_and_shared(settings, broker, tmp_path):
    import dataclasses

    from api import create_app

    apps = [create_app({"TEACHER_SETTINGS": dataclasses.replace(settings, state_root=tmp_path / "st"),
                        "TEACHER_ENQUEUE": broker}) for _ in range(2)]
    try:
        assert apps[0].config["SECRET_KEY"] == apps[1].config["SECRET_KEY"]  # two workers, one key
        key_file = tmp_path / "st" / "ui_secret_key"
        assert key_file.stat().st_mode & 0o777 == 0o600 and len(key_file.read_text()) >= 48
    finally:
        for app in apps:
            app.extensions["teacher"].engine.dispose()


def test_compare_shows_differing_config_keys_and_refuses_other_users_jobs(app, client, alice, bob):
    a = submit_api(client, alice, name="lr-a", optim={**CFG["optim"], "lr": 0.01})
    b = submit_api(client, alice, name="lr-b", optim={**CFG["optim"], "lr": 0.05})
    other = submit_api(client, bob, name="bobs")
    signed_in(client, alice)
    pick = client.get("/ui/compare").text
    assert f'value="{a}"' in pick and f'value="{b}"' in pick and other not in pick
    html = client.get(f"/ui/compare?job={a}&job={b[:8]}").text
    diff = html.split('id="config-diff"', 1)[1].split("</table>", 1)[0]
    assert "optim.lr" in diff and "0.01" in diff and "0.05" in diff and "name" in diff
    assert "optim.epochs" not in diff and "model.arch" not in diff  # equal keys are left out
    assert client.get(f"/ui/compare?job={a}&job={other}").status_code == 404
    assert client.get(f"/ui/compare?job={a}").status_code == 400
    assert client.get("/ui/compare?" + "&".join(f"job={x}" for x in [a, b] * 4)).status_code == 200  # duplicates count once


def test_workers_page_is_for_admins_only(app, client, alice):
    from common.store import WorkerBeat, transaction, utcnow

    with transaction(app.extensions["teacher"].sessions) as s:
        s.add(WorkerBeat(name="host:123", queues="default", seen_at=utcnow()))
    submit_api(client, alice)
    signed_in(client, alice)
    assert client.get("/ui/admin/workers").status_code == 404
    assert "Workers</a>" not in client.get("/ui/jobs").text
    signed_in(client, mint(app, "root", admin=True))
    html = client.get("/ui/admin/workers").text
    assert "host:123" in html and "alive" in html
    assert re.search(r"<td>default</td><td>1</td>", html)  # alice's queued job


def test_failing_checks_are_marked_on_the_curves(client, alice, settings):
    import json

    job_id = submit_api(client, alice)
    incident_history(settings.jobs_root / job_id / "run")
    signed_in(client, alice)
    html = client.get(f"/ui/jobs/{job_id}").text
    flags = json.loads(re.search(r'<script type="application/json" id="job-flags">(.*?)</script>', html).group(1))
    assert {"id": "dead_metric", "status": "fail", "metric": "train.loss", "epochs": [1, 2, 3, 4]} in flags
    assert 'id="flag-note"' in html and "dead_metric" in html
    assert len(re.findall(r"<tr>", html.split('id="epoch-rows"', 1)[1].split("</tbody>", 1)[0])) == 4


def test_live_view_carries_the_current_epochs_step_stream(client, alice, settings):
    import json

    job_id = submit_api(client, alice)
    steps = settings.jobs_root / job_id / "run" / "steps.jsonl"
    steps.parent.mkdir(parents=True, exist_ok=True)
    base = {"split": "train", "step": 0, "correct5": 0, "lr": 0.1, "throughput": 50.0, "time": 1.0, "final": False}
    lines = [dict(base, epoch=1, batch=4, loss_sum=8.0, correct1=1, samples=4),
             dict(base, epoch=2, batch=2, loss_sum=3.0, correct1=1, samples=2),
             dict(base, epoch=2, batch=4, loss_sum=4.0, correct1=3, samples=4),
             dict(base, split="val", epoch=2, batch=1, loss_sum=1.0, correct1=1, samples=1)]
    steps.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"split": "tr')  # the last line still being written
    signed_in(client, alice)
    live = client.get(f"/ui/jobs/{job_id}/live.json").json["steps"]
    assert [(s["epoch"], s["batch"], s["loss"], s["top1"]) for s in live] == [(2, 2, 1.5, 50.0), (2, 4, 1.0, 75.0)]


# ------------------------------------------------------------------ analyses
def _incident_file(tmp_path) -> bytes:  # type: ignore[no-untyped-def]
    incident_history(tmp_path / "run")
    return (tmp_path / "run" / "history.json").read_bytes()


def _upload(client, data: dict[str, Any], with_csrf: bool = True):  # type: ignore[no-untyped-def]
    page = client.get("/ui/analyses/new")
    assert page.status_code == 200 and 'enctype="multipart/form-data"' in page.text
    if with_csrf:
        data = {**data, "csrf_token": csrf_of(page.text)}
    return client.post("/ui/analyses/new", data=data, content_type="multipart/form-data")


def test_analysis_upload_form_creates_it_as_the_api_does_and_shows_the_report(client, alice, tmp_path):
    import io

    signed_in(client, alice)
    assert 'href="/ui/analyses"' in client.get("/ui/jobs").text  # the nav link
    r = _upload(client, {"files": (io.BytesIO(_incident_file(tmp_path)), "history.json"), "num_classes": "12",
                         "mixup": "false", "ema": "", "pretrained": "", "accuracy_unit": "", "label_smoothing": "",
                         "pattern": ""})
    assert r.status_code == 302, r.text
    analysis_id = r.headers["Location"].rsplit("/", 1)[1]
    api = client.get(f"/api/v1/analyses/{analysis_id}", headers=alice)  # stored by the API's own code
    assert api.status_code == 200 and api.json["report"]["verdict"] == "fail" and api.json["num_classes"] == 12
    assert api.json["report"]["hints"]["used"].get("mixup") is False
    html = client.get(r.headers["Location"]).text
    assert re.search(r'id="analysis-verdict"><span class="badge iv-fail"[^>]*>fail</span>', html)
    assert "<code>dead_metric</code>" in html and "history.json" in html
    assert re.search(r"<code>num_classes</code> = 12", html)
    plots = re.findall(rf'src="(/ui/analyses/{analysis_id}/plots/\w+\.png)"', html)
    assert plots and [p.rsplit("/", 1)[1][:-4] for p in plots] == [p["name"] for p in api.json["plots"]]
    png = client.get(plots[0])
    assert png.status_code == 200 and png.data.startswith(b"\x89PNG")
    listing = client.get("/ui/analyses").text
    assert f'href="/ui/analyses/{analysis_id}"' in listing


def test_analysis_upload_errors_are_the_apis_shown_on_the_form(client, alice, tmp_path):
    import io

    signed_in(client, alice)
    assert _upload(client, {"files": (io.BytesIO(b"x"), "a.json")}, with_csrf=False).status_code == 400
    r = _upload(client, {"num_classes": "12"})
    assert r.status_code == 400 and 'id="analysis-error"' in r.text and "no files uploaded" in r.text
    assert 'value="12"' in r.text  # what was typed stays
    api = client.post("/api/v1/analyses", headers=alice, content_type="multipart/form-data",
                      data={"files": (io.BytesIO(b"\x00\x01 not a metrics file\n"), "odd.bin")})
    r = _upload(client, {"files": (io.BytesIO(b"\x00\x01 not a metrics file\n"), "odd.bin")})
    assert api.status_code == r.status_code == 400
    from markupsafe import escape

    assert "unknown file type" in api.json["message"] and "TensorBoard" in api.json["message"]  # the formats known
    assert str(escape(api.json["message"])) in r.text and 'id="err-files"' in r.text
    r = _upload(client, {"files": (io.BytesIO(_incident_file(tmp_path)), "history.json"), "num_classes": "1",
                         "accuracy_unit": "percent"})
    assert r.status_code == 400 and 'id="err-num_classes"' in r.text
    r = _upload(client, {"files": (io.BytesIO(_incident_file(tmp_path)), "history.json"), "pattern": "(unclosed"})
    assert r.status_code == 400 and 'id="err-pattern"' in r.text and "(unclosed" in r.text
    assert "<code>" not in client.get("/ui/analyses").text.split("<tbody>", 1)[1]  # nothing was stored


def test_another_users_analysis_and_its_plots_are_404(app, client, alice, bob, tmp_path):
    import io

    r = client.post("/api/v1/analyses", headers=alice, content_type="multipart/form-data",
                    data={"files": (io.BytesIO(_incident_file(tmp_path)), "history.json")})
    assert r.status_code == 201
    analysis_id, plot = r.json["id"], r.json["plots"][0]["name"]
    signed_in(client, bob)
    assert client.get(f"/ui/analyses/{analysis_id}").status_code == 404
    assert client.get(f"/ui/analyses/{analysis_id}/plots/{plot}.png").status_code == 404
    assert client.get("/ui/analyses/not-an-id").status_code == 404
    assert analysis_id not in client.get("/ui/analyses").text
    signed_in(client, alice)
    assert client.get(f"/ui/analyses/{analysis_id}").status_code == 200


def test_jobs_list_shows_tag_chips_and_filters_by_tag_and_name_in_sql(client, alice, bob):
    a = submit_api(client, alice, name="sweep-a", tags=["exp:lr", "base"])
    b = submit_api(client, alice, name="sweep-b", tags=["exp:lr"])
    c = submit_api(client, alice, name="other", tags=["base"])
    theirs = submit_api(client, bob, name="sweep-x", tags=["exp:lr"])
    signed_in(client, alice)
    html = client.get("/ui/jobs").text
    assert 'class="tag" href="/ui/jobs?tag=exp:lr">exp:lr</a>' in html and 'id="tag-filter"' in html
    chip = client.get("/ui/jobs?tag=exp:lr").text  # where a chip links
    assert a in chip and b in chip and c not in chip and theirs not in chip
    both = client.get("/ui/jobs?tag=exp:lr,+base").text  # the field: every tag given
    assert a in both and b not in both and c not in both and 'value="exp:lr base"' in both
    named = client.get("/ui/jobs?name=sweep&tag=base").text
    assert a in named and b not in named and c not in named
    assert theirs not in client.get("/ui/jobs?name=sweep").text
    bad = client.get("/ui/jobs?tag=no/such").text  # a tag the API refuses matches nothing
    assert "match these filters" in bad and a not in bad


def test_submit_form_takes_tags_checked_by_the_api_schema(client, alice):
    import yaml

    signed_in(client, alice)
    page = client.get("/ui/submit")
    assert 'id="tags"' in page.text
    text = yaml.safe_dump(CFG)
    r = client.post("/ui/submit", data={"yaml": text, "tags": "bad tag/, ok", "csrf_token": csrf_of(page.text)})
    assert r.status_code == 400 and 'data-field="tags.0"' in r.text and "tags.1" not in r.text, r.text
    r = client.post("/ui/submit", data={"yaml": text, "tags": "exp:1, base ,exp:1", "csrf_token": csrf_of(page.text)})
    assert r.status_code == 302, r.text
    job_id = r.headers["Location"].rsplit("/", 1)[1]
    assert client.get(f"/api/v1/jobs/{job_id}", headers=alice).json["tags"] == ["exp:1", "base"]
