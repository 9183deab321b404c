"""The README's examples, run as a reader would: every Python block through the official SDK
and every curl block through bash, against `ciphervec serve` (the port is the test's)."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.conftest import ROOT, ROOT_KEY, Server

README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(python|sh)\n(.*?)```", README, flags=re.S)
PLACEHOLDER = '"cv_…the key make run printed…"'


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("readme")
    srv = Server(tmp, "--store", f"file://{tmp}/data", name="readme")
    yield srv
    srv.stop()


def test_the_readme_has_what_it_promises():
    assert len(README.splitlines()) <= 250
    assert README.split("```sh\n", 1)[1].startswith("make run ") and "\nmake test " in README[:400]
    assert sum(1 for kind, _ in BLOCKS if kind == "python") >= 3
    assert sum(1 for kind, code in BLOCKS if kind == "sh" and "curl -s" in code) >= 2


def test_every_example_runs(server, capsys):
    session = {"KEY": ROOT_KEY}  # one Python session for all the blocks, as a reader would
    for kind, code in BLOCKS:  # in order: the seed curl creates the index the tour queries
        code = code.replace("http://127.0.0.1:8000", server.url)
        if kind == "python":
            exec(compile(code.replace(PLACEHOLDER, "KEY"), "README.md", "exec"), session)
            continue
        if "curl -s" not in code:
            continue  # the two make commands: `make test` is what runs this
        out = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", code],
            env={"KEY": ROOT_KEY, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        answers = [json.loads(line) for line in out.replace("}{", "}\n{").splitlines() if line.strip()]
        assert answers and all("status_code" not in a for a in answers), answers
    printed = capsys.readouterr().out
    assert "'id': 'a'" in printed and "n1" in printed  # the tour's query results
