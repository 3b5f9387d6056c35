"""The contrast transfer function, RELION's formula (``src/ctf.h``, ``getCTF``).

For a spatial frequency ``s = (sx, sy)`` in 1/Å, at angle ``φ`` from the x axis:

    Δf(φ)  = (U + V) / 2 + (U - V) / 2 · cos 2(φ - θ)          (U, V, Δf in Å, underfocus > 0)
    γ(s)   = -π λ Δf |s|² + π/2 · Cs λ³ |s|⁴ - φ_plate - atan(Q0 / sqrt(1 - Q0²))
    CTF(s) = -sin γ(s) · exp(-B |s|² / 4) · scale

with θ = rlnDefocusAngle measured from +x towards +y, λ the relativistic electron wavelength,
Cs in Å (mm · 1e7), Q0 the amplitude contrast and φ_plate the phase shift. The astigmatic
term is computed as ``(U - V)/2 · ((sx² - sy²) cos 2θ + 2 sx sy sin 2θ)``, a polynomial in
``s``: no angle of ``s`` is taken, so the CTF is smooth (and differentiable) everywhere,
including at ``s = 0`` and at zero astigmatism, and U < V is as valid as U > V.
"""

from __future__ import annotations

import math

import torch

from cryotorch.physics.fourier import frequency_grid_2d

__all__ = ["compute_ctf_2d", "electron_wavelength_angstrom"]


def electron_wavelength_angstrom(voltage_kv: torch.Tensor | float) -> torch.Tensor:
    """Relativistic electron wavelength in Å for an acceleration voltage in kV."""
    v = torch.as_tensor(voltage_kv, dtype=torch.float64) * 1e3
    return 12.2643247 / torch.sqrt(v * (1 + 0.978466e-6 * v))


def compute_ctf_2d(
    d: int,
    pixel_size_angstrom: torch.Tensor,
    defocus_u_angstrom: torch.Tensor,
    defocus_v_angstrom: torch.Tensor,
    astigmatism_angle_deg: torch.Tensor,
    voltage_kv: torch.Tensor,
    spherical_aberration_mm: torch.Tensor,
    amplitude_contrast: torch.Tensor,
    phase_shift_deg: torch.Tensor | float = 0.0,
    bfactor: torch.Tensor | float = 0.0,
    scale: torch.Tensor | float = 1.0,
) -> torch.Tensor:
    """CTFs on the rfft_2d grid of a box-``d`` image: ``(b,)`` parameters -> ``(b, d, d // 2 + 1)``.

    Every parameter is a tensor of shape ``(b,)`` (or broadcastable to it, floats included).
    The result has the dtype of ``defocus_u_angstrom`` and lives on its device.
    """
    dtype, device = defocus_u_angstrom.dtype, defocus_u_angstrom.device

    def param(x: torch.Tensor | float) -> torch.Tensor:
        return torch.as_tensor(x, dtype=dtype, device=device).reshape(-1, 1, 1)

    k = frequency_grid_2d(d, device).to(dtype)
    s = k / (d * param(pixel_size_angstrom)[..., None])  # (b, d, d//2+1, 2) in 1/Å
    sx, sy = s[..., 0], s[..., 1]
    s2 = sx**2 + sy**2
    u, v = param(defocus_u_angstrom), param(defocus_v_angstrom)
    theta = torch.deg2rad(param(astigmatism_angle_deg))
    astig = (sx**2 - sy**2) * torch.cos(2 * theta) + 2 * sx * sy * torch.sin(2 * theta)
    defocus_s2 = 0.5 * (u + v) * s2 + 0.5 * (u - v) * astig  # Δf(φ) |s|²
    lam = electron_wavelength_angstrom(param(voltage_kv)).to(dtype)
    cs = param(spherical_aberration_mm) * 1e7
    q0 = param(amplitude_contrast)
    gamma = (
        -math.pi * lam * defocus_s2
        + 0.5 * math.pi * cs * lam**3 * s2**2
        - torch.deg2rad(param(phase_shift_deg))
        - torch.atan(q0 / torch.sqrt(1 - q0**2))
    )
    return -torch.sin(gamma) * torch.exp(-param(bfactor) * s2 / 4) * param(scale)
