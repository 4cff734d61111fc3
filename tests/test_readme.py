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


def test_readme_task_kind_example_is_one_registry_entry():
    """The "Adding a task kind" example registers a kind that the whole dispatch then serves."""
    from benchmark import tasks
    from benchmark.tasks import KINDS
    from datamodules.task_spec import TaskSpec

    section = README.read_text().split("## Adding a task kind", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    try:
        exec(compile(code, str(README), "exec"), {})
        spec = TaskSpec("age", "age")
        raw, target = torch.tensor([[30.0], [41.0]]), torch.tensor([32.0, 40.0])
        assert tasks.head_channels(spec) == 1 and tasks.task_loss(spec, raw, target).item() == 1.5
        metric = tasks.make_metric(spec)
        metric.update(raw, target)
        assert metric.compute() == {"mae": torch.tensor(1.5)}
        assert tasks.metric_table([spec]) == {"age/mae": {"direction": "lower", "unit": "years"}}
        assert tasks.metric_infos(spec)[0].decimals == 4
        tasks.validate_batch([spec], {"image": torch.zeros(2, 3, 4, 4), "targets": {"age": target}})
    finally:
        KINDS._kinds.pop("age", None)
