"""The OpenBLAS kernels faiss runs: named from the CPU's features before faiss loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ciphervec.engine.arrays.blas import cpu_flags, kernel_for, kernels_named

AVX512 = {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd"}


def test_kernels_follow_the_features_the_cpu_reports() -> None:
    assert kernel_for(AVX512 | {"avx2", "fma", "avx"}) == "SkylakeX"
    # AVX-512 without its byte/word instructions (Knights Landing) is not SkylakeX
    assert kernel_for({"avx512f", "avx512cd", "avx2", "fma", "avx"}) == "Haswell"
    assert kernel_for({"avx2", "avx"}) == "SandyBridge"  # AVX2 without FMA
    assert kernel_for({"sse4_2", "ssse3"}) is None
    assert kernel_for(set()) is None


def test_the_variable_is_named_for_the_load_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    with kernels_named({"avx2", "fma"}) as name:
        assert name == os.environ["OPENBLAS_CORETYPE"] == "Haswell"
    assert "OPENBLAS_CORETYPE" not in os.environ  # processes started later choose for themselves
    with kernels_named(set()) as name:
        assert name is None and "OPENBLAS_CORETYPE" not in os.environ


def test_a_given_choice_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Prescott")
    with kernels_named(AVX512) as name:
        assert name == os.environ["OPENBLAS_CORETYPE"] == "Prescott"
    assert os.environ["OPENBLAS_CORETYPE"] == "Prescott"


SCRIPT = """
import json, os
import threadpoolctl
from ciphervec.engine.arrays.ann import faiss
faiss.IndexFlatL2  # first use loads it
found = [i.get("architecture") for i in threadpoolctl.threadpool_info()
         if i["internal_api"] == "openblas" and "faiss" in i["filepath"]]  # the copy its wheel bundles
print(json.dumps({"faiss": found, "left": os.environ.get("OPENBLAS_CORETYPE")}))
"""


def test_faiss_runs_the_kernels_of_this_cpu() -> None:
    want = kernel_for(cpu_flags())
    if want is None:
        pytest.skip("no kernel set to name on this CPU (no /proc/cpuinfo or no AVX)")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    if not got["faiss"]:
        pytest.skip("this faiss does not bundle its own OpenBLAS")
    assert got["faiss"] == [want]
    assert got["left"] is None
