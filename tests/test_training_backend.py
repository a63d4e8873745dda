"""The local training backend (in-graph training): gradient accumulation, and loss scaling for fp16 compute, which
behaves as Accelerate's fp16 does for the standalone trainer: gradients unscaled before clipping, an overflowing
step skipped and the scale lowered."""
from __future__ import annotations

import math

import torch
from torch import nn

from psa_core.training.loop import LocalBackend


def toy():
    torch.manual_seed(0)
    return nn.Linear(3, 2), torch.randn(4, 3)


def test_without_loss_scaling_the_optimizer_is_stepped_as_it_is():
    backend = LocalBackend("cpu")
    layer, _ = toy()
    optimizer = torch.optim.SGD(layer.parameters(), lr=1.0)
    assert backend.scaler is None and backend.prepare_optimizer(optimizer) is optimizer


def test_loss_scaling_unscales_before_clipping_and_steps_with_the_true_gradient():
    layer, x = toy()
    expected = nn.Linear(3, 2)
    expected.load_state_dict(layer.state_dict())
    (expected(x) ** 2).mean().backward()
    true_norm = torch.nn.utils.clip_grad_norm_(expected.parameters(), float("inf"))

    backend = LocalBackend("cpu", loss_scaling=True)
    stepper = backend.prepare_optimizer(torch.optim.SGD(layer.parameters(), lr=0.5))
    backend.backward((layer(x) ** 2).mean())
    scale = backend.scaler.get_scale()
    # the scale is a power of two, and the backward pass is linear in the loss's gradient: scaling is exact
    assert scale > 1 and math.log2(scale).is_integer()
    assert torch.equal(layer.weight.grad, expected.weight.grad * scale)
    norm = backend.clip_grad_norm_(layer.parameters(), float("inf"))
    # one multiplication and one division by a power of two: exact in float32
    assert torch.equal(norm, true_norm) and torch.equal(layer.weight.grad, expected.weight.grad)
    before = layer.weight.detach().clone()
    stepper.step()
    assert torch.equal(layer.weight.detach(), before - 0.5 * expected.weight.grad)
    assert backend.scaler.get_scale() == scale and not stepper.step_was_skipped


def test_an_overflowing_step_is_skipped_and_the_scale_lowered():
    layer, x = toy()
    backend = LocalBackend("cpu", loss_scaling=True)
    stepper = backend.prepare_optimizer(torch.optim.SGD(layer.parameters(), lr=0.5))
    scale = backend.scaler.get_scale()
    backend.backward(layer(x * float("inf")).sum())
    assert not torch.isfinite(backend.clip_grad_norm_(layer.parameters(), 1.0))
    before = {name: p.detach().clone() for name, p in layer.named_parameters()}
    stepper.step()
    stepper.zero_grad()
    assert all(torch.equal(p.detach(), before[name]) for name, p in layer.named_parameters())
    assert backend.scaler.get_scale() == scale / 2 and stepper.step_was_skipped
