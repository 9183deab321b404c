"""Wire models of the CyborgDB REST v1 API (requests). Unknown fields are ignored and
every optional field may be absent or JSON null, as the SDK sends explicit nulls."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from ..engine.model import MAX_DIMENSION, MAX_LISTS

Number = StrictFloat | StrictInt
# Every numeric knob is bounded: out of range is a 422, never an overflow deeper down.
Count = Annotated[StrictInt, Field(ge=0, le=2**31 - 1)]
Lists = Annotated[StrictInt, Field(ge=0, le=MAX_LISTS)]
Multiplier = Annotated[StrictInt, Field(ge=0, le=1000)]
Dimension = Annotated[StrictInt, Field(ge=1, le=MAX_DIMENSION)]
Fraction = Annotated[StrictFloat | StrictInt, Field(ge=0, le=1, allow_inf_nan=False)]


class Wire(BaseModel):
    # defer_build: each model's validator is built when it first validates, not at import
    # (building all of them was a tenth of a cold start's import).
    model_config = ConfigDict(extra="ignore", defer_build=True)


EXAMPLE_KEY = "5c" * 32  # the documents' example index key (64 hex digits)


class IndexRequest(Wire):
    index_name: Annotated[StrictStr, Field(examples=["docs"])]
    index_key: Annotated[StrictStr | None, Field(examples=[EXAMPLE_KEY])] = None


class CreateIndexRequest(IndexRequest):
    kms_name: StrictStr | None = None
    dimension: StrictInt | None = None
    metric: StrictStr | None = None
    embedding_model: StrictStr | None = None
    storage_precision: StrictStr | None = None
    metadata_schema: dict[str, Any] | None = None
    text_fields: list[StrictStr] | None = None
    bm25_k1: Number | None = None
    bm25_b: Number | None = None
    index_config: dict[str, Any] | None = None


class RotateKeyRequest(IndexRequest):
    kms_name: StrictStr | None = None
    new_index_key: StrictStr | None = None
    new_kms_name: StrictStr | None = None
    reencrypt: StrictBool | None = None


class TrainRequest(IndexRequest):
    n_lists: Lists | None = None
    batch_size: Count | None = None
    max_iters: Multiplier | None = None
    tolerance: Fraction | None = None
    max_memory: Annotated[StrictInt, Field(ge=0, le=2**53)] | None = None


class Item(Wire):
    id: StrictStr
    vector: list[Number] | None = None
    contents: StrictStr | None = None
    metadata: dict[str, Any] | None = None


class UpsertRequest(IndexRequest):
    items: list[Item]


class BinaryBatch(Wire):
    ids: list[StrictStr]
    vectors_b64: StrictStr
    dimension: Dimension
    metadata: list[dict[str, Any] | None] | None = None
    contents: list[StrictStr | None] | None = None


class UpsertBinaryRequest(IndexRequest):
    batch: BinaryBatch


class SearchOptions(IndexRequest):
    top_k: StrictInt | None = None  # 1 .. CIPHERVEC_MAX_TOP_K, checked where the setting is known
    n_probes: Lists | None = None
    greedy: StrictBool | None = None
    rerank_mult: Multiplier | None = None
    filters: dict[str, Any] | None = None
    include: list[StrictStr] | None = None
    # The BM25 leg (text alone ranks by BM25; with vectors it is hybrid, fused by rank).
    text: StrictStr | None = None
    text_fields: list[StrictStr] | None = None
    text_field_weights: list[Number] | None = None
    require_all_terms: StrictBool | None = None
    alpha: Fraction | None = None
    # Below 1 (window_mult) or at most 0 (rrf_k) is a 400 from the route, as CyborgDB answers.
    rrf_k: Annotated[StrictFloat | StrictInt, Field(ge=-(10**6), le=10**6, allow_inf_nan=False)] | None = None
    window_mult: Annotated[StrictInt, Field(ge=-(2**31), le=1000)] | None = None


class QueryRequest(SearchOptions):
    query_vectors: list[Number] | list[list[Number]] | None = None
    query_contents: StrictStr | None = None


class QueryBatch(Wire):
    vectors_b64: StrictStr
    dimension: Dimension


class QueryBinaryRequest(SearchOptions):
    batch: QueryBatch


class GetRequest(IndexRequest):
    ids: list[StrictStr]
    include: list[StrictStr] | None = None


class DeleteRequest(IndexRequest):
    ids: list[StrictStr]


class QueryMetadataRequest(IndexRequest):
    filters: dict[str, Any] | None = None
    top_k: Count | None = None
    order_by: StrictStr | dict[str, StrictInt] | None = None
    ascending: StrictBool | None = True
    text: StrictStr | None = None
    text_fields: list[StrictStr] | None = None
    text_field_weights: list[Number] | None = None
    require_all_terms: StrictBool | None = None


class CreateUserRequest(Wire):
    permissions: list[StrictStr]
    index_key: StrictStr | None = None


class LoadColumns(Wire):
    id: StrictStr | None = None
    vector: StrictStr | None = None
    metadata: StrictStr | None = None
    contents: StrictStr | None = None


class LoadRequest(IndexRequest):
    source: StrictStr
    columns: LoadColumns | None = None


def build() -> None:
    """Build every wire model's validator now (``defer_build`` leaves it to first use)."""
    for model in list(globals().values()):
        if isinstance(model, type) and issubclass(model, Wire) and not model.__pydantic_complete__:
            model.model_rebuild(force=True)
