"""The README's "Adding a method" example runs as written."""

import re
from pathlib import Path

import torch

from benchmark.methods import create
from benchmark.methods.registry import _BUILTINS

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_method_example_registers_and_aggregates():
    text = README.read_text()
    assert text.lstrip().startswith("# mtobench") and "make benchmark" in text and "make test" in text
    section = text.split("## Adding a method", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    try:
        exec(compile(code, str(README), "exec"), {})
        method = create("my_method", 3, temperature=0.5)
        jac = torch.randn(3, 7, generator=torch.Generator().manual_seed(0))
        direction = method.aggregate(jac)
        weights = torch.softmax(-jac.double().norm(dim=1) / 0.5, dim=0)
        torch.testing.assert_close(direction, weights.float() @ jac)
    finally:
        _BUILTINS.pop("my_method", None)
