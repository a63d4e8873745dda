"""Bounds for comparing two computations of the same quantity, derived rather than tuned, so that they hold on
any CPU (a bound measured on one machine fails on another, whose BLAS sums in another order).

The comparisons of sampled predictions run both sides in float64. ComfyUI still rounds to float32 in three
places after the UNet: `BaseModel.apply_model` casts the prediction to float32 (`model_output.float()`), then
computes the denoised image `x − σ·ε` in float32 (a product and a difference, one rounding each). Unit roundoff
of float32 is u = 2⁻²⁴. With ε_a, ε_b the two float64 predictions and Δ = |ε_a − ε_b| (float64 rounding only):

    |d_a − d_b| ≤ σ·(Δ + 2u·|ε|)  (the cast)  + 2u·σ|ε|  (the product)  + 2u·|d|  (the difference)
               ≤ 4u·σ|ε| + 2u·|d| + σΔ ≤ 4u·(|x| + |d|) + 2u·|d| + σΔ      (σ|ε| = |x − d| ≤ |x| + |d|)
               ≤ 2⁻²¹·(|x| + |d|) + σΔ.

Δ is float64 rounding through a few hundred operations of a small network, at most ~10³·2⁻⁵³·|ε| ≈ 1e-13·|ε|;
the bound allows 1e-9 of the largest |d|, four orders above it and five below any real difference (a layer the
patch misses, or the wrong user, changes d by more than 1e-4 of its scale in these tiny models).

Where ComfyUI computes in float32 whatever the weights' dtype (its CLIP text encoders: sd1_clip passes
`dtype=torch.float32` to the transformer), no float64 run of its side exists. A float32 pass errs by u times a
factor that the network's depth and gains set (layer norms divide by a standard deviation, softmax sharpens);
rather than estimate that factor, the test measures it on the CPU it runs on: the reference implementation's
own float32 pass of the same weights against its float64 pass gives N = max |ref₃₂ − ref₆₄|. ComfyUI's pass does
the same operations in its own order (its attention, its layer-norm calls), so its error is of the same size
(measured here: at most 1.6·N over the CLIP tests' captions). The bound is FLOAT32_NOISE_FACTOR = 4 times
max(N, u·max|ref₆₄|); a wrong layer, norm or pooling changes the result by 1e-2 of its scale or more.
"""
from __future__ import annotations

import torch

FLOAT32_UNIT_ROUNDOFF = 2.0 ** -24
FLOAT64_SLACK = 1e-9
FLOAT32_NOISE_FACTOR = 4


def assert_same_after_float32_rounding(actual: torch.Tensor, expected: torch.Tensor, inputs: torch.Tensor,
                                       what: str = "values") -> None:
    """`actual` and `expected` are denoised outputs of two float64 evaluations on the same `inputs` x, each rounded
    by ComfyUI as above: elementwise |a − b| ≤ 2⁻²¹·(|x| + max(|a|, |b|)) + 1e-9·max|b|."""
    a, b, x = actual.double(), expected.double(), inputs.double().expand_as(expected)
    bound = 8 * FLOAT32_UNIT_ROUNDOFF * (x.abs() + torch.maximum(a.abs(), b.abs())) + FLOAT64_SLACK * b.abs().max()
    excess = (a - b).abs() - bound
    worst = int(excess.flatten().argmax())
    assert excess.max() <= 0, (f"{what} differ by {(a - b).abs().flatten()[worst]:.3g} at element {worst}, over the "
                               f"float32-rounding bound {bound.flatten()[worst]:.3g} (tests/numerics.py)")



def assert_within_float32_noise(actual: torch.Tensor, exact: torch.Tensor, reference_float32: torch.Tensor,
                                what: str = "values") -> None:
    """`actual` is a float32 computation of what `exact` computes in float64, and `reference_float32` the
    reference implementation's float32 computation of it on this CPU: max |actual − exact| ≤ 4·max(N, u·max|exact|)
    with N = max |reference_float32 − exact| (the module's docstring)."""
    actual, exact = actual.double(), exact.double()
    noise = (reference_float32.double() - exact).abs().max().item()
    scale = exact.abs().max().item()
    bound = FLOAT32_NOISE_FACTOR * max(noise, FLOAT32_UNIT_ROUNDOFF * scale)
    error = (actual - exact).abs().max().item()
    assert actual.shape == exact.shape and error <= bound, \
        f"{what} differ by {error:.3g} (of max {scale:.3g}), over {FLOAT32_NOISE_FACTOR} x the float32 noise " \
        f"{noise:.3g} of the reference on this CPU (tests/numerics.py)"
