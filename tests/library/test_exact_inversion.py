"""Exact inversion (EDICT, BDIA-DDIM) and guided inversion: ``ddim.invert(method=...)`` and ``ddim.sample_exact``."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ddim
from ddim.analytic import GaussianMixtureModel, gaussian_flow
from ddim.prediction import PREDICTION_TYPES

EXACT = ["edict", "bdia"]
MEANS = torch.tensor([[1.0, 0.0, -0.5], [-1.0, 0.5, 0.5]])


def grid_scheduler(**config: object) -> ddim.DDIMScheduler:
    return ddim.DDIMScheduler(clip_sample=False, timestep_spacing="trailing", prev_timestep_from_grid=True, **config)


def mixture(scheduler: ddim.DDIMScheduler, prediction_type: str = "epsilon") -> GaussianMixtureModel:
    return GaussianMixtureModel(scheduler.alphas_cumprod, MEANS, [0.2, 0.3], prediction_type=prediction_type)


def round_trip_error(model, scheduler, x0: torch.Tensor, method: str, **options: object) -> float:
    latent = ddim.invert(model, scheduler, x0, method=method, **options)
    guidance = {k: v for k, v in options.items() if k in ("guidance_scale", "unconditional_model", "guidance_rescale")}
    back = ddim.sample_exact(model, scheduler, latent, **guidance)
    assert back.dtype == x0.dtype and back.shape == x0.shape
    return float((back - x0).abs().max())


class Counting:
    """A model wrapper that counts its calls."""

    def __init__(self, model) -> None:
        self.model, self.calls = model, 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.model(x, t)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small models run fastest on one thread; on a busy machine more threads than cores are 20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- the embedded digits model
@pytest.fixture(scope="module")
def digits():
    from ddim.app.digits import load_digits_split, load_pretrained

    model, scheduler = load_pretrained()
    return model, scheduler, load_digits_split().test_images[:4]


def float64_twin(model: torch.nn.Module) -> torch.nn.Module:
    twin = copy.deepcopy(model).double()
    # The network's timestep embedding is float32 whatever its weights are: cast it where it enters.
    twin.time_mlp.register_forward_pre_hook(lambda module, args: tuple(a.double() for a in args))
    return twin


@pytest.mark.parametrize("method", EXACT)
@pytest.mark.parametrize("n", [10, 50])
def test_digits_round_trip_is_exact_in_float32_and_float64(digits, method: str, n: int) -> None:
    model, scheduler, x0 = digits
    assert round_trip_error(model, scheduler, x0, method, num_inference_steps=n) <= 1e-5
    assert round_trip_error(float64_twin(model), scheduler, x0.double(), method, num_inference_steps=n) <= 1e-10


def test_digits_plain_ddim_round_trip_is_not_exact(digits) -> None:
    """The contrast the exact methods remove (DDIM paper, Table 2: the error falls with N but stays)."""
    model, scheduler, x0 = digits
    x_t = ddim.invert(model, scheduler, x0, num_inference_steps=10)
    back = ddim.sample(model, scheduler, noise=x_t, num_inference_steps=10, progress=False)
    assert float((back - x0).abs().max()) > 1e-2


# ----------------------------------------------------------------------------- exact models
@pytest.mark.parametrize("method", EXACT)
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_every_prediction_type_round_trips_to_the_same_latent(method: str, prediction_type: str) -> None:
    scheduler = grid_scheduler(prediction_type=prediction_type)
    x0 = mixture(scheduler).sample_data(16, torch.Generator().manual_seed(0))
    model = mixture(scheduler, prediction_type)
    assert round_trip_error(model, scheduler, x0, method, num_inference_steps=20) <= 1e-10
    # The model output is converted to epsilon: the latent does not depend on the prediction type.
    latent = ddim.invert(model, scheduler, x0, num_inference_steps=20, method=method)
    eps_scheduler = grid_scheduler()
    reference = ddim.invert(mixture(eps_scheduler), eps_scheduler, x0, num_inference_steps=20, method=method)
    for got, expected in zip(vars(latent).values(), vars(reference).values(), strict=True):
        if isinstance(got, torch.Tensor):
            torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("method", EXACT)
def test_exact_methods_close_the_gap_plain_inversion_leaves(method: str) -> None:
    scheduler = grid_scheduler()
    model = mixture(scheduler)
    x0 = model.sample_data(16, torch.Generator().manual_seed(1))
    x_t = ddim.invert(model, scheduler, x0, num_inference_steps=10)
    plain = float((ddim.sample(model, scheduler, noise=x_t, num_inference_steps=10, progress=False) - x0).abs().max())
    assert plain > 0.1
    assert round_trip_error(model, scheduler, x0, method, num_inference_steps=10) < 1e-10 * plain


def test_latents_hold_the_grid_the_states_and_the_sample_dtype() -> None:
    scheduler = ddim.DDIMScheduler(clip_sample=False)  # diffusers' landing rule: t - T // N
    model = mixture(scheduler)
    x0 = model.sample_data(4, torch.Generator().manual_seed(2)).float()
    edict = ddim.invert(model, scheduler, x0, num_inference_steps=7, method="edict", p=0.9)
    bdia = ddim.invert(model, scheduler, x0, num_inference_steps=7, method="bdia", gamma=0.95)
    assert isinstance(edict, ddim.EDICTLatent) and isinstance(bdia, ddim.BDIALatent)
    assert edict.timesteps == bdia.timesteps == tuple(scheduler.timesteps.tolist())
    assert [s.alpha_to for s in edict.steps[:-1]] == [
        float(scheduler.alphas_cumprod[t - 142]) for t in edict.timesteps[:-1]
    ]
    assert (edict.p, bdia.gamma, edict.dtype, bdia.dtype) == (0.9, 0.95, torch.float32, torch.float32)
    assert edict.x.dtype == bdia.x_T.dtype == torch.float64  # chains are carried in float64
    assert not torch.equal(edict.x, edict.y) and not torch.equal(bdia.x_T, bdia.x_next)
    # The latent fixes the grid: sampling with another grid set on the scheduler still walks its own.
    scheduler.set_timesteps(3)
    assert ddim.sample_exact(model, scheduler, edict).dtype == torch.float32
    torch.testing.assert_close(ddim.sample_exact(model, scheduler, bdia), x0, rtol=0, atol=1e-6)


def test_model_calls_per_method() -> None:
    scheduler = grid_scheduler()
    model = Counting(mixture(scheduler))
    x0 = torch.zeros(2, 3, dtype=torch.float64)
    edict = ddim.invert(model, scheduler, x0, num_inference_steps=6, method="edict")
    assert model.calls == 12
    ddim.sample_exact(model, scheduler, edict)
    assert model.calls == 24
    bdia = ddim.invert(model, scheduler, x0, num_inference_steps=6, method="bdia", fixed_point_iterations=2)
    assert model.calls == 24 + 6 + 2  # one approximate step (refined twice) and five exact ones
    ddim.sample_exact(model, scheduler, bdia)
    assert model.calls == 32 + 5  # the latent already holds the state after the first step


def test_bdia_fixed_point_iterations_refine_its_one_approximate_step() -> None:
    """With N = 2 the latent's second state is the approximate one: refined, the last DDIM step maps it onto x_0."""
    scheduler = grid_scheduler()
    model = mixture(scheduler)
    x0 = model.sample_data(8, torch.Generator().manual_seed(3))
    grid = [999, 30]  # a short last step: its fixed-point map contracts

    def last_step_miss(latent: ddim.BDIALatent) -> float:
        step = latent.steps[-1]
        eps = model(latent.x_next, torch.full((8,), step.timestep))
        landed = ddim.ddim_step(eps, latent.x_next, step.alpha, step.alpha_to)[0]
        return float((landed - x0).abs().max())

    rough = ddim.invert(model, scheduler, x0, timesteps=grid, method="bdia")
    refined = ddim.invert(model, scheduler, x0, timesteps=grid, method="bdia", fixed_point_iterations=30)
    assert last_step_miss(rough) > 1e-4 and last_step_miss(refined) < 1e-10
    for latent in (rough, refined):
        torch.testing.assert_close(ddim.sample_exact(model, scheduler, latent), x0, rtol=0, atol=1e-12)


def test_one_step_grid_round_trips() -> None:
    scheduler = grid_scheduler()
    model = mixture(scheduler)
    x0 = model.sample_data(4, torch.Generator().manual_seed(4))
    bdia = ddim.invert(model, scheduler, x0, num_inference_steps=1, method="bdia")
    assert torch.equal(bdia.x_next, x0)  # N = 1: the state after the first step is x_0 itself
    for method in EXACT:
        assert round_trip_error(model, scheduler, x0, method, num_inference_steps=1) <= 1e-12


# ----------------------------------------------------------------------------- sampling from noise
def test_bdia_with_gamma_zero_is_ddim_and_with_gamma_one_integrates_better() -> None:
    """gamma = 0 is the DDIM step; gamma = 1 (the inversion default) is more accurate than DDIM against the
    exact ODE solution for Gaussian data, as the paper reports for sampling. EDICT converges to it too."""
    scheduler = grid_scheduler()
    gaussian = GaussianMixtureModel(scheduler.alphas_cumprod, [[0.5]], 0.3)
    x_t = torch.randn(256, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = gaussian_flow(x_t, float(scheduler.alphas_cumprod[-1]), 1.0, mean=0.5, std=0.3)
    edict_errors = []
    for n in (20, 50, 100):
        plain = ddim.sample(gaussian, scheduler, noise=x_t, num_inference_steps=n, progress=False)
        as_ddim = ddim.sample_exact(gaussian, scheduler, x_t, method="bdia", num_inference_steps=n, gamma=0.0)
        torch.testing.assert_close(as_ddim, plain, rtol=0, atol=1e-12)
        bdia = ddim.sample_exact(gaussian, scheduler, x_t, method="bdia", num_inference_steps=n)
        assert float((bdia - exact).abs().max()) < 0.5 * float((plain - exact).abs().max())
        edict = ddim.sample_exact(gaussian, scheduler, x_t, method="edict", num_inference_steps=n)
        edict_errors.append(float((edict - exact).abs().max()))
    assert edict_errors[0] > edict_errors[1] > edict_errors[2] and edict_errors[2] < 0.05


def test_edict_from_noise_starts_both_chains_at_x_t() -> None:
    scheduler = grid_scheduler()
    model = Counting(mixture(scheduler))
    x_t = torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    out = ddim.sample_exact(model, scheduler, x_t, method="edict", timesteps=[999, 500, 0], p=0.95)
    steps = ddim.invert(mixture(scheduler), scheduler, torch.zeros(1, 3), timesteps=[999, 500, 0], method="edict").steps
    latent = ddim.EDICTLatent(x_t, x_t, steps, 0.95)
    assert model.calls == 6 and torch.equal(out, ddim.sample_exact(model, scheduler, latent))


# ----------------------------------------------------------------------------- guidance
def guided_models(scheduler: ddim.DDIMScheduler) -> tuple[GaussianMixtureModel, GaussianMixtureModel]:
    """Conditional = one component ("class 0"), unconditional = the mixture (the README's example)."""
    conditional = GaussianMixtureModel(scheduler.alphas_cumprod, MEANS[:1], 0.2)
    return conditional, GaussianMixtureModel(scheduler.alphas_cumprod, MEANS, 0.2)


@pytest.mark.parametrize("method", EXACT)
@pytest.mark.parametrize("rescale", [0.0, 0.7])
def test_guided_exact_round_trip(method: str, rescale: float) -> None:
    scheduler = grid_scheduler()
    conditional, unconditional = guided_models(scheduler)
    x0 = conditional.sample_data(16, torch.Generator().manual_seed(6))
    guidance = {"guidance_scale": 3.0, "unconditional_model": unconditional, "guidance_rescale": rescale}
    latent = ddim.invert(conditional, scheduler, x0, num_inference_steps=20, method=method, **guidance)
    torch.testing.assert_close(ddim.sample_exact(conditional, scheduler, latent, **guidance), x0, rtol=0, atol=1e-10)
    # Guidance shaped the latent: sampling it back unguided lands elsewhere.
    unguided = ddim.sample_exact(conditional, scheduler, latent)
    assert float((unguided - x0).abs().max()) > 0.1


def test_guided_ddim_inversion_with_fixed_point_iterations_retraces_guided_sampling() -> None:
    scheduler = grid_scheduler()
    conditional, unconditional = guided_models(scheduler)
    x0 = conditional.sample_data(16, torch.Generator().manual_seed(7))
    guidance = {"guidance_scale": 3.0, "unconditional_model": unconditional, "guidance_rescale": 0.7}

    def error(iterations: int, **inversion_guidance: object) -> float:
        x_t = ddim.invert(
            conditional, scheduler, x0, num_inference_steps=20, fixed_point_iterations=iterations, **inversion_guidance
        )
        back = ddim.sample(conditional, scheduler, noise=x_t, num_inference_steps=20, progress=False, **guidance)
        return float((back - x0).abs().amax(dim=1).median())  # the median row (a few converge slowly)

    assert error(0, **guidance) > 0.01
    assert error(20, **guidance) < 1e-6  # the fixed point is the exact inverse of each guided step
    assert error(20) > 0.05  # inverting without the guidance does not


def test_guidance_is_checked_as_in_sample() -> None:
    scheduler = grid_scheduler()
    model = mixture(scheduler)
    x0 = torch.zeros(2, 3, dtype=torch.float64)
    for method in ["ddim", *EXACT]:
        with pytest.raises(ValueError, match="need an unconditional branch"):
            ddim.invert(model, scheduler, x0, method=method, guidance_scale=2.0)
        with pytest.raises(ValueError, match=r"guidance_rescale=1\.5 is out of range"):
            ddim.invert(model, scheduler, x0, method=method, unconditional_model=model, guidance_rescale=1.5)
    latent = ddim.invert(model, scheduler, x0, num_inference_steps=3, method="edict")
    with pytest.raises(TypeError, match="guidance_scale must be a real number"):
        ddim.sample_exact(model, scheduler, latent, guidance_scale="2", unconditional_model=model)


# ----------------------------------------------------------------------------- any grid, any prediction type
CONFIGS = [
    {"timestep_spacing": "leading"},
    {"timestep_spacing": "leading", "steps_offset": 1, "set_alpha_to_one": False},
    {"timestep_spacing": "trailing"},
    {"timestep_spacing": "trailing", "prev_timestep_from_grid": True},
    {"timestep_spacing": "linspace", "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    {"timestep_spacing": "quadratic"},
    {"beta_schedule": "squaredcos_cap_v2", "prev_timestep_from_grid": True},
]


@settings(max_examples=30, deadline=None)
@given(
    method=st.sampled_from(EXACT),
    prediction_type=st.sampled_from(PREDICTION_TYPES),
    config=st.sampled_from(CONFIGS),
    n=st.integers(1, 25),
    custom=st.one_of(st.none(), st.sets(st.integers(0, 998), min_size=1, max_size=12)),
    weight=st.floats(0.9, 1.0),
    seed=st.integers(0, 2**16),
)
def test_round_trip_is_exact_on_any_grid(
    method: str, prediction_type: str, config: dict, n: int, custom: set[int] | None, weight: float, seed: int
) -> None:
    scheduler = ddim.DDIMScheduler(clip_sample=False, prediction_type=prediction_type, **config)
    model = mixture(scheduler, prediction_type)
    x0 = model.sample_data(8, torch.Generator().manual_seed(seed))
    grid = {"timesteps": sorted(custom, reverse=True)} if custom else {"num_inference_steps": n}
    parameter = {"p": weight} if method == "edict" else {"gamma": weight}
    assert round_trip_error(model, scheduler, x0, method, **grid, **parameter) <= 1e-9


# ----------------------------------------------------------------------------- bad input
def test_invert_refuses_what_a_method_does_not_take() -> None:
    scheduler = grid_scheduler()
    model = mixture(scheduler)
    x0 = torch.zeros(2, 3, dtype=torch.float64)
    with pytest.raises(
        ValueError, match=r"method='edcit' is not supported; allowed values are \['ddim', 'edict', 'bdia'\]"
    ):
        ddim.invert(model, scheduler, x0, method="edcit")
    with pytest.raises(TypeError, match="method must be a string"):
        ddim.invert(model, scheduler, x0, method=None)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match=r"method='bdia' does not take p=0\.9 \(EDICT's mixing weight\)"):
        ddim.invert(model, scheduler, x0, method="bdia", p=0.9)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match=r"method='ddim' does not take gamma=1\.0"):
        ddim.invert(model, scheduler, x0, gamma=1.0)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="does not take fixed_point_iterations=3 \\(EDICT inverts exactly\\)"):
        ddim.invert(model, scheduler, x0, method="edict", fixed_point_iterations=3)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="does not take return_trajectory=True"):
        ddim.invert(model, scheduler, x0, method="bdia", return_trajectory=True)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match=r"p=0\.0 is out of range; allowed values are \(0, 1\]"):
        ddim.invert(model, scheduler, x0, method="edict", p=0.0)
    with pytest.raises(ValueError, match=r"gamma=1\.5 is out of range; allowed values are \(0, 1\]"):
        ddim.invert(model, scheduler, x0, method="bdia", gamma=1.5)
    with pytest.raises(TypeError, match="p must be a real number"):
        ddim.invert(model, scheduler, x0, method="edict", p="0.9")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="sample must be a floating"):
        ddim.invert(model, scheduler, torch.zeros(2, 3, dtype=torch.int64), method="edict")
    with pytest.raises(ValueError, match="invert needs clip_sample=False"):
        ddim.invert(model, ddim.DDIMScheduler(), x0, method="bdia")


def test_zero_terminal_snr_grids_are_refused_unless_their_last_timestep_is_left_out() -> None:
    scheduler = grid_scheduler(rescale_betas_zero_snr=True, prediction_type="v_prediction")
    model = mixture(scheduler, "v_prediction")
    x0 = model.sample_data(4, torch.Generator().manual_seed(8))
    for method in EXACT:
        with pytest.raises(ValueError, match=r"timestep 999 has abar_t = 0\.0 \(a zero terminal SNR schedule\)"):
            ddim.invert(model, scheduler, x0, num_inference_steps=10, method=method)
        # abar_998 = 4e-9: the first step's coefficients are ~1e3, and amplify rounding as much.
        assert round_trip_error(model, scheduler, x0, method, timesteps=[998, 700, 300, 0]) <= 1e-6


def test_sample_exact_refuses_bad_starts_and_options_a_latent_fixes() -> None:
    scheduler = grid_scheduler()
    model = mixture(scheduler)
    x0 = torch.zeros(2, 3, dtype=torch.float64)
    latent = ddim.invert(model, scheduler, x0, num_inference_steps=3, method="bdia")
    with pytest.raises(ValueError, match="num_inference_steps, gamma must be left unset when start is a BDIALatent"):
        ddim.sample_exact(model, scheduler, latent, num_inference_steps=3, gamma=1.0)
    with pytest.raises(ValueError, match="method must be 'edict' or 'bdia' when start is a tensor"):
        ddim.sample_exact(model, scheduler, x0)
    with pytest.raises(ValueError, match="method='ddim' is not supported; allowed values are \\['edict', 'bdia'\\]"):
        ddim.sample_exact(model, scheduler, x0, method="ddim")
    with pytest.raises(ValueError, match="method='edict' does not take gamma"):
        ddim.sample_exact(model, scheduler, x0, method="edict", gamma=0.5)
    with pytest.raises(TypeError, match="start must be an EDICTLatent, a BDIALatent or a tensor x_T, got list"):
        ddim.sample_exact(model, scheduler, [x0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"gamma=-0\.5 is out of range"):
        ddim.sample_exact(model, scheduler, x0, method="bdia", gamma=-0.5)
    with pytest.raises(ValueError, match=r"x shape \(2, 3\) and y shape \(2, 4\) must be equal"):
        ddim.EDICTLatent(x0, torch.zeros(2, 4, dtype=torch.float64), latent.steps)
    with pytest.raises(TypeError, match="steps must be a non-empty tuple of GridStep"):
        ddim.BDIALatent(x0, x0, [])  # type: ignore[arg-type]
