"""The CTF: hand-worked values, symmetries, an outside implementation, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from cryotorch.physics.ctf import compute_ctf_2d, electron_wavelength_angstrom
from tests.physics_helpers import DEVICES


def t(*values: float, device="cpu") -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, device=device)


def ctf(
    d=64,
    psize=1.2,
    u=15000.0,
    v=15000.0,
    angle=0.0,
    kv=300.0,
    cs=2.7,
    q0=0.1,
    phase=0.0,
    b=0.0,
    device="cpu",
):
    return compute_ctf_2d(
        d, t(psize), t(u, device=device), t(v), t(angle), t(kv), t(cs), t(q0), t(phase), t(b)
    )[0]


def test_wavelength_300kv():
    assert float(electron_wavelength_angstrom(300.0)) == pytest.approx(0.019687, abs=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_dc_value_is_amplitude_contrast(device):
    d = 64
    assert float(ctf(q0=0.1, device=device)[d // 2, 0]) == pytest.approx(0.1)
    assert float(ctf(q0=0.1, phase=90.0, device=device)[d // 2, 0]) == pytest.approx(
        math.sqrt(1 - 0.01)
    )


def test_first_zero_without_cs():
    # Cs = 0, Q0 = 0: CTF = sin(π λ Δf s²), zero at s² = 1 / (λ Δf), positive before it.
    d, defocus, k0 = 64, 20000.0, 10
    lam = float(electron_wavelength_angstrom(300.0))
    psize = k0 / (d * math.sqrt(1 / (lam * defocus)))  # puts the zero on grid column k0
    c = ctf(d=d, psize=psize, u=defocus, v=defocus, cs=0.0, q0=0.0)
    assert abs(float(c[d // 2, k0])) < 1e-12
    assert float(c[d // 2, k0 - 2]) > 0.5 and float(c[d // 2, k0 + 2]) < -0.5


def test_swapping_u_and_v_with_a_quarter_turn_is_the_same_ctf():
    torch.testing.assert_close(
        ctf(u=16000, v=14000, angle=25.0), ctf(u=14000, v=16000, angle=115.0)
    )


def test_b_factor_and_astigmatism_direction():
    d = 64
    damped = ctf(b=100.0) / ctf(b=0.0)
    s2 = (10 / (d * 1.2)) ** 2
    assert float(damped[d // 2, 10]) == pytest.approx(math.exp(-100 * s2 / 4))
    # Angle 0: U lies along x, so along x the CTF is that of defocus U.
    astig = ctf(u=18000, v=12000, angle=0.0)
    torch.testing.assert_close(astig[d // 2, :], ctf(u=18000, v=18000)[d // 2, :])
    torch.testing.assert_close(astig[:, 0], ctf(u=12000, v=12000)[:, 0])


def test_agrees_with_torch_ctf():
    torch_ctf = pytest.importorskip("torch_ctf")
    d = 64
    ours = ctf(d=d, u=16000, v=14000, angle=30.0, q0=0.07, phase=20.0)
    theirs = torch_ctf.calculate_ctf_2d(
        defocus=torch.tensor(1.5, dtype=torch.float64), astigmatism=0.1, astigmatism_angle=30.0,
        voltage=300.0, spherical_aberration=2.7, amplitude_contrast=0.07, phase_shift=20.0,
        pixel_size=1.2, image_shape=(d, d), rfft=True, fftshift=True,
    ).squeeze()  # fmt: skip
    # The two differ by 1e-3 at most (their wavelength formula rounds its constants differently).
    assert float((ours - theirs).abs().max()) < 2e-3


def test_gradcheck_at_zero_astigmatism_and_dc():
    def f(u, v, angle):
        return compute_ctf_2d(8, t(1.5), u, v, angle, t(300.0), t(2.7), t(0.1))

    u = torch.tensor([15000.0], dtype=torch.float64, requires_grad=True)
    v = torch.tensor([15000.0], dtype=torch.float64, requires_grad=True)
    angle = torch.tensor([0.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (u, v, angle))
    grads = torch.autograd.grad(f(u, v, angle).sum(), (u, v, angle))
    assert all(torch.isfinite(g).all() for g in grads)
