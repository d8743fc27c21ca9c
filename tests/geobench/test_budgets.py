"""--budget: full is each task's protocol as configured, quick a smaller schedule over the same input."""

from __future__ import annotations

from pathlib import Path

import pytest

from geodino.errors import ConfigError
from geodino.geobench import TASKS, load_protocol
from geodino.geobench.protocol import load_budget

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


@pytest.mark.parametrize("task", sorted(TASKS))
def test_quick_is_a_smaller_schedule_over_the_same_input(task):
    full, quick = load_protocol(task), load_protocol(task, budget="quick")
    assert load_protocol(task, budget="full") == full
    assert quick["input"] == full["input"]  # same features: the cache is shared between budgets
    assert quick["segmentation"]["input_size"] == full["segmentation"]["input_size"]
    assert quick["segmentation"]["iterations"] < full["segmentation"]["iterations"]
    assert len(quick["segmentation"]["lr"]) == 1 and quick["segmentation"]["heads"] == ["linear"]
    assert quick["classification"]["logreg"]["c_num"] < full["classification"]["logreg"]["c_num"]
    assert quick["evaluation"]["bootstrap"] < full["evaluation"]["bootstrap"]
    assert load_protocol(task, overrides={"segmentation": {"iterations": 7}},
                         budget="quick")["segmentation"]["iterations"] == 7  # --set comes after the budget


def test_paper_protocol_is_the_full_budget_and_unknown_budgets_are_refused():
    cfg = load_protocol("m-cashew-plant", budget="full")
    assert cfg["segmentation"]["iterations"] == 40000 and len(cfg["segmentation"]["lr"]) == 4
    assert load_budget("full")[0] == {}
    with pytest.raises(ConfigError, match="choose full or quick"):
        load_budget("fast")


def test_readme_documents_the_quick_budget():
    section = README.split("## GEO-Bench")[1].split("\n## ")[0]
    assert "--budget quick" in section and "configs/geobench/budgets/quick.yaml" in section
