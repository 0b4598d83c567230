"""``ddim.slerp`` at its edges: nearly opposite, zero, non-finite and 1-D rows are refused by name; every
accepted input gives a finite interpolant that equals the formula, and equal-norm rows keep their norm."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import ddim
from ddim.interpolation import ANTIPODAL_ANGLE

rows = arrays("float64", (3, 4), elements=st.floats(-2, 2, allow_subnormal=False))


def cosine_of(a: list[float], b: list[float]) -> float:
    norm_a, norm_b = math.hypot(*a), math.hypot(*b)
    return sum(p / norm_a * q / norm_b for p, q in zip(a, b, strict=True))


def formula(a: list[float], b: list[float], w: float) -> list[float]:
    """slerp of two rows written out in plain Python floats (arccos form)."""
    theta = math.acos(max(-1.0, min(1.0, cosine_of(a, b))))
    s = math.sin(theta)
    return [(math.sin((1 - w) * theta) * p + math.sin(w * theta) * q) / s for p, q in zip(a, b, strict=True)]


def test_nearly_opposite_equal_norm_rows_stay_on_their_sphere() -> None:
    x0 = torch.tensor([[1.5, -0.5, 0.25, 1.0]], dtype=torch.float64)
    side = torch.tensor([[0.5, 1.5, 0.0, 0.0]], dtype=torch.float64)  # orthogonal to x0
    side = side * x0.norm() / side.norm()
    for gap in (1e-5, 1e-4, 1e-2):  # angle pi - gap, outside ANTIPODAL_ANGLE
        x1 = -math.cos(gap) * x0 + math.sin(gap) * side
        for w in (0.1, 0.5, 0.9):
            out = ddim.slerp(x0, x1, w)
            assert bool(out.isfinite().all())
            torch.testing.assert_close(out.norm(dim=1), x0.norm(dim=1), rtol=1e-9, atol=0)


def test_antipodal_zero_non_finite_and_one_dimensional_rows_are_refused_by_name() -> None:
    x0 = torch.tensor([[1.0, 2.0], [0.5, -1.0], [1.0, 0.0]])
    x1 = torch.tensor([[0.0, 1.0], [-0.5, 1.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match=r"x0 and x1 row 1 are antipodal .* no unique great circle"):
        ddim.slerp(x0, x1, 0.5)
    tilt = torch.tensor([[0.0, 0.0], [ANTIPODAL_ANGLE / 10, ANTIPODAL_ANGLE / 20], [0.0, 0.0]])
    with pytest.raises(ValueError, match="row 1 are antipodal"):
        ddim.slerp(x0.double(), x1.double() + tilt.double(), 0.5)
    zero = x1.clone()
    zero[2] = 0
    with pytest.raises(ValueError, match=r"x1 row 2 has norm 0\.0: slerp needs finite rows of norm > 0"):
        ddim.slerp(x0, zero, 0.5)
    with pytest.raises(ValueError, match=r"x0 row 0 has norm 0\.0"):
        ddim.slerp(torch.zeros(2, 3), torch.ones(2, 3), 0.0)
    nan = x0.clone()
    nan[1, 0] = math.nan
    with pytest.raises(ValueError, match=r"x0 row 1 has norm nan"):
        ddim.slerp(nan, torch.ones(3, 2), 0.5)
    with pytest.raises(ValueError, match=r"at least one feature dimension, \(B, \.\.\.\); for one vector"):
        ddim.slerp(torch.tensor([1.0, -2.0]), torch.tensor([-1.0, 2.0]), 0.5)
    with pytest.raises(TypeError, match="floating-point"):
        ddim.slerp(torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long), 0.5)


@settings(max_examples=150, deadline=None)
@given(a=rows, b=rows, w=st.floats(0, 1))
def test_property_any_rows_within_two_give_the_formula_or_a_refusal(a: object, b: object, w: float) -> None:
    x0, x1 = torch.as_tensor(a), torch.as_tensor(b)
    try:
        out = ddim.slerp(x0, x1, w)
    except ValueError as error:
        assert "has norm 0" in str(error) or "antipodal" in str(error)
        return
    assert bool(out.isfinite().all())
    for row in range(3):
        p, q = x0[row].tolist(), x1[row].tolist()
        if abs(cosine_of(p, q)) < 1 - 1e-6:  # where the arccos form of the reference is well conditioned
            torch.testing.assert_close(out[row], torch.tensor(formula(p, q, w), dtype=torch.float64))


@settings(max_examples=150, deadline=None)
@given(a=rows, b=rows, radius=st.floats(0.1, 2), w=st.floats(0, 1))
def test_property_equal_norm_rows_stay_within_the_inputs_norm(a: object, b: object, radius: float, w: float) -> None:
    x0, x1 = torch.as_tensor(a), torch.as_tensor(b)
    assume(bool((x0.norm(dim=1) > 1e-3).all() and (x1.norm(dim=1) > 1e-3).all()))
    x0 = radius * x0 / x0.norm(dim=1, keepdim=True)
    x1 = radius * x1 / x1.norm(dim=1, keepdim=True)
    try:
        out = ddim.slerp(x0.float(), x1.float(), w)
    except ValueError as error:
        assert "antipodal" in str(error)
        return
    assert bool(out.isfinite().all())
    torch.testing.assert_close(out.norm(dim=1), torch.full((3,), radius, dtype=torch.float32), rtol=1e-5, atol=1e-6)
