"""The metadata filter language (API.md §7), compiled to a predicate over one item.

Mongo style: implicit equality ``{"f": v}``; ``$eq $ne $gt $gte $lt $lte $in $nin
$exists $regex $contains``; logical ``$and $or $nor $not``; dotted paths reach nested
fields. Numbers and booleans compare natively (``True`` is not ``1``). A field missing
on an item matches ``$nin`` (and ``$exists: false``) and no other operator, ``$ne``
included (as CyborgDB 0.18 does). ``{"$and": []}`` matches every item, ``{"$or": []}``
none. Unknown operators raise ``InvalidRequest`` (400) at compile time.

Filters run two ways: row by row (``compile_filter``, here), and over whole columns at
once (``masks.compile_mask``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import re2

from ..errors import InvalidRequest

Predicate = Callable[[dict[str, Any] | None], bool]
MAX_PATTERN = 1024  # characters of a $regex
MAX_FIELDS = 64  # distinct field paths one filter may name
UNSUPPORTED_OPERATOR = (
    "unsupported filter operator; use $eq $ne $gt $gte $lt $lte $in $nin $exists $regex "
    "$contains $not on fields and $and $or $nor $not to combine"
)
REGEX_MEMORY = 8 << 20  # bytes RE2 may use for one compiled pattern
MISSING = object()
_LOGICAL = {"$and", "$or", "$nor", "$not"}
_FIELD_OPS = {
    "$eq",
    "$ne",
    "$gt",
    "$gte",
    "$lt",
    "$lte",
    "$in",
    "$nin",
    "$exists",
    "$regex",
    "$contains",
    "$not",
    "$options",
}


def lookup(item: dict[str, Any] | None, path: list[str]) -> Any:
    """The value at a dotted path (split into parts), or ``MISSING``."""
    value: Any = item
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return MISSING
        value = value[part]
    return value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return bool(a == b)


def _eq(value: Any, operand: Any) -> bool:
    if _same(value, operand):
        return True
    return isinstance(value, list) and not isinstance(operand, list) and any(_same(v, operand) for v in value)


def _orderable(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return False
    numbers = (int, float)
    return (isinstance(a, numbers) and isinstance(b, numbers)) or (isinstance(a, str) and isinstance(b, str))


def _compare(op: str, operand: Any) -> Callable[[Any], bool]:
    def test(value: Any) -> bool:
        candidates = value if isinstance(value, list) else [value]
        for v in candidates:
            if _orderable(v, operand):
                if op == "$gt" and v > operand:
                    return True
                if op == "$gte" and v >= operand:
                    return True
                if op == "$lt" and v < operand:
                    return True
                if op == "$lte" and v <= operand:
                    return True
        return False

    return test


def field_op(op: str, operand: Any, spec: dict[str, Any]) -> Callable[[Any], bool]:
    """A test on a field's value (``MISSING`` when absent)."""
    if op == "$eq":
        return lambda v: v is not MISSING and _eq(v, operand)
    if op == "$ne":
        return lambda v: v is not MISSING and not _eq(v, operand)
    if op in ("$gt", "$gte", "$lt", "$lte"):
        cmp = _compare(op, operand)
        return lambda v: v is not MISSING and cmp(v)
    if op in ("$in", "$nin"):
        if not isinstance(operand, list):
            raise InvalidRequest(f"{op} needs a list")

        def member(v: Any) -> bool:
            return v is not MISSING and any(_eq(v, o) for o in operand)

        return member if op == "$in" else (lambda v: not member(v))
    if op == "$exists":
        want = bool(operand)
        return lambda v: (v is not MISSING) == want
    if op == "$regex":
        pattern = _regex(operand, spec.get("$options", ""))
        return lambda v: isinstance(v, str) and pattern.search(v) is not None
    if op == "$contains":

        def contains(v: Any) -> bool:
            if isinstance(v, str) and isinstance(operand, str):
                return operand in v
            if isinstance(v, list):
                return any(_same(x, operand) for x in v)
            return False

        return contains
    if op == "$not":
        inner = _field_tests(operand)
        return lambda v: not inner(v)
    if op == "$options":
        return lambda v: True
    raise InvalidRequest(UNSUPPORTED_OPERATOR)


def _regex(pattern: Any, options: Any) -> Any:
    """A ``$regex`` compiled by RE2: matching takes time linear in the text, whatever the
    pattern (a backtracking engine takes exponential time on ``(a+)+$``). Patterns RE2
    cannot run in linear time (lookaround, backreferences) are refused; errors never repeat
    the pattern."""
    if not isinstance(pattern, str):
        raise InvalidRequest("$regex needs a string pattern")
    if len(pattern) > MAX_PATTERN:
        raise InvalidRequest(f"$regex patterns are limited to {MAX_PATTERN} characters")
    if not isinstance(options, str) or set(options) - set("ims"):
        raise InvalidRequest("$options may hold only i, m and s")
    opts = re2.Options()
    opts.log_errors = False
    opts.max_mem = REGEX_MEMORY
    opts.case_sensitive = "i" not in options
    opts.dot_nl = "s" in options
    try:
        return re2.compile(("(?m)" if "m" in options else "") + pattern, opts)
    except re2.error:
        raise InvalidRequest(
            "$regex is not a pattern this server runs (RE2 syntax: no lookaround or backreferences)"
        ) from None


def _field_tests(spec: Any) -> Callable[[Any], bool]:
    if isinstance(spec, dict) and spec and all(isinstance(k, str) and k.startswith("$") for k in spec):
        for op in spec:
            if op not in _FIELD_OPS:
                raise InvalidRequest(UNSUPPORTED_OPERATOR)
        tests = [field_op(op, operand, spec) for op, operand in spec.items()]
        return lambda v: all(t(v) for t in tests)
    if isinstance(spec, dict) and any(isinstance(k, str) and k.startswith("$") for k in spec):
        raise InvalidRequest("a field condition cannot mix operators and plain keys")
    return field_op("$eq", spec, {})


def compile_filter(spec: Any) -> Predicate:
    """Compile a filter document; ``{}``/``None`` matches everything. At most
    ``MAX_FIELDS`` distinct field paths: each is a column built over every row."""
    predicate = _compile(spec)
    if len(_paths(spec)) > MAX_FIELDS:
        raise InvalidRequest(f"a filter may name at most {MAX_FIELDS} distinct fields")
    return predicate


def _paths(spec: Any) -> set[str]:
    """The field paths a (valid) filter document names."""
    return {path for path, _ in clauses(spec)}


def clauses(spec: Any) -> list[tuple[str, list[str]]]:
    """``(field path, operators)`` of every field clause of a (valid) filter document, through
    ``$and``/``$or``/``$nor``/``$not``; implicit equality is ``$eq``."""
    out: list[tuple[str, list[str]]] = []
    if not isinstance(spec, dict):
        return out
    for key, value in spec.items():
        if key == "$not":
            out += clauses(value)
        elif key.startswith("$"):
            for part in value if isinstance(value, list) else []:
                out += clauses(part)
        else:
            out.append((key, _ops(value)))
    return out


def _ops(value: Any) -> list[str]:
    if isinstance(value, dict) and value and all(isinstance(k, str) and k.startswith("$") for k in value):
        ops = [k for k in value if k != "$not"]
        return ops + (_ops(value["$not"]) if "$not" in value else [])
    return ["$eq"]


def _compile(spec: Any) -> Predicate:
    if spec is None:
        return lambda item: True
    if not isinstance(spec, dict):
        raise InvalidRequest("filters must be a JSON object")
    clauses: list[Predicate] = []
    for key, value in spec.items():
        if key.startswith("$"):
            clauses.append(_logical(key, value))
        else:
            clauses.append(_field_clause(key.split("."), _field_tests(value)))
    if not clauses:
        return lambda item: True
    if len(clauses) == 1:
        return clauses[0]
    return lambda item: all(c(item) for c in clauses)


def _field_clause(path: list[str], test: Callable[[Any], bool]) -> Predicate:
    return lambda item: test(lookup(item, path))


def _logical(op: str, value: Any) -> Predicate:
    if op not in _LOGICAL:
        raise InvalidRequest(UNSUPPORTED_OPERATOR)
    if op == "$not":
        inner = _compile(value)
        return lambda item: not inner(item)
    if not isinstance(value, list):
        raise InvalidRequest(f"{op} needs a list of filters")
    parts = [_compile(v) for v in value]
    if op == "$and":
        return lambda item: all(p(item) for p in parts)
    if op == "$or":
        return lambda item: any(p(item) for p in parts)
    return lambda item: not any(p(item) for p in parts)
