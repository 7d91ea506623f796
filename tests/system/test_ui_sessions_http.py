"""Dashboard sessions are server-side, over real HTTP against gunicorn (two worker processes
sharing the store): a copy of a signed-out cookie is refused, revoking
the token (`teacher tokens revoke`) refuses its session at the next request, and an expired row
is refused. The in-process counterparts: tests/unit/api/test_ui_pages.py."""
from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import requests
from sqlalchemy import select, update

from tests.support.stack import Stack, make_stack
from tests.support.training import ROOT
from tests.support.ui import csrf_of

pytestmark = pytest.mark.slow

COOKIE = "teacher_session"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_server: str, service_dataset_root: Path) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("ui-sessions")
    stack = make_stack(base, redis_server.rsplit("/", 1)[0] + "/13", service_dataset_root,
                       f"sqlite:///{base / 'state' / 'teacher.db'}", TEACHER_STATE_ROOT=str(base / "state"))
    try:
        stack.start_api(workers=2, threads=2)  # no Celery worker: only pages are read
        yield stack
    finally:
        stack.stop()


def signed_in(stack: Stack, user: str) -> tuple[requests.Session, str]:
    """A browser-like client signed in with a fresh token of ``user``; and that token."""
    token = stack.token(user)["Authorization"].split(" ", 1)[1]
    client = requests.Session()
    page = client.get(stack.api_url + "/ui/signin", timeout=30)
    r = client.post(stack.api_url + "/ui/signin", data={"token": token, "csrf_token": csrf_of(page.text)},
                    allow_redirects=False, timeout=30)
    assert r.status_code == 302 and r.headers["Location"].endswith("/ui/jobs"), r.text
    assert jobs_page(stack, client) == 200
    return client, token


def jobs_page(stack: Stack, client: requests.Session) -> int:
    """200 when the session is live; 302 (to the sign-in page) when it is refused."""
    r = client.get(stack.api_url + "/ui/jobs", allow_redirects=False, timeout=30)
    assert r.status_code == 200 or "/ui/signin" in r.headers["Location"]
    return r.status_code


def copy_of(stack: Stack, client: requests.Session) -> requests.Session:
    """Another client holding a copy of ``client``'s cookie (a stolen or backed-up cookie)."""
    other = requests.Session()
    other.cookies.set(COOKIE, client.cookies.get(COOKIE), domain="127.0.0.1", path="/ui/")
    return other


def test_a_copied_cookie_is_refused_after_sign_out(stack):
    client, _ = signed_in(stack, "alice")
    copy = copy_of(stack, client)
    # Several requests, so that both gunicorn processes most likely serve the copy (which one
    # takes a connection is the kernel's choice): no process keeps a session of its own.
    assert [jobs_page(stack, copy) for _ in range(4)] == [200] * 4
    page = client.get(stack.api_url + "/ui/jobs", timeout=30)
    r = client.post(stack.api_url + "/ui/signout", data={"csrf_token": csrf_of(page.text)},
                    allow_redirects=False, timeout=30)
    assert r.status_code == 302 and "/ui/signin" in r.headers["Location"]
    assert jobs_page(stack, client) == 302
    assert [jobs_page(stack, copy) for _ in range(4)] == [302] * 4  # the row is gone for every process
    poll = copy.get(stack.api_url + "/ui/jobs/rows", timeout=30, allow_redirects=False)
    assert poll.status_code == 401  # a page script's poll: 401, not the sign-in page


def test_revoking_the_token_refuses_its_session_at_the_next_request(stack):
    client, token = signed_in(stack, "bob")
    other, _ = signed_in(stack, "carol")
    r = subprocess.run([sys.executable, "-m", "common.apps.cli", "tokens", "revoke", "--token", token],
                       env=stack.env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert jobs_page(stack, client) == 302
    assert jobs_page(stack, other) == 200  # another token's session lives on


def test_an_expired_session_row_is_refused(stack):
    from common.store import transaction, utcnow
    from common.store.models import Token, UiSession, User
    from worker.store import sessions_for

    client, _ = signed_in(stack, "dave")
    factory = sessions_for(stack.settings.database_url)
    with transaction(factory) as s:
        mine = select(Token.id).join(Token.user).where(User.name == "dave")
        s.execute(update(UiSession).where(UiSession.token_id.in_(mine))
                  .values(expires_at=utcnow() - dt.timedelta(seconds=1)))
    assert jobs_page(stack, client) == 302
