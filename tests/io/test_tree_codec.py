"""The tree codec alone: any storable tree comes back with its types and bits, unstorable
values and malformed trees are refused by name."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from trained_checkpoints import assert_same, extra_tree, trained

import eidetic_func as ef
from eidetic_func.io.tree_codec import TreeEncoder, decode_tree


def test_a_tree_decodes_to_itself_and_uses_every_tensor_once() -> None:
    _, state, _ = trained()
    tree = extra_tree(state)
    encoder = TreeEncoder()
    encoded = json.loads(json.dumps(encoder.encode(tree, ("extra",)), allow_nan=False))
    used: set[str] = set()
    assert_same(tree, decode_tree(encoded, encoder.tensors, used))
    assert used == encoder.tensors.keys()


def test_entries_are_contiguous_cpu_tensors_that_share_no_memory() -> None:
    big = torch.arange(12.0).reshape(3, 4)
    encoder = TreeEncoder()
    encoder.encode({"a": big, "again": big, "t": big.t(), "row": big[1]}, ("x",))
    entries = list(encoder.tensors.values())
    assert all(t.is_contiguous() and t.device.type == "cpu" for t in entries)
    pointers = [t.untyped_storage().data_ptr() for t in entries]
    assert len(set(pointers)) == len(pointers)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"ids": {1, 2}}, r"cannot store a set at x/ids"),
        ([np.int64(3)], r"cannot store a int64 at x/0"),
        ({(1, 2): 0}, r"dict key of type tuple at x"),
        (torch.ones(2).to_sparse(), r"cannot store the torch.sparse_coo tensor at x"),
    ],
)
def test_unstorable_values_are_refused_naming_where(value: object, message: str) -> None:
    with pytest.raises(ef.CheckpointError, match=message):
        TreeEncoder().encode(value, ("x",))


@pytest.mark.parametrize(
    "tree",
    [{"$tensor": "missing"}, {"$tuple": [], "b": 1}, {"$float": "1.5"}, {"$other": 1}],
    ids=["unknown-tensor", "tag-beside-keys", "finite-float-tag", "unknown-tag"],
)
def test_malformed_trees_are_refused(tree: object) -> None:
    with pytest.raises(ef.CheckpointError, match="malformed manifest"):
        decode_tree(tree, {}, set())
