"""Routes of per-index API keys: /v1/indexes/{name}/users (create, list, revoke)."""

from __future__ import annotations

from urllib.parse import unquote

from ..engine.errors import NotFound
from ..engine.model import check_index_name
from . import request as rq
from . import responses, schemas
from .request import Response
from .routing import route


def _user_index(index_name: str, right: str = "admin") -> tuple[str, str]:
    name = unquote(index_name)
    check_index_name(name)
    return rq.principal(right, name).tenant, name


@route("POST", "/v1/indexes/<index_name>/users", schemas.CreateUserRequest, answer=responses.UserKey)
def create_user(index_name: str) -> Response:
    """Create an API key that may only use this index, with the given permissions.

    The key is shown once, in this answer."""
    tenant, name = _user_index(index_name)
    req: schemas.CreateUserRequest = rq.parse(schemas.CreateUserRequest)
    c = rq.app()
    c.service.open(tenant, name, rq.kek(req.index_key))  # the index exists and the key opens it
    api_key, record = c.auth.create_key(tenant, "user", index_name=name, permissions=req.permissions)
    return rq.ok({"user_id": record.key_id, "api_key": api_key})


@route("GET", "/v1/indexes/<index_name>/users", answer=responses.Users)
def list_users(index_name: str) -> Response:
    """The API keys of this index that are not revoked (ids and permissions, never the keys)."""
    tenant, name = _user_index(index_name)
    c = rq.app()
    c.service.open(tenant, name, rq.kek(rq.header("x-index-key")))  # the key opens it
    users = [
        {"user_id": r.key_id, "permissions": list(r.permissions)}
        for r in c.auth.store.list(tenant)
        if r.index_name == name and r.role == "user" and r.revoked_at is None
    ]
    return rq.ok({"users": sorted(users, key=lambda u: u["user_id"])})


@route("DELETE", "/v1/indexes/<index_name>/users/<user_id>")
def delete_user(index_name: str, user_id: str) -> Response:
    """Revoke one API key of this index (204)."""
    tenant, name = _user_index(index_name)
    c = rq.app()
    c.service.open(tenant, name, rq.kek(rq.header("x-index-key")))  # the key opens it
    record = c.auth.store.get(unquote(user_id))
    if record is None or record.tenant != tenant or record.index_name != name or record.revoked_at:
        raise NotFound(f"no such user on index '{name}'")
    c.auth.revoke(record.key_id)
    return Response(204, None, "")
