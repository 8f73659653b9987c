"""The models: seed constructor arguments, shapes, and topologies that fit."""

from __future__ import annotations

import pytest
import torch
from eidetic_func.models import MLP, ConvNet, ResNet

import eidetic_func as ef


def test_seed_readme_mlp_constructs_and_runs() -> None:
    mlp = MLP(in_features=784, num_classes=[10, 10], num_layers=2, width=4096, dropout=0.0, bn=True)
    state = ef.init(mlp)
    out, _ = ef.forward(mlp, state, torch.randn(4, 1, 28, 28), task=1, train=True)
    assert out.shape == (4, 10)
    ef.check_topology(mlp.topology(), state.params, state.buffers)
    assert len(mlp.blocks) == 2 and mlp.num_tasks == 2


def test_seed_readme_convnet_constructs_and_runs() -> None:
    cnn = ConvNet(in_channels=3, num_classes=[10, 10], num_layers=2, width=4, dropout=0.1, bn=True)
    state = ef.init(cnn)
    out, _ = ef.forward(cnn, state, torch.randn(2, 3, 32, 32), task=0, train=True)
    assert out.shape == (2, 10)
    ef.check_topology(cnn.topology(), state.params, state.buffers)


@pytest.mark.parametrize(
    ("n_blocks", "expansion", "depth"),
    [([2, 2, 2, 2], 1, 18), ([3, 4, 6, 3], 1, 34), ([3, 4, 6, 3], 4, 50), ([3, 4, 23, 3], 4, 101)],
    ids=["resnet18", "resnet34", "resnet50", "resnet101"],
)
def test_resnets_have_the_standard_depth_and_a_consistent_topology(
    n_blocks: list[int], expansion: int, depth: int
) -> None:
    net = ResNet(
        in_channels=3, num_classes=[10, 10], n_blocks=n_blocks, expansion=expansion, width=4
    )
    main_path = [
        n for n, m in net.named_modules() if isinstance(m, torch.nn.Conv2d) and "shortcut" not in n
    ]
    assert len(main_path) + 1 == depth  # stem and blocks, plus the head
    state = ef.init(net)
    topology = net.topology()
    ef.check_topology(topology, state.params, state.buffers)
    out, _ = ef.forward(net, state, torch.randn(2, 3, 16, 16), task=1, train=False)
    assert out.shape == (2, 10)
    streams = [u for u in topology.units if u.name.startswith("stream")]
    projections = sum(1 for m in net.blocks if m.projects)
    assert len(streams) == 1 + projections == (4 if expansion == 1 else 5)


def test_full_width_resnet18_topology_fits() -> None:
    net = ResNet(3, [10, 10], n_blocks=[2, 2, 2, 2])
    state = ef.init(net)
    ef.check_topology(net.topology(), state.params, state.buffers)
    assert sum(p.numel() for p in net.parameters()) > 11_000_000


def test_identity_shortcuts_tie_a_stream_across_blocks() -> None:
    net = ResNet(3, [2], n_blocks=[2, 1], width=4)
    first = net.topology().unit("stream.0")
    assert first.producers == ("stem", "blocks.0.convs.1", "blocks.1.convs.1")
    assert {r.layer for r in first.readers} == {
        "blocks.0.convs.0",
        "blocks.1.convs.0",
        "blocks.2.convs.0",
        "blocks.2.shortcut",
    }


def test_flattening_convnet_reads_each_channel_as_a_spatial_block() -> None:
    net = ConvNet(1, [3], num_layers=1, width=2, image_size=16)
    last = net.topology().units[-1]
    assert last.readers[0].repeat == 4 and net.heads[0].in_features == 64 * 4


@pytest.mark.parametrize(
    "build",
    [
        lambda: MLP(0, [2]),
        lambda: MLP(4, []),
        lambda: MLP(4, [2], dropout=1.5),
        lambda: ConvNet(3, [0]),
        lambda: ResNet(3, [2], n_blocks=[2, 2], expansion=2),
        lambda: ResNet(3, [2], n_blocks=[]),
    ],
)
def test_bad_constructor_arguments_raise_config_errors(build) -> None:
    with pytest.raises(ef.ConfigError):
        build()
