"""Every Python block of the README runs as written: here, or in the test named for it;
the one that needs the internet is only compiled, and says so."""

from __future__ import annotations

import re
import sys
import types

import pytest
import torch
from readme_blocks import README

# a phrase of each block -> where it runs ("here", another test, or why it cannot)
BLOCKS = {
    'sequence = load_sequence("embedded")  # Split-MNIST': "tests/e2e/test_readme_core.py",
    'ef.grow(model, state, unit="blocks.1", neurons=64': "here",
    "fresh = MLP(in_features=784": "tests/e2e/test_readme_core.py",
    "from eidetic_func.models import MLP, ConvNet, ResNet": "here",
    "class Net(nn.Module)": "here",
    "ef.multihead(torchvision.models.resnet18": "here",
    'CIFAR100("data"': "compiled only: it downloads CIFAR-100 (the suite never downloads)",
    "class L2Anchor": "tests/methods/test_readme_method.py",
    "cl = Synapse(model, EWC(": "here",
}


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)


def _where(block: str) -> str:
    found = [where for phrase, where in BLOCKS.items() if phrase in block]
    assert len(found) == 1, f"a README block no test accounts for:\n{block[:300]}"
    return found[0]


def test_every_readme_block_is_accounted_for_and_compiles() -> None:
    blocks = _blocks()
    assert sorted(_where(b) for b in blocks) == sorted(BLOCKS.values())
    for block in blocks:
        compile(block, str(README), "exec")


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("phrase", [phrase for phrase, where in BLOCKS.items() if where == "here"])
def test_a_readme_block_runs_as_written(phrase: str, monkeypatch: pytest.MonkeyPatch) -> None:
    (block,) = [b for b in _blocks() if phrase in b]
    module = types.ModuleType("readme_block")  # dataclasses look their module up
    monkeypatch.setitem(sys.modules, module.__name__, module)
    torch.manual_seed(0)
    exec(compile(block, str(README), "exec"), module.__dict__)
