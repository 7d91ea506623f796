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

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session, contains_eager

from common.store.models import Token, User

TOKEN_PREFIX = "tch_"
USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


# One query per authenticated request: the live token joined with its user (no lazy load of the
# user afterwards), built once (building a select and its cache key per request costs about as
# much as running it). Nothing is cached across requests: a revoked token is refused on its very
# next request.
_LIVE_TOKEN = (select(Token).join(Token.user).options(contains_eager(Token.user))
               .where(Token.token_hash == bindparam("token_hash"), Token.revoked.is_(False)))


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


def authenticate(session: Session, authorization: str | None) -> User:
    """The user behind an ``Authorization: Bearer <token>`` header, or :class:`AuthError`."""
    return authenticate_token(session, authorization).user


def authenticate_token(session: Session, authorization: str | None) -> Token:
    """The live token (its user loaded with it) of an ``Authorization: Bearer <token>``
    header, or :class:`AuthError`: what the rate limiter keys on, without a second query."""
    if not authorization:
        raise AuthError("missing bearer token")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > 512:
        raise AuthError("expected 'Authorization: Bearer <token>'")
    return token_for_hash(session, hash_token(token))


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
