"""Any dataset as tasks: class splits with labels per head, image folders, a user's network."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from image_folders import image_folder, task_folders
from small_runs import SMALL_ARGS
from torch.utils.data import TensorDataset

import eidetic_func as ef
from eidetic_func.data.task_split import image_folder as load_image_folder
from eidetic_func.data.task_split import split_dataset
from eidetic_func.runner.cli import main


class Labelled(TensorDataset):
    """A torchvision-style dataset: items ``(x, class id)`` and a ``targets`` attribute."""

    def __init__(self, n: int, classes: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.targets = torch.arange(n) % classes
        super().__init__(torch.randn(n, 1, 4, 4, generator=g), self.targets)


def test_key_to_targets_splits_any_dataset_with_labels_remapped_per_head() -> None:
    train, test = Labelled(40, 5, 0), Labelled(20, 5, 1)
    seq = split_dataset(train, test, key_to_targets={"a": [3, 1], "b": [0, 4]})
    assert [t.name for t in seq] == ["a", "b"] and seq.num_classes == (2, 2)
    assert seq.input_shape == (1, 4, 4)
    for task in seq:
        for i in range(len(task.train)):
            x, y = task.train[i]
            original = int(train.targets[task.train.indices[i]])  # type: ignore[attr-defined]
            assert task.classes[int(y)] == original
            assert torch.equal(x, train.tensors[0][task.train.indices[i]])  # type: ignore[attr-defined]
    by_count = split_dataset(train, test, classes_per_task=2)
    assert [t.classes for t in by_count] == [(0, 1), (2, 3)]


def test_datasets_without_targets_or_with_missing_classes_are_clear_errors() -> None:
    bare = TensorDataset(torch.randn(4, 1, 2, 2), torch.zeros(4))
    with pytest.raises(ef.DataError, match="no `targets`"):
        split_dataset(bare, bare, classes_per_task=1)
    with pytest.raises(ef.DataError, match=r"classes \[7\] have no"):
        split_dataset(Labelled(10, 5, 0), Labelled(10, 5, 1), key_to_targets={"x": [0, 7]})
    with pytest.raises(ef.ConfigError, match="exactly one"):
        split_dataset(Labelled(10, 5, 0), Labelled(10, 5, 1))


def test_image_folders_in_both_layouts_become_task_sequences(tmp_path: Path) -> None:
    seq = load_image_folder(image_folder(tmp_path / "one"), classes_per_task=2, image_size=8)
    assert len(seq) == 3 and seq.input_shape == (3, 8, 8) and seq.num_classes == (2, 2, 2)
    assert len(seq[0].train) == 16 and len(seq[0].test) == 8
    x, y = seq[2].test[0]
    assert x.dtype == torch.float32 and 0.0 <= float(x.min()) <= float(x.max()) <= 1.0
    assert int(y) == 0 and seq[2].classes == (4, 5)
    augmented = load_image_folder(tmp_path / "one", classes_per_task=2, image_size=8, augment=True)
    torch.manual_seed(0)
    draws = [augmented[0].train[0][0] for _ in range(4)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:]), "training items are augmented"
    assert torch.equal(augmented[0].test[0][0], seq[0].test[0][0]), "test items are not"
    tasks = load_image_folder(task_folders(tmp_path / "mas"), image_size=8)
    assert [t.name for t in tasks] == ["task_0", "task_1"] and tasks.num_classes == (3, 3)


def test_an_image_folder_trains_from_the_cli_with_augmentation_and_a_holdout(
    tmp_path: Path,
) -> None:
    root = image_folder(tmp_path / "data")
    out = tmp_path / "run"
    # the small-run arguments without --limit-per-class (a built-in datasets' option)
    i = SMALL_ARGS.index("--limit-per-class")
    args = [
        *SMALL_ARGS[:i],
        *SMALL_ARGS[i + 2 :],
        *_folder_args(root),
        "--augment",
        "--holdout",
        "0.25",
        "--num-workers",
        "1",
    ]
    assert main(["run", *args, "--output-dir", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert len(results["accuracy_matrix"]) == 3 and results["summary"]["backward_transfer"] == 0.0
    assert results["router"] is not None


def _folder_args(root: Path) -> list[str]:
    """CLI arguments for the test image folder: 3 tasks of 2 classes, 8×8 images."""
    return [
        "--dataset",
        f"imagefolder:{root}",
        "--classes-per-task",
        "2",
        "--image-size",
        "8",
        "--batch-size",
        "8",
    ]


USER_NET = """
    import torch.nn.functional as F
    from torch import nn
    import eidetic_func as ef

    class Net(nn.Module):
        def __init__(self, num_classes, channels):
            super().__init__()
            self.a = nn.Conv2d(channels, 4, 3, padding=1)
            self.b = nn.Conv2d(4, 4, 3, padding=1)
            self.norm = ef.TaskBatchNorm2d(4)
            self.side = nn.Conv2d(4, 2, 1)
            self.fc = nn.Linear(6 * 4 * 4, 8)
            self.heads = nn.ModuleList(nn.Linear(8, k) for k in num_classes)

        def forward(self, x, task=0):
            h = F.relu(self.a(x))
            h = F.relu(self.norm(self.b(h)) + h)
            h = F.max_pool2d(torch.cat([h, F.relu(self.side(h))], dim=1), 2)
            return self.heads[task](F.relu(self.fc(h.flatten(1))))

    def build(num_classes, input_shape):
        return Net(num_classes, input_shape[0])
"""


def test_a_users_own_network_runs_a_three_task_sequence_from_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "user_net.py").write_text("import torch\n" + textwrap.dedent(USER_NET))
    monkeypatch.syspath_prepend(str(tmp_path))
    root = image_folder(tmp_path / "data")
    out = tmp_path / "run"
    args = [
        "--model",
        "import:user_net:build",
        *_folder_args(root),
        "--epochs",
        "2",
        "--patience",
        "1",
        "--pruning-step",
        "0.3",
        "--max-recovery-epochs",
        "1",
        "--no-router",
        "--no-progress",
    ]
    assert main(["run", *args, "--output-dir", str(out)]) == 0
    matrix = json.loads((out / "results.json").read_text())["accuracy_matrix"]
    assert len(matrix) == 3
    for t in range(3):
        assert all(row[t] == matrix[t][t] for row in matrix[t:]), f"task {t} changed"
    sys.modules.pop("user_net", None)
