"""The DPO loss and step: values at initialisation, a hand-computed loss, the β conventions, shared noise, the
adapter-off reference, the collapsed PSA term against a literal reference processor, and where gradients go."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from numerics import FLOAT64_SLACK
from psa_core.adapter import PSAAdapter
from psa_core.families import get_family
from psa_core.training.loss import DEFAULT_BETA, dpo_loss, per_sample_mse
from psa_core.training.noise import DDPMSchedule
from psa_core.training.step import PairBatch, dpo_step
from testkit.models import ModelSpec, build_unet
from trainer.hook import DiffusersPSAPredictor

EMBEDDING_DIM = 12
LN2 = math.log(2.0)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    spec = ModelSpec.tiny("sd15")
    unet = build_unet(spec, seed=3).eval()
    unet.requires_grad_(False)
    family = spec_family(unet)
    return unet, family


def spec_family(unet):
    return get_family("sd15", unet.config.block_out_channels[0], unet.config.cross_attention_dim)


def pair_batch(pairs: int = 3, seed: int = 0, context: int = 32) -> PairBatch:
    generator = torch.Generator().manual_seed(seed)
    return PairBatch(torch.randn(pairs, 4, 8, 8, generator=generator), torch.randn(pairs, 4, 8, 8, generator=generator),
                     {"encoder_hidden_states": torch.randn(pairs, 77, context, generator=generator)},
                     torch.randn(pairs, EMBEDDING_DIM, generator=generator))


def randomised_adapter(family, seed: int = 5, scale: float = 0.05) -> PSAAdapter:
    """An adapter with seeded non-zero weights everywhere (LayerNorm weight around 1)."""
    adapter = PSAAdapter(family, EMBEDDING_DIM)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in adapter.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator) * scale
            parameter.copy_(noise + 1.0 if name == "norm.weight" else noise)
    return adapter


# ---- the loss on its own ----

def test_hand_computed_per_pair_loss_is_the_mean_of_per_pair_terms():
    # Δ = (mʷ − mˡ) − (rʷ − rˡ); inside = −0.5·β·Δ; loss = mean(log(1 + e^(−inside)))
    policy_w = torch.tensor([0.1000, 0.2000, 0.3000])
    policy_l = torch.tensor([0.1002, 0.1990, 0.3000])
    reference_w = torch.tensor([0.1000, 0.2000, 0.3004])
    reference_l = torch.tensor([0.1000, 0.2000, 0.3000])
    beta = 5000.0
    deltas = [(0.1000 - 0.1002) - 0.0, (0.2000 - 0.1990) - 0.0, 0.0 - (0.3004 - 0.3000)]
    insides = [-0.5 * beta * d for d in deltas]  # 0.5, -2.5, 1.0
    expected = sum(math.log1p(math.exp(-x)) for x in insides) / 3
    out = dpo_loss(policy_w, policy_l, reference_w, reference_l, beta)
    assert expected == pytest.approx(1.12208, abs=1e-5)  # by hand: (0.47408 + 2.57889 + 0.31326) / 3
    # Against the decimals, in float32: each of the four inputs is within u·|value| of its decimal (u = 2⁻²⁴),
    # and the three subtractions and the product by −β/2 round once each, so with S = Σ|inputs| (≥ every partial
    # result) |inside − exact| ≤ (β/2)·u·(S + 3S) + u·|inside| ≤ β·u·(2S + 1) elementwise; the loss, a mean of
    # log(1 + e^(−inside)) (slope below 1), is off by at most that plus a few roundings of its own (2u·loss).
    u = 2.0 ** -24
    total = (policy_w.abs() + policy_l.abs() + reference_w.abs() + reference_l.abs()).double()
    bound = beta * u * (2 * total + 1)
    assert torch.all((out.inside.double() - torch.tensor(insides, dtype=torch.float64)).abs() <= bound)
    assert abs(out.loss.item() - expected) <= bound.max().item() + 2 * u * expected
    wrong = math.log1p(math.exp(-sum(insides) / 3))  # −log σ(mean inside), the diffusers#6702 bug
    assert abs(out.loss.item() - wrong) > 0.2
    assert out.implicit_accuracy.item() == pytest.approx(2 / 3)
    # equal in exact arithmetic; the rewards' float32 roundings (each product and difference, scale β/2·S)
    rewards = (out.reward_winner - out.reward_loser).double()
    assert torch.all((rewards - out.inside.double()).abs() <= 2 * bound)


def test_sign_convention_lower_policy_error_on_the_winner_is_rewarded():
    better = dpo_loss(torch.tensor([0.09]), torch.tensor([0.11]), torch.tensor([0.10]), torch.tensor([0.10]))
    worse = dpo_loss(torch.tensor([0.11]), torch.tensor([0.09]), torch.tensor([0.10]), torch.tensor([0.10]))
    assert better.inside.item() > 0 > worse.inside.item()
    assert better.loss.item() < LN2 < worse.loss.item()
    assert better.reward_winner.item() > 0 and better.reward_loser.item() < 0


def test_half_beta_convention_equals_diffusers_beta():
    generator = torch.Generator().manual_seed(1)
    m_w, m_l, r_w, r_l = (0.1 + 0.001 * torch.randn(64, generator=generator) for _ in range(4))
    ours = dpo_loss(m_w, m_l, r_w, r_l, beta=5000.0)
    # diffusers train_diffusion_dpo.py (SD1.5): logits = (rʷ − rˡ) − (mʷ − mˡ); loss = −log σ(β_d · logits)
    logits = (r_w - r_l) - (m_w - m_l)
    diffusers_loss = -F.logsigmoid(2500.0 * logits).mean()
    assert torch.equal(ours.inside, 2500.0 * logits)
    assert torch.equal(ours.loss, diffusers_loss)
    assert not torch.allclose(dpo_loss(m_w, m_l, r_w, r_l, beta=2500.0).loss, diffusers_loss)
    # Ties: our strict accuracy counts them 0, diffusers' counts them ½.
    tie = dpo_loss(m_w, m_l, m_w, m_l)
    assert tie.implicit_accuracy.item() == 0.0
    diffusers_accuracy = (tie.inside > 0).float().mean() + 0.5 * (tie.inside == 0).float().mean()
    assert diffusers_accuracy.item() == 0.5
    assert DEFAULT_BETA == 5000.0


def test_per_sample_mse_is_the_mean_over_all_but_the_batch_axis():
    prediction, target = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)
    rounded = prediction.half()
    expected = torch.stack([((rounded[i].double() - target[i].double()) ** 2).sum() / 12 for i in range(4)])
    # float32 from the float16 values: 12 differences, squares and a sum of 12, one rounding each (γ₂₄ < 25u)
    assert torch.all((per_sample_mse(rounded, target).double() - expected).abs() <= 25 * 2.0 ** -24 * expected)
    assert per_sample_mse(prediction.half(), target).dtype == torch.float32


# ---- the step with a real (tiny) UNet ----

@pytest.mark.parametrize("checkpointing", [False, True])
def test_loss_is_ln2_and_inside_exactly_zero_at_initialisation(tiny, checkpointing):
    unet, family = tiny
    unet = copy.deepcopy(unet)
    if checkpointing:
        unet.enable_gradient_checkpointing()
    predict = DiffusersPSAPredictor(unet, family)
    adapter = PSAAdapter(family, EMBEDDING_DIM)  # to_v_user zero-initialised
    result = dpo_step(predict, adapter, pair_batch(4), DDPMSchedule.scaled_linear(), torch.Generator().manual_seed(0))
    assert torch.equal(result.dpo.inside, torch.zeros(4))
    assert result.loss.item() == torch.log(torch.tensor(2.0)).item()
    assert result.dpo.implicit_accuracy.item() == 0.0
    assert torch.equal(result.policy_errors, result.reference_errors)


def test_winner_and_loser_share_noise_timestep_and_conditioning():
    calls = []

    def predict(noisy, timesteps, conditioning, values):
        calls.append((noisy.clone(), timesteps.clone(), conditioning["encoder_hidden_states"].clone(), values))
        return torch.zeros_like(noisy)

    batch = pair_batch(3)
    batch.losers = batch.winners.clone()  # identical clean latents: noisy winner and loser must then be identical
    adapter = lambda e: [torch.ones(e.shape[0], 5)]
    dpo_step(predict, adapter, batch, DDPMSchedule.scaled_linear(), torch.Generator().manual_seed(0))
    (ref_noisy, ref_t, ref_c, ref_v), (noisy, t, c, v) = calls
    assert ref_v is None and v is not None and len(v[0]) == 6, "the reference pass runs first, adapter off"
    assert torch.equal(noisy[:3], noisy[3:]) and torch.equal(t[:3], t[3:]) and torch.equal(c[:3], c[3:])
    assert torch.equal(noisy, ref_noisy) and torch.equal(t, ref_t) and torch.equal(c, ref_c)
    assert len(set(t[:3].tolist())) > 1, "each pair draws its own timestep"


def test_adapter_off_reference_is_the_base_unet_bit_for_bit(tiny):
    unet, family = tiny
    base = copy.deepcopy(unet)  # never hooked
    hooked = copy.deepcopy(unet)
    predict = DiffusersPSAPredictor(hooked, family)
    adapter = randomised_adapter(family)
    batch = pair_batch(2)
    noisy, timesteps = torch.randn(4, 4, 8, 8), torch.tensor([10, 500, 10, 999])
    context = {"encoder_hidden_states": batch.conditioning["encoder_hidden_states"].repeat(2, 1, 1)}
    with torch.no_grad():
        values = [v.repeat(2, 1) for v in adapter(batch.embeddings)]
        on = predict(noisy, timesteps, context, values)
        off = predict(noisy, timesteps, context, None)
        plain = base(noisy, timesteps, encoder_hidden_states=context["encoder_hidden_states"]).sample
    assert torch.equal(off, plain)
    assert (on - plain).abs().max() > 1e-3


class LiteralReferenceProcessor:
    """PSAAttnProcessor2_0 (docs/adapter.md §1) written out: the last context token is the user token; base
    attention over the text tokens; plus attention over the single user key with to_k_user / to_v_user; then
    to_out. Explicit softmax, no SDPA, sharing no code with the hook."""

    def __init__(self, to_k_user: torch.Tensor, to_v_user: torch.Tensor):
        self.to_k_user, self.to_v_user = to_k_user, to_v_user

    @staticmethod
    def attention(q, k, v, heads):
        b, n, inner = q.shape
        d = inner // heads
        split = lambda x: x.reshape(b, x.shape[1], heads, d).transpose(1, 2)
        weights = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(d), dim=-1)
        return (weights @ split(v)).transpose(1, 2).reshape(b, n, inner)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        text, user = encoder_hidden_states[:, :-1], encoder_hidden_states[:, -1:]
        q = attn.to_q(hidden_states)
        base = self.attention(q, attn.to_k(text), attn.to_v(text), attn.heads)
        extra = self.attention(q, user @ self.to_k_user.T, user @ self.to_v_user.T, attn.heads)
        return attn.to_out[1](attn.to_out[0](base + extra))


def test_collapsed_hook_matches_the_literal_reference_processor(tiny):
    """Everything in float64 (UNet, adapter, inputs): the two computations agree to float64 rounding, on any CPU
    (tests/numerics.py's slack, 1e-9 of the output's scale, against ~1e-15 measured)."""
    unet, family = tiny
    unet = copy.deepcopy(unet).double()
    adapter = randomised_adapter(family, scale=0.2).double()
    generator = torch.Generator().manual_seed(9)
    reference = copy.deepcopy(unet)
    for layer, v_weight in zip(family.layers, adapter.to_v_user):
        k_weight = torch.randn(v_weight.weight.shape, generator=generator).double() * 0.2  # never matters (docs/adapter.md §2)
        reference.get_submodule(layer.diffusers_name).set_processor(
            LiteralReferenceProcessor(k_weight, v_weight.weight.detach()))
    predict = DiffusersPSAPredictor(copy.deepcopy(unet), family)
    embeddings = torch.randn(2, EMBEDDING_DIM, generator=generator).double()
    text = torch.randn(2, 77, family.context_dim, generator=generator).double()
    noisy, timesteps = torch.randn(2, 4, 8, 8, generator=generator).double(), torch.tensor([100, 700])
    with torch.no_grad():
        user = adapter.user_tokens(embeddings)[:, None, :]
        literal = reference(noisy, timesteps, encoder_hidden_states=torch.cat([text, user], dim=1)).sample
        collapsed = predict(noisy, timesteps, {"encoder_hidden_states": text}, adapter(embeddings))
        plain = predict(noisy, timesteps, {"encoder_hidden_states": text}, None)
    assert collapsed.dtype == literal.dtype == torch.float64
    assert (literal - plain).abs().max() > 1e-2, "the adapter must change the output for this test to mean anything"
    assert (collapsed - literal).abs().max() <= FLOAT64_SLACK * literal.abs().max()


@pytest.mark.parametrize("autocast", [False, True])
def test_gradients_reach_projection_and_value_weights_in_fp32(tiny, autocast):
    unet, family = tiny
    predict = DiffusersPSAPredictor(copy.deepcopy(unet), family)
    adapter = randomised_adapter(family)
    context = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if autocast else None
    kwargs = {"autocast": context} if context else {}
    result = dpo_step(predict, adapter, pair_batch(3), DDPMSchedule.scaled_linear(),
                      torch.Generator().manual_seed(2), **kwargs)
    result.loss.backward()
    names = dict(adapter.named_parameters())
    assert not any("to_k" in name for name in names), "to_k_user is not trained (it never affects the output)"
    for name, parameter in names.items():
        assert parameter.dtype == torch.float32 and parameter.grad is not None and parameter.grad.dtype == torch.float32
        assert parameter.grad.abs().sum() > 0, f"no gradient for {name}"
    assert all(not p.requires_grad and p.grad is None for p in predict.unet.parameters())


def test_gradient_checkpointing_gives_the_same_gradients(tiny):
    """In float64 (UNet and adapter): recomputing the blocks during backward changes the gradients by float64
    rounding at most (1e-9 of their scale, tests/numerics.py), on any CPU."""
    unet, family = tiny
    gradients = []
    for checkpointing in (False, True):
        model = copy.deepcopy(unet).double()
        if checkpointing:
            model.enable_gradient_checkpointing()
        adapter = randomised_adapter(family).double()
        batch = pair_batch(2)
        batch = PairBatch(batch.winners.double(), batch.losers.double(),
                          {k: v.double() for k, v in batch.conditioning.items()}, batch.embeddings.double())
        dpo_step(DiffusersPSAPredictor(model, family), adapter, batch, DDPMSchedule.scaled_linear(),
                 torch.Generator().manual_seed(4)).loss.backward()
        gradients.append(torch.cat([p.grad.flatten() for p in adapter.parameters()]))
    assert gradients[0].dtype == torch.float64 and gradients[0].abs().max() > 0
    assert (gradients[0] - gradients[1]).abs().max() <= FLOAT64_SLACK * gradients[0].abs().max()


def test_noise_schedule_matches_diffusers_ddpm_scheduler():
    ours = DDPMSchedule.scaled_linear()
    theirs = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                           num_train_timesteps=1000)
    clean, noise = torch.randn(5, 4, 8, 8), torch.randn(5, 4, 8, 8)
    timesteps = torch.tensor([0, 1, 500, 998, 999])
    assert torch.equal(ours.add_noise(clean, noise, timesteps), theirs.add_noise(clean, noise, timesteps))
    v = DDPMSchedule.scaled_linear(prediction_type="v_prediction")
    assert torch.equal(v.target(clean, noise, timesteps), theirs.get_velocity(clean, noise, timesteps))
    assert torch.equal(ours.target(clean, noise, timesteps), noise)
