"""Wire models of the API's answers: what each route's 200 (or 202) body holds, for the
OpenAPI document; the tests hold real answers to them, so neither can drift."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class Answer(BaseModel):
    # Exactly these fields (a test validates real answers: a new field must be written here).
    model_config = ConfigDict(extra="forbid", defer_build=True)


class Health(Answer):
    status: str
    api_version: str
    version: str


class Message(Answer):
    """What a change answers: ``status`` (``success``; ``queued`` or ``rewriting`` with 202)."""

    status: str
    message: str


class Upserted(Message):
    training_triggered: bool | None = None
    training_message: str | None = None


class KeyRotated(Message):
    key_mode: str  # client | kms


class IndexList(Answer):
    indexes: list[str]


class Bm25(Answer):
    k1: float
    b: float
    analyzer_version: str
    text_fields: list[str]


class KeyRotation(Answer):
    objects_under_old_keys: int
    old_keys_held: int
    rewriting: bool


class Description(Answer):
    index_name: str
    is_trained: bool
    dimension: int
    metric: str
    n_lists: int
    n_probes: int
    storage_precision: str
    metadata_schema: dict[str, Any]
    bm25: Bm25 | None
    index_type: str
    embedding_model: str | None
    index_config: dict[str, Any]
    key_rotation: KeyRotation


class Hit(Answer):
    """One row found: ``distance`` for a vector leg, ``score`` for a text or hybrid one, and the
    fields ``include`` asked for."""

    id: str
    distance: float | None = None
    score: float | None = None
    metadata: dict[str, Any] | None = None
    vector: list[float] | None = None
    contents: str | None = None


class Found(Answer):
    """One query's hits, or a list of them for a batch of queries."""

    results: list[Hit] | list[list[Hit]]


class Rows(Answer):
    results: list[Hit]


class Ids(Answer):
    ids: list[str]
    count: int


class MetadataHits(Answer):
    results: list[Hit]
    ids: list[str]
    count: int


class Count(Answer):
    result: int


class EmbeddingModel(Answer):
    name: str
    dimension: int
    max_seq_length: int


class EmbeddingModels(Answer):
    models: list[EmbeddingModel]


class TrainingStatus(Answer):
    training_indexes: list[str]
    currently_training: str | None
    queued_indexes: list[str]
    retrain_threshold: int
    worker_running: bool
    worker_pid: int | None
    global_training: dict[str, Any]


class UserKey(Answer):
    user_id: str
    api_key: str


class User(Answer):
    user_id: str
    permissions: list[str]


class Users(Answer):
    users: list[User]


class LoadStatus(Answer):
    job_id: str
    index_name: str
    status: str
    rows_read: int
    rows_loaded: int
    rows_refused: int
    refused: list[dict[str, Any]]
    bytes_read: int
    bytes_total: int
    progress: float | None
    seconds: float
    invocations: int
    created: float
    started: float | None
    finished: float | None
    index_count: int | None
    training_triggered: bool
    error: str | None
    rows_per_second: int | None = None
