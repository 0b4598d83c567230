"""DDPO-style fine-tuning of the digits model: trajectories, reward, loss, one iteration, argument checks."""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

import ddim
from ddim import ddim_step_with_logprob
from ddim.app.digits import SAMPLE_SHAPE, load_digits_split, load_pretrained
from ddim.app.digits.classifier import load_classifier
from ddim.app.digits.policy_gradient import (
    PolicyGradientConfig,
    fine_tune,
    kl_coefficient,
    normalised_advantages,
    policy_gradient_loss,
    policy_steps,
    sample_trajectories,
    step_log_probs,
    target_probability,
    target_reward,
    trained_steps,
    update_policy,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ddpo_digits.py"
TINY = PolicyGradientConfig(
    iterations=2, batch_size=4, num_inference_steps=3, learning_rate=1e-3, kl_weight=0.0, min_sigma=0.0
)


@pytest.fixture(scope="module")
def model() -> tuple[torch.nn.Module, ddim.DDIMScheduler]:
    return load_pretrained()


@pytest.fixture(scope="module")
def classifier() -> torch.nn.Module:
    return load_classifier()


def test_trajectories_are_the_samples_of_ddim_sample_and_their_log_probs_rescore_exactly(model) -> None:
    unet, scheduler = model
    trajectories = sample_trajectories(unet, scheduler, 4, 5, 1.0, torch.Generator().manual_seed(7))
    expected = ddim.sample(
        unet, scheduler, (4, *SAMPLE_SHAPE), num_inference_steps=5, eta=1.0, generator=torch.Generator().manual_seed(7)
    )
    torch.testing.assert_close(trajectories.samples, expected, rtol=0, atol=1e-5)
    # The grid's last step (t = 0) lands on abar = 1: sigma 0, not part of the policy.
    assert policy_steps(scheduler, 1.0) == [True, True, True, True, False]
    assert trajectories.timesteps == [800, 600, 400, 200]
    assert trajectories.latents.shape == (5, 4, 1, 8, 8) and trajectories.log_probs.shape == (4, 4)
    for step in range(4):
        with torch.no_grad():
            rescored = step_log_probs(unet, scheduler, trajectories, step, 1.0)
        torch.testing.assert_close(rescored, trajectories.log_probs[step])


def test_reward_is_a_probability_and_high_on_real_digits_of_the_target(classifier) -> None:
    data = load_digits_split()
    noise = torch.randn((16, *SAMPLE_SHAPE), generator=torch.Generator().manual_seed(0)) * 3
    for samples in (noise, data.test_images[:64]):
        p = target_probability(classifier, samples, 3)
        assert p.shape == (samples.shape[0],) and bool(((p >= 0) & (p <= 1)).all())
    threes = data.test_images[data.test_labels == 3]
    assert float(target_reward(classifier, 3)(threes).mean()) > 0.9
    assert float(target_reward(classifier, 3)(data.test_images[data.test_labels == 0]).mean()) < 0.1


def test_loss_is_the_sum_over_steps_of_advantage_weighted_log_probs_computed_directly(model) -> None:
    unet, scheduler = model
    trajectories = sample_trajectories(unet, scheduler, 4, 3, 1.0, torch.Generator().manual_seed(1))
    advantages = normalised_advantages(torch.tensor([0.1, 0.9, 0.4, 0.2]))
    log_probs = torch.stack([step_log_probs(unet, scheduler, trajectories, k, 1.0) for k in range(2)])
    loss = policy_gradient_loss(log_probs, advantages)
    direct = torch.zeros(())
    for k, t in enumerate(trajectories.timesteps):
        x, x_next = trajectories.latents[k], trajectories.latents[k + 1]
        eps = unet(x, torch.full((4,), t))
        log_prob = ddim_step_with_logprob(scheduler, eps, t, x, 1.0, prev_sample=x_next, clamp_prev_timestep=False)[1]
        direct = direct - (advantages * log_prob).mean()
    torch.testing.assert_close(loss, direct)
    # On policy (ratio 1) the clipped importance-sampling loss has the same gradient.
    sf = torch.autograd.grad(loss, list(unet.parameters()), retain_graph=True)
    clipped = policy_gradient_loss(log_probs, advantages, trajectories.log_probs, clip_range=1e-4)
    for a, b in zip(sf, torch.autograd.grad(clipped, list(unet.parameters())), strict=True):
        torch.testing.assert_close(a, b)


def test_kl_penalty_is_the_kl_of_the_two_step_gaussians(model) -> None:
    unet, scheduler = model
    other = copy.deepcopy(unet)
    with torch.no_grad():
        other.out.bias.add_(0.3)
    scheduler.set_timesteps(10)
    x = torch.randn((3, *SAMPLE_SHAPE), generator=torch.Generator().manual_seed(2))
    for t in (900, 500, 100):
        eps, eps_ref = unet(x, torch.full((3,), t)), other(x, torch.full((3,), t))
        mu_ref = scheduler.step(eps_ref, t, x, eta=1.0, variance_noise=torch.zeros_like(x)).prev_sample
        # Equal sigmas: log p(mu_ref) - log p_ref(mu_ref) = -||mu - mu_ref||^2 / (2 sigma^2) = -KL (per pixel).
        log_p = ddim_step_with_logprob(scheduler, eps, t, x, 1.0, prev_sample=mu_ref, clamp_prev_timestep=False)[1]
        log_ref = ddim_step_with_logprob(scheduler, eps_ref, t, x, 1.0, prev_sample=mu_ref, clamp_prev_timestep=False)
        expected = log_ref[1] - log_p
        kl = kl_coefficient(scheduler, t, 1.0) * ((eps - eps_ref) ** 2).mean(dim=(1, 2, 3))
        torch.testing.assert_close(kl, expected, rtol=1e-3, atol=1e-6)
    with pytest.raises(ValueError, match="sigma is 0 at timestep=0"):
        kl_coefficient(scheduler, 0, 1.0)


def test_steps_below_min_sigma_are_left_out_of_the_policy_gradient(model) -> None:
    unet, scheduler = model
    tuned = copy.deepcopy(unet).requires_grad_(True)
    trajectories = sample_trajectories(tuned, scheduler, 4, 10, 1.0, torch.Generator().manual_seed(3))
    config = PolicyGradientConfig(
        **{**TINY.__dict__, "num_inference_steps": 10, "min_sigma": 0.05, "max_grad_norm": 1e9}  # no clipping
    )
    # At S = 10 the step from t = 100 lands on t = 0 with sigma 0.01: the only one left out.
    assert trained_steps(scheduler, trajectories.timesteps, config) == list(range(8))
    advantages = normalised_advantages(torch.tensor([0.9, 0.1, 0.3, 0.5]))
    optimizer = torch.optim.SGD(tuned.parameters(), lr=0.0)
    update_policy(tuned, scheduler, optimizer, trajectories, advantages, config, torch.Generator())
    grads = [p.grad.clone() for p in tuned.parameters()]
    tuned.zero_grad()
    log_probs = torch.stack([step_log_probs(tuned, scheduler, trajectories, k, 1.0) for k in range(8)])
    policy_gradient_loss(log_probs, advantages).backward()
    for a, p in zip(grads, tuned.parameters(), strict=True):
        torch.testing.assert_close(a, p.grad)


def test_kl_penalty_is_reported_and_needs_a_reference(model, classifier) -> None:
    unet, scheduler = model
    tuned = copy.deepcopy(unet).requires_grad_(True)
    config = PolicyGradientConfig(**{**TINY.__dict__, "kl_weight": 1.0})
    history = fine_tune(tuned, scheduler, target_reward(classifier, 3), config)
    assert history[0]["kl"] == pytest.approx(0.0, abs=1e-12) and history[1]["kl"] > 0
    trajectories = sample_trajectories(tuned, scheduler, 4, 3, 1.0, torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(tuned.parameters())
    with pytest.raises(ValueError, match="kl_weight"):
        update_policy(tuned, scheduler, optimizer, trajectories, torch.zeros(4), config, torch.Generator())


def test_clipped_objective_stops_the_gradient_outside_the_trust_region() -> None:
    log_probs = torch.tensor([[0.5, -0.5]], requires_grad=True)
    advantages = torch.tensor([1.0, -1.0])
    # ratio e^0.5 > 1 + c with A > 0 and e^-0.5 < 1 - c with A < 0: both clipped, no gradient.
    policy_gradient_loss(log_probs, advantages, torch.zeros(1, 2), clip_range=0.1).backward()
    assert log_probs.grad is not None and torch.equal(log_probs.grad, torch.zeros(1, 2))


def test_advantages_are_normalised_within_the_batch_and_clipped() -> None:
    advantages = normalised_advantages(torch.tensor([1.0, 2.0, 3.0, 6.0]))
    assert float(advantages.mean()) == pytest.approx(0, abs=1e-6)
    assert float(advantages.std(correction=0)) == pytest.approx(1, abs=1e-6)
    assert float(normalised_advantages(torch.tensor([0.0] * 9 + [1.0]), clip=2.0).max()) == 2.0
    assert torch.equal(normalised_advantages(torch.tensor([0.5, 0.5])), torch.zeros(2))


@pytest.mark.parametrize("objective", ["sf", "is"])
def test_one_iteration_sends_gradient_to_every_unet_parameter_and_changes_the_weights(model, objective) -> None:
    unet, scheduler = model
    tuned = copy.deepcopy(unet).requires_grad_(True)
    config = PolicyGradientConfig(**{**TINY.__dict__, "objective": objective, "minibatches": 2})
    optimizer = torch.optim.AdamW(tuned.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    trajectories = sample_trajectories(tuned, scheduler, 4, 3, 1.0, generator)
    advantages = normalised_advantages(torch.tensor([0.9, 0.1, 0.3, 0.5]))
    loss, kl = update_policy(tuned, scheduler, optimizer, trajectories, advantages, config, generator)
    assert torch.isfinite(torch.tensor(loss)) and kl is None
    for name, parameter in tuned.named_parameters():
        assert parameter.grad is not None and bool(torch.isfinite(parameter.grad).all()), name
    assert float(tuned.out.weight.grad.abs().sum()) > 0
    changed = [not torch.equal(a, b) for a, b in zip(tuned.parameters(), unet.parameters(), strict=True)]
    assert all(changed)


def test_fine_tuning_is_seeded_and_records_one_entry_per_iteration(model, classifier) -> None:
    unet, scheduler = model
    runs = []
    for _ in range(2):
        tuned = copy.deepcopy(unet).requires_grad_(True)
        history = fine_tune(tuned, scheduler, target_reward(classifier, 3), TINY)
        runs.append((tuned, history))
    (first, history), (second, again) = runs
    assert [h["iteration"] for h in history] == [0, 1]
    assert all(0 <= h["reward_mean"] <= 1 for h in history)
    assert [h["reward_mean"] for h in history] == [h["reward_mean"] for h in again]
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("target", 10),
        ("iterations", 0),
        ("batch_size", 1),
        ("eta", 0.0),
        ("learning_rate", -1.0),
        ("clip_range", 0.0),
        ("minibatches", 5),
        ("kl_weight", -0.1),
        ("min_sigma", -1.0),
        ("objective", "ppo"),
    ],
)
def test_bad_config_values_raise_value_errors_naming_them(field, value) -> None:
    with pytest.raises(ValueError, match=field):
        PolicyGradientConfig(**{**TINY.__dict__, field: value})


def test_bad_arguments_of_the_helpers_raise_value_errors_naming_them(classifier) -> None:
    with pytest.raises(ValueError, match="target"):
        target_probability(classifier, torch.zeros(2, *SAMPLE_SHAPE), -1)
    with pytest.raises(ValueError, match="samples"):
        target_probability(classifier, torch.zeros(2, 8, 8), 3)
    with pytest.raises(ValueError, match="rewards"):
        normalised_advantages(torch.zeros(1))
    with pytest.raises(ValueError, match="advantages"):
        policy_gradient_loss(torch.zeros(2, 3), torch.zeros(4))
    with pytest.raises(ValueError, match="clip_range"):
        policy_gradient_loss(torch.zeros(2, 3), torch.zeros(3), torch.zeros(2, 3))


def load_example():
    spec = importlib.util.spec_from_file_location("ddpo_digits", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["ddpo_digits"] = module
    spec.loader.exec_module(module)
    return module


def test_the_example_refuses_bad_arguments_naming_them(capsys) -> None:
    example = load_example()
    with pytest.raises(SystemExit):
        example.parse_args(["--target", "11"])
    assert "target=11" in capsys.readouterr().err


@pytest.mark.slow
def test_the_example_runs_end_to_end_and_writes_its_outputs(tmp_path) -> None:
    example = load_example()
    arguments = ["--iterations", "1", "--batch-size", "4", "--steps", "3", "--eval-count", "40", "--eval-seeds", "0"]
    report = example.main([*arguments, "--out-dir", str(tmp_path)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddpo.json", "reward_curve.png", "samples.png"]
    saved = json.loads((tmp_path / "ddpo.json").read_text())
    assert saved["config"]["target"] == 3 and len(saved["history"]) == 1
    assert set(saved["before"]) >= {"fid_all", "fid_target", "reward", "target_fraction", "class_histogram"}
    assert report["floor"]["target"]["resampled"][0] > 0
