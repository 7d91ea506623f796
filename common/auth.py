"""Bearer tokens: minted once, shown once, stored only as sha256 hashes.

A token is 32 random bytes (``secrets``), so a plain sha256 is enough (no password stretching
needed) and lets us look the hash up by index. The final comparison is still constant-time so
the check does not depend on how the database compares strings.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session, contains_eager

from common.store.models import Token, User

TOKEN_PREFIX = "tch_"
USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


# What makes a token live: its hash, not revoked. Both lookups below use it.
_IS_LIVE = (Token.token_hash == bindparam("token_hash"), Token.revoked.is_(False))

# The live token joined with its user (no lazy load of the user afterwards), built once
# (building a select and its cache key per request costs about as much as running it).
_LIVE_TOKEN = select(Token).join(Token.user).options(contains_eager(Token.user)).where(*_IS_LIVE)

# The same lookup as plain columns, for every API request (authenticate): one Core query on the
# session's connection, no ORM objects built (materialising the token and its user was a fifth
# of a status poll's CPU). Nothing is cached across requests: a revoked token is refused on its
# very next request.
_LIVE_CALLER = (select(Token.id.label("token_id"), Token.token_hash, User.id.label("user_id"), User.name,
                       User.is_admin)
                .join_from(Token, User, Token.user_id == User.id).where(*_IS_LIVE))


@dataclass(frozen=True, slots=True)
class Caller:
    """Who an API request is, as its bearer token says: what the API's checks read of the user
    (``id``, ``name``, ``is_admin``: the names a :class:`User` has, so code that takes either
    reads them alike) and the token's id, which the rate limits key on. A value, not a row of
    any session: nothing can write through it."""

    id: int
    name: str
    is_admin: bool
    token_id: int


class AuthError(Exception):
    """The request carries no valid credentials."""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(session: Session, user_name: str, *, admin: bool = False) -> str:
    """Create the user if needed and mint a new token for them; returns the plaintext token."""
    if not USER_NAME.match(user_name):
        raise ValueError("user names use letters, digits, '.', '_' and '-' (at most 64)")
    user = session.scalar(select(User).where(User.name == user_name))
    if user is None:
        user = User(name=user_name, is_admin=admin)
        session.add(user)
    elif admin and not user.is_admin:
        user.is_admin = True
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(Token(user=user, token_hash=hash_token(token)))
    session.flush()
    return token


def authenticate(session: Session, authorization: str | None) -> Caller:
    """Who sends an ``Authorization: Bearer <token>`` header (one query), or :class:`AuthError`."""
    token_hash = hash_token(bearer_token(authorization))
    row = session.connection().execute(_LIVE_CALLER, {"token_hash": token_hash}).first()
    if row is None or not hmac.compare_digest(row.token_hash, token_hash):
        raise AuthError("invalid or revoked token")
    return Caller(id=row.user_id, name=row.name, is_admin=row.is_admin, token_id=row.token_id)


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header, or :class:`AuthError`."""
    if not authorization:
        raise AuthError("missing bearer token")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > 512:
        raise AuthError("expected 'Authorization: Bearer <token>'")
    return token


def token_for_hash(session: Session, token_hash: str) -> Token:
    """The live token with this hash (one query, its user joined), or :class:`AuthError`."""
    row = session.scalar(_LIVE_TOKEN, {"token_hash": token_hash})
    if row is None or not hmac.compare_digest(row.token_hash, token_hash):
        raise AuthError("invalid or revoked token")
    return row


class TokenNotFound(LookupError):
    """No token matches what was given to revoke."""


def list_tokens(session: Session, user_name: str | None = None) -> list[Token]:
    """Tokens (newest last), optionally of one user. Only ids and metadata: the secret is gone."""
    query = select(Token).join(Token.user).order_by(Token.id)
    if user_name is not None:
        query = query.where(User.name == user_name)
    return list(session.scalars(query))


def revoke_tokens(session: Session, *, token_id: int | None = None, token: str | None = None,
                  user_name: str | None = None) -> list[Token]:
    """Revoke one token (by id or by its plaintext) or every live token of a user. Revocation
    takes effect on the next request: :func:`authenticate` looks the token up every time."""
    if sum(x is not None for x in (token_id, token, user_name)) != 1:
        raise ValueError("give exactly one of: a token id, a token, a user")
    query = select(Token).where(Token.revoked.is_(False))
    if token_id is not None:
        query = query.where(Token.id == token_id)
    elif token is not None:
        query = query.where(Token.token_hash == hash_token(token.strip()))
    else:
        query = query.join(Token.user).where(User.name == user_name)
    rows = list(session.scalars(query))
    if not rows:
        raise TokenNotFound("no live token matches")
    for row in rows:
        row.revoked = True
    session.flush()
    return rows
