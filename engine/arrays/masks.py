"""Filters over whole columns at once: ``compile_mask`` evaluates a filter document
(``filters``) as boolean arrays of any array-API namespace (numpy, CuPy, array-api-strict).

Columns are built on the host from decrypted metadata and handed to the namespace once;
strings become integer codes ordered like the strings, so equality and ordering are integer
comparisons there. Lists, objects, ``$regex`` and ``$contains`` are evaluated row by row on
the host and merged in; those row tests are counted against a per-request budget
(``compile_mask``'s ``max_row_tests``), refused before they run.
"""

from __future__ import annotations

import operator
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import numpy as np

from ..errors import InvalidRequest
from .filters import MISSING, compile_filter, field_op


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
        if not parts:  # {"$and": []} and {"$nor": []} match every row, {"$or": []} none
            return xp.ones(n, dtype=xp.bool) if op != "$or" else xp.zeros(n, dtype=xp.bool)
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
                test = field_op(op, operand, spec if isinstance(spec, dict) else {})
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
    test = field_op(op, operand, {})
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
        return eq if op == "$eq" else ~eq & col.present
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
