#!/usr/bin/env python
"""Fit the rational approximation of the normal CDF that the C++ kernels' GELU uses.

    python scripts/fit_gelu_phi.py            # prints the coefficients and the errors

GELU (eq. 4-5's sigma, exact form) is ``gelu(z) = z * Phi(z)`` with ``Phi(z) = (1 + erf(z / sqrt 2)) / 2``.
``titn_edu/csrc/vmath.h`` computes ``Phi(z) - 1/2 = z P(z^2) / Q(z^2)`` on ``z`` clamped to
[-6, 6] (beyond it ``Phi`` is 0 or 1 to within 1e-9), with ``P`` of degree 5 and ``Q`` of degree
5, ``Q(0) = 1``: eleven multiply-adds and one division, against an exponential, a division and a
polynomial for the Abramowitz & Stegun formula PyTorch uses. The coefficients come from this
script: a linearised least-squares fit (the denominator of the previous iteration divides the
equations) with Lawson's reweighting towards the minimax (equal-ripple) fit of the absolute error.
It prints the error in float64 and that of the kernel's float32 evaluation (Horner's rule, the same
operations in the same order), both against scipy's ``erf``, and PyTorch's own float32 GELU error for scale.
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.special import erf

CLAMP = 6.0


def target(z: np.ndarray) -> np.ndarray:
    return 0.5 * erf(z / np.sqrt(2.0))  # Phi(z) - 1/2


def fit(deg_p: int, deg_q: int, iterations: int = 60) -> tuple[np.ndarray, np.ndarray, float]:
    # Points dense near 0 and near the clamp, where the error of a rational fit peaks.
    z = np.unique(np.concatenate([np.linspace(0.0, CLAMP, 6000),
                                  CLAMP * (1.0 - np.cos(np.linspace(0.0, np.pi / 2, 3000)))]))[1:]
    f, u = target(z), z * z
    num = np.stack([z * u**i for i in range(deg_p + 1)], axis=1)
    den = np.stack([u**i for i in range(1, deg_q + 1)], axis=1)
    weights, q_prev = np.ones_like(z), np.ones_like(z)
    for _ in range(iterations):
        # z P(u) - f (1 + q_1 u + ...) = 0, divided by the last Q so the residual approximates the error
        a = np.concatenate([num, -f[:, None] * den], axis=1) / q_prev[:, None]
        sw = np.sqrt(weights)
        c, *_ = np.linalg.lstsq(a * sw[:, None], (f / q_prev) * sw, rcond=None)
        p, q = c[:deg_p + 1], np.concatenate([[1.0], c[deg_p + 1:]])
        q_prev = np.polyval(q[::-1], u)
        err = z * np.polyval(p[::-1], u) / q_prev - f
        weights = weights * np.abs(err)  # Lawson: weight up where the error is large
        weights /= weights.sum()
    return p, q, float(np.abs(err).max())


def phi_float32(p: np.ndarray, q: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Phi(z) exactly as the kernel evaluates it, in float32."""
    z = z.astype(np.float32)
    zc = np.clip(z, np.float32(-CLAMP), np.float32(CLAMP))
    u = zc * zc
    num = np.float32(p[-1])
    for c in p[-2::-1]:
        num = num * u + np.float32(c)
    den = np.float32(q[-1])
    for c in q[-2::-1]:
        den = den * u + np.float32(c)
    return zc * num / den + np.float32(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deg-p", type=int, default=5)
    parser.add_argument("--deg-q", type=int, default=5)
    args = parser.parse_args()
    p, q, err64 = fit(args.deg_p, args.deg_q)
    z = np.linspace(-10.0, 10.0, 2_000_001)
    exact = 0.5 * (1.0 + erf(z / np.sqrt(2.0)))
    err32 = np.abs(phi_float32(p, q, z).astype(np.float64) - exact).max()
    gelu_err = np.abs(z * phi_float32(p, q, z).astype(np.float64) - z * exact)[np.abs(z) <= 6].max()
    print(f"P: degree {args.deg_p}, Q: degree {args.deg_q}; clamp |z| <= {CLAMP}")
    print("P coefficients (z^1, z^3, ...):", ", ".join(f"{c:.9e}f" for c in p))
    print("Q coefficients (1, z^2, ...):  ", ", ".join(f"{c:.9e}f" for c in q))
    print(f"max |error| of Phi: {err64:.2e} (float64 fit), {err32:.2e} (float32 evaluation, |z| <= 10)")
    print(f"max |error| of gelu(z) = z Phi(z) for |z| <= 6, float32: {gelu_err:.2e}")
    try:  # for scale: PyTorch's own float32 GELU, measured the same way
        import torch

        ref = torch.nn.functional.gelu(torch.from_numpy(z).float()).double().numpy()
        print(f"PyTorch's float32 GELU for |z| <= 6, for comparison: {np.abs(ref - z * exact)[np.abs(z) <= 6].max():.2e}")
    except ImportError:
        pass


if __name__ == "__main__":
    main()
