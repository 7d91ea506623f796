"""Finding the job a request names: by its full id or a unique prefix, among the jobs the
caller may see. Shared by every blueprint that takes a job id (jobs, analysis) and by the
submission service (``after`` and ``init_from.job``)."""
from __future__ import annotations

import re

from sqlalchemy import Boolean, bindparam, or_, select
from sqlalchemy.orm import Session, joinedload

from api.extensions import current_user, services
from common.store import Job
from common.store.jobs import JobNotFound, Principal, visible_job

MIN_PREFIX = 6
MAX_LISTED_MATCHES = 10
_HEX = re.compile(r"^[0-9a-f]{1,32}$")
# The description of the 400 every operation with a job id in its path documents.
AMBIGUOUS = "an ambiguous job id prefix (the matching ids are listed) or a prefix shorter than 6 characters"


# The read of a full id (the status poll) as one query: visible_job's rule (not deleted; the
# caller's own unless an admin), with each relationship the response dumps (the owner, the
# attempts, the tags) joined into the same SELECT rather than loaded by queries of their own.
# Named one by one: a wildcard joinedload("*") also joined the owner's tokens, so a poll read
# every token hash of its user and returned tokens x attempts x tags rows (300 for a user of 20
# tokens: 25x the time). The two collections still multiply (at most 16 tags per job), which for
# the few attempts and tags of a job costs less than a query of their own. Built once: building a
# select and its cache key per request costs about as much as running it.
_VISIBLE_BY_ID = (select(Job).options(joinedload(Job.user, innerjoin=True), joinedload(Job.attempt_rows),
                                      joinedload(Job.tag_rows))
                  .where(Job.id == bindparam("job_id"), Job.deleted_at.is_(None),
                         or_(bindparam("admin", type_=Boolean), Job.user_id == bindparam("user_id"))))


class BadJobRef(ValueError):
    """A job id prefix too short, or matching several jobs: 400 naming ``field``."""

    def __init__(self, field: str, message: str, detail: str):
        super().__init__(message)
        self.field = field
        self.message = message
        self.errors = {field: [detail]}


def resolve_job(session: Session, user: Principal, ref: str, *, field: str = "job_id", for_update: bool = False) -> Job:
    """The job a full id or a unique prefix (at least 6 hex digits) names. Only jobs the
    caller may see are candidates (their own; every job for an admin), so a prefix never tells
    one user anything about another's jobs. JobNotFound (404) when none matches; BadJobRef
    (400 naming ``field``) when the prefix is too short or matches several."""
    ref = ref.strip().lower()
    if not _HEX.match(ref):
        raise JobNotFound(ref[:64])
    if len(ref) == 32:
        if for_update:
            return visible_job(session, user, ref, for_update=True)
        job = session.execute(_VISIBLE_BY_ID, {"job_id": ref, "user_id": user.id, "admin": user.is_admin}
                              ).unique().scalar_one_or_none()
        if job is None:
            raise JobNotFound(ref)
        return job
    if len(ref) < MIN_PREFIX:
        raise BadJobRef(field, f"job id prefix '{ref}' is too short: give at least {MIN_PREFIX} characters",
                        f"at least {MIN_PREFIX} characters of a job id")
    stmt = select(Job.id).where(Job.id.startswith(ref), Job.deleted_at.is_(None))  # ref is hex: no LIKE wildcards
    if not user.is_admin:
        stmt = stmt.where(Job.user_id == user.id)
    matches = list(session.scalars(stmt.order_by(Job.pk.desc()).limit(MAX_LISTED_MATCHES + 1)))
    if not matches:
        raise JobNotFound(ref)
    if len(matches) > 1:
        listed = ", ".join(matches[:MAX_LISTED_MATCHES]) + (" ..." if len(matches) > MAX_LISTED_MATCHES else "")
        raise BadJobRef(field, f"job id prefix '{ref}' is ambiguous: it matches {listed}; give more characters",
                        f"ambiguous: matches {listed}")
    return visible_job(session, user, matches[0], for_update=for_update)


def load_job(job_id: str) -> Job:
    """The caller's job named in the URL, read in the request's read session, with its owner
    and attempts: one query (a prefix: one more, for the matching ids)."""
    with services().reads() as s:
        job = resolve_job(s, current_user(), job_id)
        job.user  # loaded with it; for a prefix, loaded now while the session is open  # noqa: B018
        return job
