"""Task BatchNorm: frozen channels normalize with frozen statistics; free ones as usual."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from eidetic_func import TaskBatchNorm1d, TaskBatchNorm2d


def _bn(cls: type, channels: int, seed: int, momentum: float | None = 0.1) -> torch.nn.Module:
    torch.manual_seed(seed)
    bn = cls(channels, momentum=momentum)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    return bn


@pytest.mark.parametrize(
    ("cls", "shape"), [(TaskBatchNorm1d, (16, 5)), (TaskBatchNorm2d, (8, 5, 3, 3))]
)
@given(
    seed=st.integers(0, 1000),
    frozen=st.lists(st.booleans(), min_size=5, max_size=5),
    momentum=st.sampled_from([0.1, None]),
)
def test_frozen_channels_use_frozen_statistics_and_keep_them(
    cls: type, shape: tuple[int, ...], seed: int, frozen: list[bool], momentum: float | None
) -> None:
    bn = _bn(cls, 5, seed, momentum).train()
    plain = _bn(cls, 5, seed, momentum).train()
    eval_bn = _bn(cls, 5, seed, momentum).eval()
    before_mean, before_var = bn.running_mean.clone(), bn.running_var.clone()
    flags = torch.tensor(frozen)
    bn.frozen_channels = flags.nonzero().squeeze(1)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 3 + 1
    out = bn(x)
    reference_train = plain(x)
    reference_eval = eval_bn(x)
    for c in range(5):
        if frozen[c]:
            assert torch.allclose(out[:, c], reference_eval[:, c], atol=1e-6)
            assert torch.equal(bn.running_mean[c], before_mean[c])
            assert torch.equal(bn.running_var[c], before_var[c])
        else:
            assert torch.equal(out[:, c], reference_train[:, c])
            assert torch.equal(bn.running_mean[c], plain.running_mean[c])
            assert torch.equal(bn.running_var[c], plain.running_var[c])


def test_frozen_channels_pass_the_gradient_to_their_input_and_free_ones_get_the_plain_one() -> None:
    """A frozen channel is the affine map of its frozen statistics: its scale and shift are
    constants (no gradient to the BN weight and bias), but its input gets ``scale * grad``
    — what reaches free weights behind an owned channel (PackNet owns single weights)."""
    bn = _bn(TaskBatchNorm1d, 3, 0).train()
    plain = _bn(TaskBatchNorm1d, 3, 0).train()
    bn.frozen_channels = torch.tensor([1])
    x = torch.randn(10, 3, requires_grad=True)
    x_plain = x.detach().clone().requires_grad_(True)
    out = bn(x)
    out.pow(2).sum().backward()
    plain(x_plain).pow(2).sum().backward()
    assert x.grad is not None and x_plain.grad is not None
    assert bn.weight.grad[1] == 0 and bn.bias.grad[1] == 0
    assert bn.running_var is not None
    scale = bn.weight[1] / torch.sqrt(bn.running_var[1] + bn.eps)
    torch.testing.assert_close(x.grad[:, 1], (2 * out[:, 1] * scale).detach())
    for c in (0, 2):
        assert torch.allclose(x.grad[:, c], x_plain.grad[:, c])
        assert torch.allclose(bn.weight.grad[c], plain.weight.grad[c])


def test_empty_frozen_channels_is_exactly_plain_batchnorm() -> None:
    torch.manual_seed(3)
    task_bn, plain = TaskBatchNorm2d(4), torch.nn.BatchNorm2d(4)
    plain.load_state_dict(task_bn.state_dict())
    x = torch.randn(6, 4, 5, 5)
    assert torch.equal(task_bn(x), plain(x))
    assert torch.equal(task_bn.running_var, plain.running_var)
