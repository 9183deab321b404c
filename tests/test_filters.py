import pytest

from ciphervec.engine.arrays.filters import compile_filter
from ciphervec.engine.errors import InvalidRequest

ITEMS = {
    "a": {"n": 5, "s": "apple pie", "b": True, "tags": ["x", "y"], "loc": {"city": "Paris"}},
    "b": {"n": 10, "s": "banana", "b": False, "tags": ["y"], "loc": {"city": "Rome"}},
    "c": {"n": 1, "s": "cherry"},
    "d": None,
}


def match(spec):
    f = compile_filter(spec)
    return sorted(k for k, v in ITEMS.items() if f(v))


@pytest.mark.parametrize(
    "spec,expected",
    [
        ({}, ["a", "b", "c", "d"]),
        ({"n": 5}, ["a"]),
        ({"n": {"$eq": 10}}, ["b"]),
        ({"n": {"$ne": 5}}, ["b", "c"]),  # d lacks n: $ne leaves it out (CyborgDB 0.18)
        ({"n": {"$gt": 1}}, ["a", "b"]),
        ({"n": {"$gte": 5, "$lt": 10}}, ["a"]),
        ({"n": {"$lte": 5}}, ["a", "c"]),
        ({"n": {"$in": [1, 10]}}, ["b", "c"]),
        ({"n": {"$nin": [1, 10]}}, ["a", "d"]),
        ({"b": {"$exists": True}}, ["a", "b"]),
        ({"b": {"$exists": False}}, ["c", "d"]),
        ({"s": {"$regex": "^b"}}, ["b"]),
        ({"s": {"$regex": "PIE", "$options": "i"}}, ["a"]),
        ({"s": {"$contains": "err"}}, ["c"]),
        ({"tags": {"$contains": "x"}}, ["a"]),
        ({"tags": "y"}, ["a", "b"]),
        ({"loc.city": "Rome"}, ["b"]),
        ({"$and": [{"n": {"$gt": 1}}, {"b": False}]}, ["b"]),
        ({"$or": [{"n": 1}, {"loc.city": "Paris"}]}, ["a", "c"]),
        ({"$nor": [{"n": 1}, {"n": 5}]}, ["b", "d"]),
        ({"n": {"$not": {"$gt": 4}}}, ["c", "d"]),
        ({"$not": {"n": 5}}, ["b", "c", "d"]),
        ({"n": 5, "b": True}, ["a"]),
        ({"$and": []}, ["a", "b", "c", "d"]),
        ({"$or": []}, []),
        ({"$nor": []}, ["a", "b", "c", "d"]),
        ({"$and": [{"$or": []}]}, []),
    ],
)
def test_operators(spec, expected):
    assert match(spec) == expected


def test_booleans_are_not_numbers():
    assert match({"b": 1}) == []
    assert match({"b": True}) == ["a"]
    assert match({"n": {"$gt": False}}) == []


def test_type_mismatch_compares_false():
    assert match({"s": {"$gt": 3}}) == []


@pytest.mark.parametrize(
    "spec",
    [
        {"n": {"$near": 1}},
        {"$xor": [{"n": 1}]},
        {"n": {"$in": 3}},
        {"$and": {"n": 1}},
        {"s": {"$regex": "("}},
        {"n": {"$gt": 1, "plain": 2}},
    ],
)
def test_bad_filters_are_400(spec):
    with pytest.raises(InvalidRequest):
        compile_filter(spec)


def test_filters_must_be_objects():
    with pytest.raises(InvalidRequest):
        compile_filter([1, 2])


MIXED = [
    {"n": 5, "s": "apple pie", "b": True, "tags": ["x", "y"], "loc": {"city": "Paris"}},
    {"n": 10, "s": "banana", "b": False, "tags": ["y"], "loc": {"city": "Rome"}},
    {"n": 1.5, "s": "cherry", "tags": "x"},
    None,
    {"n": None, "s": 7, "b": 1, "big": 2**60},
    {"n": [1, 10], "s": ["banana", "kiwi"], "big": 2**60 + 1},
]
SPECS = [
    {},
    {"n": 5},
    {"n": 10},
    {"n": {"$ne": 10}},
    {"n": {"$gt": 1, "$lte": 10}},
    {"n": {"$in": [1, 10, 1.5]}},
    {"n": {"$nin": [1, 10]}},
    {"n": None},
    {"s": "banana"},
    {"s": {"$gte": "b"}},
    {"s": {"$in": ["kiwi", "cherry"]}},
    {"b": True},
    {"b": 1},
    {"b": {"$exists": False}},
    {"tags": "x"},
    {"loc.city": {"$ne": "Rome"}},
    {"big": 2**60},
    {"big": {"$gt": 2**60}},
    {"s": {"$regex": "an"}},
    {"$or": [{"n": 1.5}, {"b": False}], "s": {"$exists": True}},
    {"$nor": [{"n": 5}, {"s": "banana"}]},
    {"$not": {"tags": {"$contains": "y"}}},
    {"n": {"$not": {"$gt": 4}}},
    {"b": {"$ne": True}},
    {"$and": []},
    {"$or": []},
    {"$or": [], "n": 5},
]


@pytest.mark.parametrize("spec", SPECS)
def test_vectorised_masks_agree_with_row_predicates(spec, xp):
    import numpy as np

    from ciphervec.engine.arrays.filters import lookup
    from ciphervec.engine.arrays.masks import Column, compile_mask
    from tests.conftest import host

    row = compile_filter(spec)
    expected = [row(item) for item in MIXED]
    columns = {}

    def column(path):
        if path not in columns:
            columns[path] = Column([lookup(item, list(path)) for item in MIXED], xp)
        return columns[path]

    got = compile_mask(spec)(column, len(MIXED), xp)
    assert got.dtype == xp.bool and host(got).dtype == np.bool_ and host(got).tolist() == expected


def test_regex_runs_in_linear_time_on_a_catastrophic_pattern():
    import time

    items = [{"s": "a" * n + "!"} for n in range(20, 60)]
    pred = compile_filter({"s": {"$regex": "(a+)+$"}})
    t0 = time.perf_counter()
    assert not any(pred(i) for i in items)  # a backtracking engine needs ~4^(n/2) steps each
    assert time.perf_counter() - t0 < 0.5


@pytest.mark.parametrize(
    "spec, expect",
    [
        ({"s": {"$regex": "(?=secret-lookahead)"}}, "RE2"),
        ({"s": {"$regex": "(secret)\\1"}}, "RE2"),
        ({"s": {"$regex": "x" * 1025}}, "limited to 1024"),
        ({"s": {"$regex": "a", "$options": "secretx"}}, "only i, m and s"),
        ({"s": {"$regex": 7}}, "string pattern"),
    ],
)
def test_refused_patterns_say_why_without_repeating_them(spec, expect):
    with pytest.raises(InvalidRequest) as err:
        compile_filter(spec)
    assert expect in err.value.detail and "secret" not in err.value.detail


def test_regex_options_multiline_and_dotall():
    assert compile_filter({"s": {"$regex": "^b$", "$options": "m"}})({"s": "a\nb\nc"})
    assert not compile_filter({"s": {"$regex": "^b$"}})({"s": "a\nb\nc"})
    assert compile_filter({"s": {"$regex": "a.b", "$options": "s"}})({"s": "a\nb"})
    assert not compile_filter({"s": {"$regex": "a.b"}})({"s": "a\nb"})


def test_a_filter_names_at_most_64_distinct_fields():
    """Each distinct field is a column built over every row: the count is bounded (400)."""
    from ciphervec.engine.arrays.filters import MAX_FIELDS

    wide = {f"f{i}": i for i in range(MAX_FIELDS)}
    assert compile_filter(wide)({f"f{i}": i for i in range(MAX_FIELDS)})
    assert compile_filter({"$or": [{"f0": 0}, {"f0": 1}] * 100})({"f0": 1})  # repeats are one field
    with pytest.raises(InvalidRequest):
        compile_filter({**wide, "$or": [{"extra": 1}]})
    with pytest.raises(InvalidRequest):
        compile_filter({"$not": {"$and": [{f"g{i}": i} for i in range(MAX_FIELDS + 1)]}})
