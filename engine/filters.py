"""The metadata filter language (API.md §7), compiled to a predicate over one item.

Mongo style: implicit equality ``{"f": v}``; ``$eq $ne $gt $gte $lt $lte $in $nin
$exists $regex $contains``; logical ``$and $or $nor $not``; dotted paths reach nested
fields. Numbers and booleans compare natively (``True`` is not ``1``). A field missing
on an item matches ``$ne``/``$nin`` (and ``$exists: false``) and nothing else.
Unknown operators raise ``InvalidRequest`` (400) at compile time.

Filters run two ways: row by row (``compile_filter``), and over whole columns at once
(``compile_mask``) as boolean arrays of any array-API namespace (numpy, CuPy,
array-api-strict). Columns are built on the host from decrypted metadata and handed to the
namespace once; strings become integer codes ordered like the strings, so equality and
ordering are integer comparisons there. Lists, objects, ``$regex`` and ``$contains`` are
evaluated row by row on the host and merged in; those row tests are counted against a
per-request budget (``compile_mask``'s ``max_row_tests``), refused before they run.
"""

from __future__ import annotations

import operator
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import numpy as np
import re2

from .errors import InvalidRequest

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


def _field_op(op: str, operand: Any, spec: dict[str, Any]) -> Callable[[Any], bool]:
    """A test on a field's value (``MISSING`` when absent)."""
    if op == "$eq":
        return lambda v: v is not MISSING and _eq(v, operand)
    if op == "$ne":
        return lambda v: v is MISSING or not _eq(v, operand)
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
        tests = [_field_op(op, operand, spec) for op, operand in spec.items()]
        return lambda v: all(t(v) for t in tests)
    if isinstance(spec, dict) and any(isinstance(k, str) and k.startswith("$") for k in spec):
        raise InvalidRequest("a field condition cannot mix operators and plain keys")
    return _field_op("$eq", spec, {})


def compile_filter(spec: Any) -> Predicate:
    """Compile a filter document; ``{}``/``None`` matches everything. At most
    ``MAX_FIELDS`` distinct field paths: each is a column built over every row."""
    predicate = _compile(spec)
    if len(_paths(spec)) > MAX_FIELDS:
        raise InvalidRequest(f"a filter may name at most {MAX_FIELDS} distinct fields")
    return predicate


def _paths(spec: Any) -> set[str]:
    """The field paths a (valid) filter document names."""
    out: set[str] = set()
    if isinstance(spec, dict):
        for key, value in spec.items():
            if not key.startswith("$"):
                out.add(key)
            elif key == "$not":
                out |= _paths(value)
            elif isinstance(value, list):
                for part in value:
                    out |= _paths(part)
    return out


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
    if not isinstance(value, list) or not value:
        raise InvalidRequest(f"{op} needs a non-empty list of filters")
    parts = [_compile(v) for v in value]
    if op == "$and":
        return lambda item: all(p(item) for p in parts)
    if op == "$or":
        return lambda item: any(p(item) for p in parts)
    return lambda item: not any(p(item) for p in parts)


# -- vectorised evaluation over columns ------------------------------------------------------
class Column:
    """One metadata field across all rows, split by JSON type, as arrays of namespace ``xp``."""

    def __init__(self, values: list[Any], xp: Any) -> None:
        n = len(values)
        self.xp = xp
        self.values = values
        present = np.fromiter((v is not MISSING for v in values), dtype=bool, count=n)
        is_bool = np.fromiter((isinstance(v, bool) for v in values), dtype=bool, count=n)
        # numbers float64 holds exactly; larger integers go row by row with the lists
        is_num = np.fromiter((_exact_number(v) for v in values), dtype=bool, count=n)
        is_str = np.fromiter((isinstance(v, str) for v in values), dtype=bool, count=n)
        other = present & ~(is_bool | is_num | is_str)
        self.present, self.is_bool, self.is_num = xp.asarray(present), xp.asarray(is_bool), xp.asarray(is_num)
        self.is_str = xp.asarray(is_str)
        # lists, objects and nulls: compared row by row with the scalar semantics above
        self.other, self.other_rows = xp.asarray(other), np.flatnonzero(other).tolist()
        numbers = np.array([v if _exact_number(v) else 0 for v in values], dtype=np.float64)
        self.num = xp.asarray(np.where(is_num, numbers, np.nan))
        self.boolean = xp.asarray(np.array([v is True for v in values], dtype=bool))
        # each string as its rank among the column's distinct strings (-1: not a string)
        self.strings = sorted({v for v in values if isinstance(v, str)})
        rank = {v: r for r, v in enumerate(self.strings)}
        codes = np.fromiter((rank[v] if isinstance(v, str) else -1 for v in values), dtype=np.int64, count=n)
        self.code = xp.asarray(codes)

    def asarray(self, mask: np.ndarray) -> Any:
        """A host mask in this column's namespace."""
        return self.xp.asarray(mask)

    def string_range(self, operand: str) -> tuple[int, int]:
        """Codes ``[lo, hi)`` of strings equal to ``operand``; ``lo``: how many are smaller."""
        return bisect_left(self.strings, operand), bisect_right(self.strings, operand)


def _exact_number(v: Any) -> bool:
    return isinstance(v, float) or (isinstance(v, int) and not isinstance(v, bool) and abs(v) < 2**53)


ColumnSource = Callable[[tuple[str, ...]], Column]
MaskFn = Callable[[ColumnSource, int, Any], Any]


class FilterBudget:
    """Row-by-row tests one filter evaluation may still run; ``charge`` refuses (400) the
    clause that would go over, before it runs."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.used = 0

    def charge(self, rows: int) -> None:
        self.used += rows
        if self.limit is not None and self.used > self.limit:
            raise InvalidRequest(
                f"this filter tests rows one by one ($regex, $contains, lists or objects) more "
                f"than {self.limit:,} times over this index (CIPHERVEC_MAX_FILTER_SCAN): use "
                "fewer such clauses, or equality and range clauses, which run vectorised"
            )


def compile_mask(spec: Any, max_row_tests: int | None = None) -> MaskFn:
    """Like ``compile_filter`` but evaluated over whole columns at once: ``mask(columns, n,
    xp)`` gives one boolean per row, an array of namespace ``xp``. Each evaluation may run at
    most ``max_row_tests`` row-by-row tests (``FilterBudget``)."""
    compile_filter(spec)  # validates; raises InvalidRequest on unknown operators
    inner = _mask_doc(spec or {})

    def run(columns: ColumnSource, n: int, xp: Any) -> Any:
        token = _BUDGET.set(FilterBudget(max_row_tests))
        try:
            return inner(columns, n, xp)
        finally:
            _BUDGET.reset(token)

    return run


_BUDGET: ContextVar[FilterBudget | None] = ContextVar("filter_budget", default=None)


def _charge(rows: int) -> None:
    budget = _BUDGET.get()
    if budget is not None:
        budget.charge(rows)


def _mask_doc(spec: dict[str, Any]) -> MaskFn:
    parts: list[MaskFn] = []
    for key, value in spec.items():
        if key.startswith("$"):
            parts.append(_mask_logical(key, value))
        else:
            parts.append(_mask_field(tuple(key.split(".")), value))

    def run(columns: ColumnSource, n: int, xp: Any) -> Any:
        mask = xp.ones(n, dtype=xp.bool)
        for part in parts:
            mask = mask & part(columns, n, xp)
        return mask

    return run


def _mask_logical(op: str, value: Any) -> MaskFn:
    if op == "$not":
        inner = _mask_doc(value)
        return lambda columns, n, xp: ~inner(columns, n, xp)
    parts = [_mask_doc(v) for v in value]

    def run(columns: ColumnSource, n: int, xp: Any) -> Any:
        masks = [p(columns, n, xp) for p in parts]
        hit = masks[0]
        for m in masks[1:]:
            hit = (hit & m) if op == "$and" else (hit | m)
        return hit if op in ("$and", "$or") else ~hit

    return run


def _mask_field(path: tuple[str, ...], spec: Any) -> MaskFn:
    if isinstance(spec, dict) and spec and all(isinstance(k, str) and k.startswith("$") for k in spec):
        ops = [(op, operand) for op, operand in spec.items() if op != "$options"]
    else:
        ops = [("$eq", spec)]

    def run(columns: ColumnSource, n: int, xp: Any) -> Any:
        col = columns(path)
        mask = xp.ones(n, dtype=xp.bool)
        for op, operand in ops:
            fast = _mask_op(col, op, operand)
            if fast is None:  # no vectorised form: the row test on this column only
                _charge(n)
                test = _field_op(op, operand, spec if isinstance(spec, dict) else {})
                fast = col.asarray(np.fromiter((test(v) for v in col.values), dtype=bool, count=n))
            mask = mask & fast
        return mask

    return run


def _scalar_eq(col: Column, operand: Any) -> Any:
    if isinstance(operand, bool):
        return col.is_bool & (col.boolean == operand)
    if isinstance(operand, int | float):
        if not _exact_number(operand):
            return None  # beyond float64's exact integers: compare row by row
        return col.is_num & (col.num == float(operand))
    if isinstance(operand, str):
        lo, hi = col.string_range(operand)
        return (col.code >= lo) & (col.code < hi)
    return None


def _rowwise(col: Column, op: str, operand: Any, mask: Any) -> Any:
    """Fix up rows holding lists/objects/null with the exact row semantics."""
    rows = col.other_rows
    if not rows:
        return mask
    _charge(len(rows))
    test = _field_op(op, operand, {})
    fixed = np.zeros(len(col.values), dtype=bool)
    fixed[rows] = [test(col.values[r]) for r in rows]
    return col.xp.where(col.other, col.asarray(fixed), mask)


_ORDER = {"$gt": operator.gt, "$gte": operator.ge, "$lt": operator.lt, "$lte": operator.le}
# Over string codes: ``lo`` strings are smaller than the operand, ``hi`` no greater.
_CODE_ORDER = {
    "$gt": (operator.ge, True),
    "$gte": (operator.ge, False),
    "$lt": (operator.lt, False),
    "$lte": (operator.lt, True),
}


def _mask_op(col: Column, op: str, operand: Any) -> Any:
    if op == "$exists":
        return col.present == bool(operand)
    if op in ("$eq", "$ne"):
        eq = _scalar_eq(col, operand)
        if eq is None:
            return None
        eq = _rowwise(col, "$eq", operand, eq)
        return eq if op == "$eq" else ~eq
    if op in ("$in", "$nin"):
        if not isinstance(operand, list):
            return None
        member = col.xp.zeros(len(col.values), dtype=col.xp.bool)
        for o in operand:
            hit = _scalar_eq(col, o)
            if hit is None:
                return None
            member = member | hit
        member = _rowwise(col, "$in", operand, member)
        return member if op == "$in" else ~member
    if op in ("$gt", "$gte", "$lt", "$lte"):
        if _exact_number(operand):  # NaN (rows that are not numbers) compares False
            out = col.is_num & _ORDER[op](col.num, float(operand))
        elif isinstance(operand, str):
            lo, hi = col.string_range(operand)
            compare, use_hi = _CODE_ORDER[op]
            out = col.is_str & compare(col.code, hi if use_hi else lo)
        else:
            return None
        return _rowwise(col, op, operand, out)
    return None
