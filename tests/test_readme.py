"""The README's code runs as written (so the tour cannot drift from the API)."""

from __future__ import annotations

import pathlib
import re

import torch

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_tour_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no python code block"
    monkeypatch.chdir(tmp_path)  # the tour saves a file
    torch.manual_seed(0)
    for code in blocks:
        exec(compile(code, str(README), "exec"), {})
    assert (tmp_path / "flow.pt").exists()
