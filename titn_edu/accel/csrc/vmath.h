// Eight-lane float vectors and the few functions of them the kernels need: exp and GELU.
//
// Written with GCC/Clang vector extensions (no PyTorch headers), so the kernels build in a second
// or two with any recent g++ or clang++; `-march=native` turns the vectors into AVX registers.
// min and max use the AVX instructions where there are any (one instruction instead of a compare
// and a blend), the portable compare elsewhere.
//
// * vexp: Cephes expf (range reduction by ln 2, degree-5 polynomial), relative error ~1e-7.
// * phi, gelu, gelu_and_grad: the exact (erf) GELU of eq. 4-5, gelu(z) = z Phi(z), with the normal
//   CDF Phi(z) = 1/2 + z P(z^2) / Q(z^2) on z clamped to [-6, 6]: a rational fit of degree 5 over 5
//   (scripts/fit_gelu_phi.py prints the coefficients and the errors), max |error| 2.5e-7 on Phi in
//   float32, about PyTorch's own (whose erf is Abramowitz & Stegun 7.1.26): eleven multiply-adds
//   and a division, no exponential, so the forward GELU is twice as fast as through erf.
//   The derivative Phi(z) + z phi(z) needs the density phi(z) = exp(-z^2/2) / sqrt(2 pi) as well.
#pragma once
#include <cstdint>
#include <cmath>
#if defined(__AVX__)
#include <immintrin.h>
#endif

typedef float v8 __attribute__((vector_size(32)));
typedef int32_t vi8 __attribute__((vector_size(32)));
constexpr int L = 8;  // lanes

static inline v8 splat(float x) { return (v8){} + x; }
static inline v8 load8(const float* p) { v8 v; __builtin_memcpy(&v, p, sizeof v); return v; }
static inline void store8(float* p, v8 v) { __builtin_memcpy(p, &v, sizeof v); }

static inline v8 vmin(v8 a, v8 b) {
#if defined(__AVX__)
  return (v8)_mm256_min_ps((__m256)a, (__m256)b);
#else
  return a < b ? a : b;
#endif
}
static inline v8 vmax(v8 a, v8 b) {
#if defined(__AVX__)
  return (v8)_mm256_max_ps((__m256)a, (__m256)b);
#else
  return a > b ? a : b;
#endif
}

static inline v8 vexp(v8 x) {
  x = vmin(vmax(x, splat(-87.3f)), splat(88.7f));
  v8 n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round(x / ln 2)
  v8 r = x - n * 0.693359375f + n * 2.12194440e-4f;                 // x - n ln 2, ln 2 in two parts
  v8 p = splat(1.9875691500E-4f);
  p = p * r + 1.3981999507E-3f;
  p = p * r + 8.3334519073E-3f;
  p = p * r + 4.1665795894E-2f;
  p = p * r + 1.6666665459E-1f;
  p = p * r + 5.0000001201E-1f;
  v8 y = p * r * r + r + 1.0f;
  vi8 e = (__builtin_convertvector(n, vi8) + 127) << 23;  // 2^n
  return y * (v8)e;
}

// The normal CDF Phi(z) (coefficients: scripts/fit_gelu_phi.py).
static inline v8 phi(v8 z) {
  const v8 zc = vmin(vmax(z, splat(-6.0f)), splat(6.0f));
  const v8 u = zc * zc;
  v8 p = splat(2.015563358e-08f);
  p = p * u + 6.512969504e-06f;
  p = p * u + 1.990983691e-04f;
  p = p * u + 4.862599751e-03f;
  p = p * u + 3.687335243e-02f;
  p = p * u + 3.989421402e-01f;
  v8 q = splat(1.133129980e-06f);
  q = q * u + 8.306479825e-05f;
  q = q * u + 2.057176840e-03f;
  q = q * u + 3.037471455e-02f;
  q = q * u + 2.590922534e-01f;
  q = q * u + 1.0f;
  return zc * p / q + 0.5f;
}
// Exact GELU (eq. 4-5's sigma): gelu(z) = z Phi(z).
static inline v8 gelu(v8 z) { return z * phi(z); }
// GELU and its derivative Phi(z) + z phi(z) at once.
static inline void gelu_and_grad(v8 z, v8& out, v8& grad) {
  const v8 cdf = phi(z);
  out = z * cdf;
  grad = cdf + z * 0.39894228040143268f * vexp(-0.5f * z * z);
}
