"""The metadata filter language (API.md §7), compiled to a predicate over one item.

Mongo style: implicit equality ``{"f": v}``; ``$eq $ne $gt $gte $lt $lte $in $nin
$exists $regex $contains``; logical ``$and $or $nor $not``; dotted paths reach nested
fields. Numbers and booleans compare natively (``True`` is not ``1``). A field missing
on an item matches ``$ne``/``$nin`` (and ``$exists: false``) and nothing else.
Unknown operators raise ``InvalidRequest`` (400) at compile time.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np

from .errors import InvalidRequest

Predicate = Callable[[dict[str, Any] | None], bool]
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
        flags = re.IGNORECASE if "i" in str(spec.get("$options", "")) else 0
        try:
            pattern = re.compile(str(operand), flags)
        except re.error as exc:
            raise InvalidRequest(f"invalid $regex: {exc}") from None
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
    raise InvalidRequest(f"unsupported filter operator: {op}")


def _field_tests(spec: Any) -> Callable[[Any], bool]:
    if isinstance(spec, dict) and spec and all(isinstance(k, str) and k.startswith("$") for k in spec):
        for op in spec:
            if op not in _FIELD_OPS:
                raise InvalidRequest(f"unsupported filter operator: {op}")
        tests = [_field_op(op, operand, spec) for op, operand in spec.items()]
        return lambda v: all(t(v) for t in tests)
    if isinstance(spec, dict) and any(isinstance(k, str) and k.startswith("$") for k in spec):
        raise InvalidRequest("a field condition cannot mix operators and plain keys")
    return _field_op("$eq", spec, {})


def compile_filter(spec: Any) -> Predicate:
    """Compile a filter document; ``{}``/``None`` matches everything."""
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
        raise InvalidRequest(f"unsupported filter operator: {op}")
    if op == "$not":
        inner = compile_filter(value)
        return lambda item: not inner(item)
    if not isinstance(value, list) or not value:
        raise InvalidRequest(f"{op} needs a non-empty list of filters")
    parts = [compile_filter(v) for v in value]
    if op == "$and":
        return lambda item: all(p(item) for p in parts)
    if op == "$or":
        return lambda item: any(p(item) for p in parts)
    return lambda item: not any(p(item) for p in parts)


# -- vectorised evaluation over columns ------------------------------------------------------
class Column:
    """One metadata field across all rows, split by JSON type for vectorised comparisons."""

    def __init__(self, values: list[Any]) -> None:
        n = len(values)
        self.values = values
        self.present = np.fromiter((v is not MISSING for v in values), dtype=bool, count=n)
        self.is_bool = np.fromiter((isinstance(v, bool) for v in values), dtype=bool, count=n)
        # numbers float64 holds exactly; larger integers go row by row with the lists
        self.is_num = np.fromiter((_exact_number(v) for v in values), dtype=bool, count=n)
        self.is_str = np.fromiter((isinstance(v, str) for v in values), dtype=bool, count=n)
        # lists, objects and nulls: compared row by row with the scalar semantics above
        self.other = self.present & ~(self.is_bool | self.is_num | self.is_str)
        numbers = [v if _exact_number(v) else 0 for v in values]
        self.num = np.where(self.is_num, np.array(numbers, dtype=np.float64), np.nan)
        self.boolean = np.array([v is True for v in values], dtype=bool)
        self.text = np.array([v if isinstance(v, str) else "" for v in values], dtype=object)


def _exact_number(v: Any) -> bool:
    return isinstance(v, float) or (isinstance(v, int) and not isinstance(v, bool) and abs(v) < 2**53)


ColumnSource = Callable[[tuple[str, ...]], Column]
MaskFn = Callable[[ColumnSource, int], np.ndarray]


def compile_mask(spec: Any) -> MaskFn:
    """Like ``compile_filter`` but evaluated over whole columns at once (one bool per row)."""
    compile_filter(spec)  # validates; raises InvalidRequest on unknown operators
    return _mask_doc(spec or {})


def _mask_doc(spec: dict[str, Any]) -> MaskFn:
    parts: list[MaskFn] = []
    for key, value in spec.items():
        if key.startswith("$"):
            parts.append(_mask_logical(key, value))
        else:
            parts.append(_mask_field(tuple(key.split(".")), value))

    def run(columns: ColumnSource, n: int) -> np.ndarray:
        mask = np.ones(n, dtype=bool)
        for part in parts:
            mask &= part(columns, n)
        return mask

    return run


def _mask_logical(op: str, value: Any) -> MaskFn:
    if op == "$not":
        inner = _mask_doc(value)
        return lambda columns, n: ~inner(columns, n)
    parts = [_mask_doc(v) for v in value]

    def run(columns: ColumnSource, n: int) -> np.ndarray:
        masks = [p(columns, n) for p in parts]
        if op == "$and":
            return np.logical_and.reduce(masks)
        hit = np.logical_or.reduce(masks)
        return hit if op == "$or" else ~hit

    return run


def _mask_field(path: tuple[str, ...], spec: Any) -> MaskFn:
    if isinstance(spec, dict) and spec and all(isinstance(k, str) and k.startswith("$") for k in spec):
        ops = [(op, operand) for op, operand in spec.items() if op != "$options"]
    else:
        ops = [("$eq", spec)]

    def run(columns: ColumnSource, n: int) -> np.ndarray:
        col = columns(path)
        mask = np.ones(n, dtype=bool)
        for op, operand in ops:
            fast = _mask_op(col, op, operand)
            if fast is None:  # no vectorised form: the row test on this column only
                test = _field_op(op, operand, spec if isinstance(spec, dict) else {})
                fast = np.fromiter((test(v) for v in col.values), dtype=bool, count=n)
            mask &= fast
        return mask

    return run


def _scalar_eq(col: Column, operand: Any) -> np.ndarray | None:
    if isinstance(operand, bool):
        return col.is_bool & (col.boolean == operand)
    if isinstance(operand, int | float):
        if not _exact_number(operand):
            return None  # beyond float64's exact integers: compare row by row
        return col.is_num & (col.num == operand)
    if isinstance(operand, str):
        return col.is_str & (col.text == operand)
    return None


def _rowwise(col: Column, op: str, operand: Any, mask: np.ndarray) -> np.ndarray:
    """Fix up rows holding lists/objects/null with the exact row semantics."""
    rows = np.flatnonzero(col.other)
    if len(rows):
        test = _field_op(op, operand, {})
        mask[rows] = [test(col.values[r]) for r in rows]
    return mask


def _mask_op(col: Column, op: str, operand: Any) -> np.ndarray | None:
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
        member = np.zeros(len(col.values), dtype=bool)
        for o in operand:
            hit = _scalar_eq(col, o)
            if hit is None:
                return None
            member |= hit
        member = _rowwise(col, "$in", operand, member)
        return member if op == "$in" else ~member
    if op in ("$gt", "$gte", "$lt", "$lte"):
        compare = {"$gt": np.greater, "$gte": np.greater_equal, "$lt": np.less, "$lte": np.less_equal}[op]
        if _exact_number(operand):
            with np.errstate(invalid="ignore"):
                out = col.is_num & compare(col.num, operand)
        elif isinstance(operand, str):
            out = col.is_str & compare(col.text, operand).astype(bool)
        else:
            return None
        return _rowwise(col, op, operand, out)
    return None
