"""Sentence embeddings on ONNX Runtime, from models exported at build time (``onnx_export``)."""

from __future__ import annotations

import importlib.util
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.embedding import CATALOGUE, MAX_TEXT_CHARS, ModelSpec, model_spec
from ..engine.errors import ModelUnavailable

log = logging.getLogger("ciphervec.embedding")

MODEL_FILE = "model.onnx"  # token ids → unit-length sentence embeddings (pooling inside)
TOKENIZER_FILE = "tokenizer.json"


def runtime_installed() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "tokenizers"))


def model_dirs(model_dir: str = "") -> list[Path]:
    """Where exported models are looked up: ``model_dir`` alone when set (an ``s3://``
    prefix holds sentence-transformers weights: nothing for this runtime), else this
    environment's ``share/ciphervec/models`` (``make install`` exports there) and the
    package's own ``models`` folder (the Lambda build puts them there)."""
    if model_dir:
        return [] if model_dir.startswith("s3://") else [Path(model_dir)]
    shared = Path(sys.prefix) / "share" / "ciphervec" / "models"
    return [shared, Path(__file__).resolve().parent.parent / "models"]


class OnnxModels:
    """The catalogue models exported for this host, each loaded once on first use."""

    def __init__(self, model_dir: str = "", batch: int = 64, threads: int = 0) -> None:
        self.dirs = model_dirs(model_dir)
        self.batch = max(1, batch)
        self.threads = threads  # 0: ONNX Runtime's default (one per physical core)
        self._models: dict[str, tuple[Any, Any]] = {}
        self._lock = threading.Lock()
        self.load_seconds: dict[str, float] = {}

    def _dir(self, spec: ModelSpec) -> Path | None:
        for root in self.dirs:
            path = root / spec.name
            if (path / MODEL_FILE).is_file() and (path / TOKENIZER_FILE).is_file():
                return path
        return None

    def available(self) -> list[ModelSpec]:
        if not runtime_installed():
            return []
        return [spec for spec in CATALOGUE.values() if spec.name in self._models or self._dir(spec)]

    def _model(self, spec: ModelSpec) -> tuple[Any, Any]:
        with self._lock:
            loaded = self._models.get(spec.name)
            if loaded is not None:
                return loaded
            path = self._dir(spec) if runtime_installed() else None
            if path is None:
                raise ModelUnavailable(
                    f"embedding model {spec.name} is not installed on this server (its ONNX export "
                    "is made by `make install` or the Lambda build; or set CIPHERVEC_EMBED_RUNTIME=torch)"
                )
            started = time.perf_counter()
            import onnxruntime as ort
            from tokenizers import Tokenizer

            options = ort.SessionOptions()
            if self.threads:
                options.intra_op_num_threads = self.threads
            session = ort.InferenceSession(
                str(path / MODEL_FILE), options, providers=["CPUExecutionProvider"]
            )
            tokenizer = Tokenizer.from_file(str(path / TOKENIZER_FILE))
            tokenizer.enable_truncation(max_length=spec.max_seq_length)
            pad = "[PAD]"  # BERT's padding token
            tokenizer.enable_padding(pad_id=tokenizer.token_to_id(pad) or 0, pad_token=pad)
            loaded = self._models[spec.name] = (session, tokenizer)
            self.load_seconds[spec.name] = time.perf_counter() - started
            log.info("embedding model loaded", extra={"model": spec.name, "runtime": "onnx"})
            return loaded

    def encode(self, model: str, texts: list[str]) -> np.ndarray:
        spec = model_spec(model)
        out = np.zeros((len(texts), spec.dimension), dtype=np.float32)
        if not texts:
            return out
        session, tokenizer = self._model(spec)
        # The model reads its first max_seq_length tokens: a longer text is cut before tokenizing.
        texts = [t[:MAX_TEXT_CHARS] for t in texts]
        # Longest first, so a batch pads to lengths alike (as sentence-transformers does).
        order = np.argsort([-len(t) for t in texts], kind="stable")
        for start in range(0, len(texts), self.batch):
            rows = order[start : start + self.batch]
            encoded = tokenizer.encode_batch([texts[r] for r in rows])
            ids = np.array([e.ids for e in encoded], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
            feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            out[rows] = session.run(None, feed)[0]
        return out
