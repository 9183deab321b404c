"""The metadata field policy (API.md §7): what ``metadata_schema`` lets a filter name, as
CyborgDB 0.18 enforces it.

Each field may be ``filterable`` (usable in filters), ``pattern`` (usable with ``$regex`` and
``$contains``) and ``full_text`` (BM25-analysed: neither filterable nor a pattern).
``text_fields`` at create are ``full_text`` entries. The policy binds ``query_metadata``,
which resolves filters from the index alone: a filter on a field not filterable is refused,
and so is a pattern operator on a field not declared ``pattern: true`` — with no schema at
all every field is filterable and none is a pattern. ``query`` tests decrypted metadata
and takes every filter.
"""

from __future__ import annotations

from typing import Any

from ..arrays.filters import clauses
from ..errors import InvalidRequest

TEXT_ONLY = {"filterable": False, "pattern": False, "full_text": True}
PATTERN_OPS = ("$regex", "$contains")


def declare(schema: dict[str, Any] | None, text_fields: list[str] | None) -> dict[str, Any]:
    """The schema ``describe`` reports: every entry spelled out with its three flags (as the
    SDK sends them), ``text_fields`` and ``full_text`` entries as ``TEXT_ONLY``."""
    out: dict[str, Any] = {}
    for name, entry in (schema or {}).items():
        if isinstance(entry, dict):
            entry = {"filterable": True, "pattern": False, "full_text": False} | entry
            out[name] = TEXT_ONLY if entry["full_text"] else entry
        else:
            out[name] = entry
    for name in text_fields or []:
        out[name] = TEXT_ONLY
    return out


def of(config: dict[str, Any]) -> dict[str, Any]:
    """The declared schema of an index's configuration (its ``text`` fields included)."""
    return declare(config.get("metadata_schema"), (config.get("text") or {}).get("fields"))


def check(config: dict[str, Any], filters: Any) -> None:
    """400 when ``filters`` names a field the policy of the index configured by ``config``
    keeps out of ``query_metadata``."""
    schema = of(config)
    for path, ops in clauses(filters):
        entry = _entry(schema, path)
        if _get(entry, "full_text") or _get(entry, "filterable") is False:
            raise InvalidRequest(
                f"field {path[:64]!r} is not filterable in this index (metadata_schema); "
                "query with a vector to filter on it"
            )
        if any(op in PATTERN_OPS for op in ops) and _get(entry, "pattern") is not True:
            raise InvalidRequest(
                f"$regex and $contains need a field declared pattern: true in metadata_schema "
                f"({path[:64]!r} is not)"
            )


def _get(entry: Any, key: str) -> Any:
    return entry.get(key) if isinstance(entry, dict) else None


def _entry(schema: dict[str, Any], path: str) -> Any:
    """The policy of a dotted path: its own entry, else its top-level field's."""
    return schema[path] if path in schema else schema.get(path.split(".", 1)[0])
