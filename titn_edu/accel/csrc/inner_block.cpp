// TITN's inner (pixel) transformer block, fused: forward and backward for one patch at a time.
//
// The block is eq. 2-6 on the 16 pixel tokens of a patch (paper §3.2, Fig. 1):
//     X' = X + m1 * proj(MSA(LN1(X))),        MSA: eq. 1-3, heads of D = C / heads features
//     Y  = X' + m2 * fc2(GELU(fc1(LN2(X'))))  MLP: eq. 4-5, LN: eq. 6
// with m1, m2 the per-patch stochastic-depth scales (1 without drop path). PyTorch runs it as about
// 70 small operators over rows of 12 features and sequences of 16 tokens, each paying per-row
// overhead; here one patch's 16 x 12 values stay in registers and L1 from LayerNorm to the last
// residual. Layout inside: feature-major, one `Row` (16 floats, two 8-lane vectors) per feature,
// so every product, LayerNorm and softmax runs across the 16 tokens in SIMD lanes; attention
// scores are kept key by key with the queries in lanes, which makes softmax lane-wise as well.
//
// The backward pass recomputes the patch's forward activations (storing and reloading them costs
// as much, and this way a block keeps only its input for the backward pass) and accumulates the
// parameter gradients lane-wise, two patches at a time, summed once per thread at the end.
// Patches are split across OpenMP threads: the runtime PyTorch itself loaded, when built with
// -fopenmp, so the kernel uses PyTorch's threads rather than a second pool.
//
// Written with GCC/Clang vector extensions (vmath.h: the vectors, exp and GELU), plus AVX shuffles
// for the transposes where the processor has AVX (a scalar loop elsewhere), so it builds in a
// second or two with any recent g++ or clang++; titn_edu/native.py builds and loads it with
// ctypes and checks it against the PyTorch path (tests/test_native.py). exp and the GELU's normal
// CDF are approximations with float32 errors of about 1e-7 (vmath.h): outputs agree with
// PyTorch's to float32 rounding of the same order as a change of kernel.
#include <cstdint>
#include <cmath>
#include <vector>

#include "vmath.h"

constexpr int T = 16, G = T / L;  // tokens per patch, vectors per row
struct alignas(32) Row { v8 g[G]; };
static inline float* fl(Row* r) { return (float*)r->g; }
static inline const float* fl(const Row* r) { return (const float*)r->g; }

// out[o] = b[o] + sum_k W[o][k] in[k]
static inline void matvec(const float* __restrict W, const float* __restrict b, const Row* __restrict in,
                          Row* __restrict out, int O, int K) {
  int o = 0;
  for (; o + 4 <= O; o += 4) {
    v8 a[4][G];
    for (int u = 0; u < 4; ++u) for (int g = 0; g < G; ++g) a[u][g] = splat(b ? b[o+u] : 0.f);
    const float* w = W + o * K;
    for (int k = 0; k < K; ++k)
      for (int u = 0; u < 4; ++u) { const float c = w[u*K + k]; for (int g = 0; g < G; ++g) a[u][g] += c * in[k].g[g]; }
    for (int u = 0; u < 4; ++u) for (int g = 0; g < G; ++g) out[o+u].g[g] = a[u][g];
  }
  for (; o < O; ++o) {
    v8 a[G];
    for (int g = 0; g < G; ++g) a[g] = splat(b ? b[o] : 0.f);
    for (int k = 0; k < K; ++k) for (int g = 0; g < G; ++g) a[g] += W[o*K+k] * in[k].g[g];
    for (int g = 0; g < G; ++g) out[o].g[g] = a[g];
  }
}
// acc[o][k] += sum over tokens of dy[o] in[k] (lanes kept apart), four inputs at a time held in registers
static inline void outer_acc(v8* __restrict acc, const Row* __restrict dy, const Row* __restrict in, int O, int K) {
  int k = 0;
  for (; k + 4 <= K; k += 4) {
    const v8 i00 = in[k].g[0], i01 = in[k].g[1], i10 = in[k+1].g[0], i11 = in[k+1].g[1];
    const v8 i20 = in[k+2].g[0], i21 = in[k+2].g[1], i30 = in[k+3].g[0], i31 = in[k+3].g[1];
    for (int o = 0; o < O; ++o) {
      const v8 d0 = dy[o].g[0], d1 = dy[o].g[1];
      v8* a = acc + o * K + k;
      a[0] += d0 * i00 + d1 * i01;
      a[1] += d0 * i10 + d1 * i11;
      a[2] += d0 * i20 + d1 * i21;
      a[3] += d0 * i30 + d1 * i31;
    }
  }
  for (; k < K; ++k)
    for (int o = 0; o < O; ++o) acc[o * K + k] += dy[o].g[0] * in[k].g[0] + dy[o].g[1] * in[k].g[1];
}
// The same for two patches at once: half the accumulator loads and stores per product.
static inline void outer_acc2(v8* __restrict acc, const Row* __restrict dy, const Row* __restrict in,
                              const Row* __restrict dy2, const Row* __restrict in2, int O, int K) {
  int k = 0;
  for (; k + 2 <= K; k += 2) {
    const v8 i00 = in[k].g[0], i01 = in[k].g[1], i10 = in[k+1].g[0], i11 = in[k+1].g[1];
    const v8 j00 = in2[k].g[0], j01 = in2[k].g[1], j10 = in2[k+1].g[0], j11 = in2[k+1].g[1];
    for (int o = 0; o < O; ++o) {
      const v8 d0 = dy[o].g[0], d1 = dy[o].g[1], e0 = dy2[o].g[0], e1 = dy2[o].g[1];
      v8* a = acc + o * K + k;
      a[0] += (d0 * i00 + d1 * i01) + (e0 * j00 + e1 * j01);
      a[1] += (d0 * i10 + d1 * i11) + (e0 * j10 + e1 * j11);
    }
  }
  for (; k < K; ++k)
    for (int o = 0; o < O; ++o)
      acc[o * K + k] += (dy[o].g[0] * in[k].g[0] + dy[o].g[1] * in[k].g[1])
                      + (dy2[o].g[0] * in2[k].g[0] + dy2[o].g[1] * in2[k].g[1]);
}
static inline void row_acc(v8* __restrict acc, const Row* __restrict dy, int O) {
  for (int o = 0; o < O; ++o) acc[o] += dy[o].g[0] + dy[o].g[1];
}

// out[j] = sum_e coef[e][j] * rows[e] for the T tokens j: each token's lane of coef is a scalar
// (attention scores QK^T with the queries in lanes, key by key). Four tokens at a time for both
// lane groups: eight independent accumulators.
static inline void mix_lanes(Row* __restrict out, const Row* __restrict coef, const Row* __restrict rows, int E) {
  for (int j0 = 0; j0 < T; j0 += 4) {
    v8 a[4][G] = {};
    for (int e = 0; e < E; ++e) {
      const float* ce = fl(&coef[e]) + j0;
      for (int u = 0; u < 4; ++u) for (int g = 0; g < G; ++g) a[u][g] += ce[u] * rows[e].g[g];
    }
    for (int u = 0; u < 4; ++u) for (int g = 0; g < G; ++g) out[j0 + u].g[g] = a[u][g];
  }
}
// out[e] = sum_j coef[e][j] * rows[j] over the T tokens j (attention-weighted values, e < E).
// Six features at a time for both lane groups: twelve independent accumulators.
static inline void mix_rows(Row* __restrict out, const Row* __restrict coef, const Row* __restrict rows, int E) {
  for (int e0 = 0; e0 < E; e0 += 6) {
    const int eb = E - e0 < 6 ? E - e0 : 6;
    v8 a[6][G] = {};
    for (int j = 0; j < T; ++j)
      for (int e = 0; e < eb; ++e) {
        const float cj = fl(&coef[e0 + e])[j];
        for (int g = 0; g < G; ++g) a[e][g] += cj * rows[j].g[g];
      }
    for (int e = 0; e < eb; ++e) out[e0 + e] = Row{{a[e][0], a[e][1]}};
  }
}

// Transposes, with AVX shuffles where there are any (the scalar loops are the definition).
#if defined(__AVX__)
static inline void transpose8(__m256* r) {  // an 8 x 8 block held in eight registers, in place
  __m256 t[8], u[8];
  for (int k = 0; k < 8; k += 2) {
    t[k] = _mm256_unpacklo_ps(r[k], r[k + 1]);
    t[k + 1] = _mm256_unpackhi_ps(r[k], r[k + 1]);
  }
  for (int k = 0; k < 8; k += 4) {
    u[k] = _mm256_shuffle_ps(t[k], t[k + 2], 0x44);
    u[k + 1] = _mm256_shuffle_ps(t[k], t[k + 2], 0xEE);
    u[k + 2] = _mm256_shuffle_ps(t[k + 1], t[k + 3], 0x44);
    u[k + 3] = _mm256_shuffle_ps(t[k + 1], t[k + 3], 0xEE);
  }
  for (int k = 0; k < 4; ++k) {
    r[k] = _mm256_permute2f128_ps(u[k], u[k + 4], 0x20);
    r[k + 4] = _mm256_permute2f128_ps(u[k], u[k + 4], 0x31);
  }
}
#endif
// out[i] lane j = in[j] lane i, for the T x T attention matrices.
static inline void transpose(const Row* __restrict in, Row* __restrict out) {
#if defined(__AVX__)
  for (int bi = 0; bi < G; ++bi)      // lane group of the input = row block of the output
    for (int bj = 0; bj < G; ++bj) {  // row block of the input = lane group of the output
      __m256 r[8];
      for (int k = 0; k < 8; ++k) r[k] = (__m256)in[8 * bj + k].g[bi];
      transpose8(r);
      for (int k = 0; k < 8; ++k) out[8 * bi + k].g[bj] = (v8)r[k];
    }
#else
  for (int i = 0; i < T; ++i) for (int j = 0; j < T; ++j) fl(&out[i])[j] = fl(&in[j])[i];
#endif
}
// A patch as PyTorch stores it (token t's C features at p + t * C) into feature-major rows. (The
// way back stays element by element: eight-wide stores, half of which straddle cache lines at
// 12 features a token, measured no faster.)
static inline void load_patch(const float* __restrict p, Row* __restrict x, int C) {
  int c = 0;
#if defined(__AVX__)
  for (; c + 8 <= C; c += 8)
    for (int g = 0; g < G; ++g) {
      __m256 r[8];
      for (int k = 0; k < 8; ++k) r[k] = _mm256_loadu_ps(p + (8 * g + k) * C + c);
      transpose8(r);
      for (int k = 0; k < 8; ++k) x[c + k].g[g] = (v8)r[k];
    }
#endif
  for (; c < C; ++c) for (int t = 0; t < T; ++t) fl(&x[c])[t] = p[t * C + c];
}

static inline void ln_fwd(const Row* __restrict x, const float* __restrict gm, const float* __restrict be,
                          Row* __restrict n, Row& rs, Row* __restrict y, int C, float eps) {
  for (int g = 0; g < G; ++g) {
    v8 mu = {};
    for (int c = 0; c < C; ++c) mu += x[c].g[g];
    mu *= 1.0f / C;
    v8 var = {};
    for (int c = 0; c < C; ++c) { v8 d = x[c].g[g] - mu; var += d * d; }
    v8 r = var * (1.0f / C) + eps;
    for (int t = 0; t < L; ++t) r[t] = 1.0f / std::sqrt(r[t]);
    rs.g[g] = r;
    for (int c = 0; c < C; ++c) { v8 v = (x[c].g[g] - mu) * r; n[c].g[g] = v; y[c].g[g] = v * gm[c] + be[c]; }
  }
}
// dx[c] += LN backward of dy; accumulates dgamma, dbeta
static inline void ln_bwd(const Row* __restrict dy, const Row* __restrict n, const Row& rs, const float* __restrict gm,
                          Row* __restrict dx, v8* __restrict dg, v8* __restrict db, int C) {
  for (int c = 0; c < C; ++c) {
    dg[c] += dy[c].g[0] * n[c].g[0] + dy[c].g[1] * n[c].g[1];
    db[c] += dy[c].g[0] + dy[c].g[1];
  }
  for (int g = 0; g < G; ++g) {
    v8 m1 = {}, m2 = {};
    for (int c = 0; c < C; ++c) { v8 dn = dy[c].g[g] * gm[c]; m1 += dn; m2 += dn * n[c].g[g]; }
    m1 *= 1.0f / C; m2 *= 1.0f / C;
    for (int c = 0; c < C; ++c) dx[c].g[g] += rs.g[g] * (dy[c].g[g] * gm[c] - m1 - n[c].g[g] * m2);
  }
}

struct Dims { int C, HID, heads, D; float eps, scale; };
struct Cache {  // one patch's activations, feature-major
  Row *x, *n1, *a1, *qkv, *p, *o, *x2, *n2, *a2, *z, *hg, *gd, *y;
  Row rs1, rs2;
  std::vector<Row> buf;
  Cache(const Cache&) = delete;  // the row pointers point into buf
  explicit Cache(const Dims& d) : buf(d.C * 8 + 3 * d.C + d.heads * T + 3 * d.HID) {
    Row* q = buf.data(); const int C = d.C;
    x = q; q += C; n1 = q; q += C; a1 = q; q += C; qkv = q; q += 3 * C; p = q; q += d.heads * T; o = q; q += C;
    x2 = q; q += C; n2 = q; q += C; a2 = q; q += C; z = q; q += d.HID; hg = q; q += d.HID; gd = q; q += d.HID; y = q;
  }
};
// params: g1 b1 wqkv wp bp g2 b2 w1 bb1 w2 bb2
enum { G1, B1, WQKV, WP, BP, G2, B2, W1, BB1, W2, BB2, NPARAM };

static void forward_patch(const float* xp, const float* const* prm, const Dims& d, float m1, Cache& c, bool for_backward) {
  const int C = d.C, D = d.D;
  load_patch(xp, c.x, C);
  ln_fwd(c.x, prm[G1], prm[B1], c.n1, c.rs1, c.a1, C, d.eps);
  matvec(prm[WQKV], nullptr, c.a1, c.qkv, 3*C, C);
  for (int h = 0; h < d.heads; ++h) {
    const Row* q = c.qkv + h*D; const Row* k = c.qkv + C + h*D; const Row* v = c.qkv + 2*C + h*D;
    Row* P = c.p + h*T;
    mix_lanes(P, k, q, D);  // scores of key j in P[j], the queries in lanes
    for (int j = 0; j < T; ++j) for (int g = 0; g < G; ++g) P[j].g[g] *= d.scale;
    for (int g = 0; g < G; ++g) {  // softmax over the keys, lane-wise
      v8 m = P[0].g[g];
      for (int j = 1; j < T; ++j) m = m > P[j].g[g] ? m : P[j].g[g];
      v8 s0 = {}, s1 = {};
      for (int j = 0; j < T; j += 2) {
        v8 e0 = vexp(P[j].g[g] - m), e1 = vexp(P[j + 1].g[g] - m);
        P[j].g[g] = e0; P[j + 1].g[g] = e1; s0 += e0; s1 += e1;
      }
      const v8 inv = 1.0f / (s0 + s1);
      for (int j = 0; j < T; ++j) P[j].g[g] *= inv;
    }
    mix_rows(c.o + h*D, v, P, D);
  }
  matvec(prm[WP], prm[BP], c.o, c.x2, C, C);
  for (int k = 0; k < C; ++k) for (int g = 0; g < G; ++g) c.x2[k].g[g] = c.x[k].g[g] + m1 * c.x2[k].g[g];
  ln_fwd(c.x2, prm[G2], prm[B2], c.n2, c.rs2, c.a2, C, d.eps);
  matvec(prm[W1], prm[BB1], c.a2, c.z, d.HID, C);
  if (for_backward) {  // the backward pass needs GELU's derivative, not the MLP's output
    for (int i = 0; i < d.HID; ++i) for (int g = 0; g < G; ++g) gelu_and_grad(c.z[i].g[g], c.hg[i].g[g], c.gd[i].g[g]);
  } else {
    for (int i = 0; i < d.HID; ++i) for (int g = 0; g < G; ++g) c.hg[i].g[g] = gelu(c.z[i].g[g]);
    matvec(prm[W2], prm[BB2], c.hg, c.y, C, d.HID);
  }
}

static void forward_range(const float* X, float* Y, int64_t P, int C, int HID, int heads, float eps,
                          const float* const* prm, const float* m1s, const float* m2s) {
  Dims d{C, HID, heads, C / heads, eps, 1.0f / std::sqrt((float)(C / heads))};
  Cache c(d);
  for (int64_t p = 0; p < P; ++p) {
    const float m1 = m1s ? m1s[p] : 1.0f, m2 = m2s ? m2s[p] : 1.0f;
    forward_patch(X + p * T * C, prm, d, m1, c, false);
    float* yp = Y + p * T * C;
    for (int k = 0; k < C; ++k) for (int g = 0; g < G; ++g) c.y[k].g[g] = c.x2[k].g[g] + m2 * c.y[k].g[g];
    for (int t = 0; t < T; ++t) for (int k = 0; k < C; ++k) yp[t*C+k] = fl(&c.y[k])[t];
  }
}

static void transpose_w(const float* W, float* WT, int O, int K) {
  for (int o = 0; o < O; ++o) for (int k = 0; k < K; ++k) WT[k*O+o] = W[o*K+k];
}

// grads: same order as params, accumulated (+=) into; caller zeroes them.
// grd: the parameter gradients, flat in the order of `prm`, accumulated (+=) into.
// One patch's backward pass (after forward_patch(..., true) filled c): the input gradient into dX,
// bias, LayerNorm and the rows the weight gradients need (dy, dh, du, dqkv) into w; the weight
// gradients themselves are accumulated by the caller, two patches at a time.
struct Work {
  Row *dx, *dx2, *dy, *dh, *da, *dqkv, *dS, *PT, *du, *dO;
  std::vector<Row> buf;
  Work(const Work&) = delete;  // the row pointers point into buf
  explicit Work(const Dims& d) : buf(9 * d.C + d.HID + 2 * T) {
    Row* q = buf.data(); const int C = d.C;
    dx = q; q += C; dx2 = q; q += C; dy = q; q += C; dh = q; q += d.HID; da = q; q += C;
    dqkv = q; q += 3 * C; dS = q; q += T; PT = q; q += T; du = q; q += C; dO = q;
  }
};
struct Transposed {  // the weights transposed once per call, for the input gradients
  std::vector<float> wt;
  float *wqkv, *wp, *w1, *w2;
  Transposed(const float* const* prm, int C, int HID) : wt(3*C*C + C*C + 2*HID*C) {
    wqkv = wt.data(); wp = wqkv + 3*C*C; w1 = wp + C*C; w2 = w1 + HID*C;
    transpose_w(prm[WQKV], wqkv, 3*C, C); transpose_w(prm[WP], wp, C, C);
    transpose_w(prm[W1], w1, HID, C); transpose_w(prm[W2], w2, C, HID);
  }
};

static void backward_patch(const float* dyp, float* dxp, const float* const* prm, const Dims& d, const Transposed& wt,
                           float m1, float m2, const Cache& c, Work& w, v8* const* acc) {
  const int C = d.C, HID = d.HID, D = d.D;
  load_patch(dyp, w.dx2, C);
  // MLP branch: out = x2 + m2 * fc2(gelu(fc1(LN2(x2))))
  for (int k = 0; k < C; ++k) for (int g = 0; g < G; ++g) w.dy[k].g[g] = m2 * w.dx2[k].g[g];
  row_acc(acc[BB2], w.dy, C);
  matvec(wt.w2, nullptr, w.dy, w.dh, HID, C);
  for (int i = 0; i < HID; ++i) for (int g = 0; g < G; ++g) w.dh[i].g[g] *= c.gd[i].g[g];
  row_acc(acc[BB1], w.dh, HID);
  matvec(wt.w1, nullptr, w.dh, w.da, C, HID);
  ln_bwd(w.da, c.n2, c.rs2, prm[G2], w.dx2, acc[G2], acc[B2], C);
  // attention branch: x2 = x + m1 * proj(attn(LN1(x)))
  for (int k = 0; k < C; ++k) for (int g = 0; g < G; ++g) w.du[k].g[g] = m1 * w.dx2[k].g[g];
  row_acc(acc[BP], w.du, C);
  matvec(wt.wp, nullptr, w.du, w.dO, C, C);
  for (int h = 0; h < d.heads; ++h) {
    const Row* q = c.qkv + h*D; const Row* k = c.qkv + C + h*D; const Row* v = c.qkv + 2*C + h*D;
    const Row* Pm = c.p + h*T;
    Row* dq = w.dqkv + h*D; Row* dk = w.dqkv + C + h*D; Row* dv = w.dqkv + 2*C + h*D;
    Row* dS = w.dS; Row* PT = w.PT; const Row* dO = w.dO + h*D;
    mix_lanes(dS, v, dO, D);  // dP[j] = sum_e v[e][j] dO[e], queries in lanes
    for (int g = 0; g < G; ++g) {  // softmax backward: dS = P (dP - sum_j P dP), times the scale
      v8 r0 = {}, r1 = {};
      for (int j = 0; j < T; j += 2) { r0 += Pm[j].g[g] * dS[j].g[g]; r1 += Pm[j + 1].g[g] * dS[j + 1].g[g]; }
      const v8 r = r0 + r1;
      for (int j = 0; j < T; ++j) dS[j].g[g] = Pm[j].g[g] * (dS[j].g[g] - r) * d.scale;
    }
    mix_rows(dq, k, dS, D);
    // Keys in lanes: dk[e][j] = sum_i q[e][i] dS[j][i], dv[e][j] = sum_i dO[e][i] P[j][i].
    Row dST[T];
    transpose(dS, dST);
    transpose(Pm, PT);
    mix_rows(dk, q, dST, D);
    mix_rows(dv, dO, PT, D);
  }
  matvec(wt.wqkv, nullptr, w.dqkv, w.da, C, 3*C);
  for (int k = 0; k < C; ++k) w.dx[k] = w.dx2[k];
  ln_bwd(w.da, c.n1, c.rs1, prm[G1], w.dx, acc[G1], acc[B1], C);
  for (int t = 0; t < T; ++t) for (int k = 0; k < C; ++k) dxp[t*C+k] = fl(&w.dx[k])[t];
}

// grd: the parameter gradients, flat in the order of `prm`, accumulated (+=) into.
static void backward_range(const float* X, const float* dY, float* dX, int64_t P, int C, int HID, int heads,
                           float eps, const float* const* prm, const float* m1s, const float* m2s, float* grd) {
  Dims d{C, HID, heads, C / heads, eps, 1.0f / std::sqrt((float)(C / heads))};
  const Transposed wt(prm, C, HID);
  const int sizes[NPARAM] = {C, C, 3*C*C, C*C, C, C, C, HID*C, HID, C*HID, C};
  int off[NPARAM + 1]; off[0] = 0;
  for (int i = 0; i < NPARAM; ++i) off[i+1] = off[i] + sizes[i];
  std::vector<v8> accbuf(off[NPARAM], v8{});  // lane-wise sums, reduced once at the end
  v8* acc[NPARAM];
  for (int i = 0; i < NPARAM; ++i) acc[i] = accbuf.data() + off[i];
  Cache c[2] = {Cache(d), Cache(d)};
  Work w[2] = {Work(d), Work(d)};
  for (int64_t p = 0; p < P; p += 2) {
    const int n = P - p < 2 ? 1 : 2;
    for (int u = 0; u < n; ++u) {
      const float m1 = m1s ? m1s[p + u] : 1.0f, m2 = m2s ? m2s[p + u] : 1.0f;
      forward_patch(X + (p + u) * T * C, prm, d, m1, c[u], true);
      backward_patch(dY + (p + u) * T * C, dX + (p + u) * T * C, prm, d, wt, m1, m2, c[u], w[u], acc);
    }
    if (n == 2) {
      outer_acc2(acc[W2], w[0].dy, c[0].hg, w[1].dy, c[1].hg, C, HID);
      outer_acc2(acc[W1], w[0].dh, c[0].a2, w[1].dh, c[1].a2, HID, C);
      outer_acc2(acc[WP], w[0].du, c[0].o, w[1].du, c[1].o, C, C);
      outer_acc2(acc[WQKV], w[0].dqkv, c[0].a1, w[1].dqkv, c[1].a1, 3*C, C);
    } else {
      outer_acc(acc[W2], w[0].dy, c[0].hg, C, HID);
      outer_acc(acc[W1], w[0].dh, c[0].a2, HID, C);
      outer_acc(acc[WP], w[0].du, c[0].o, C, C);
      outer_acc(acc[WQKV], w[0].dqkv, c[0].a1, 3*C, C);
    }
  }
  for (int i = 0; i < NPARAM; ++i)
    for (int j = 0; j < sizes[i]; ++j) { float s = 0; for (int l = 0; l < L; ++l) s += acc[i][j][l]; grd[off[i] + j] += s; }
}

// The entry points. Patches are split into `threads` equal ranges, one per OpenMP thread (the
// runtime PyTorch itself uses, when built with -fopenmp); thread t accumulates its parameter
// gradients into grd + t * grd_stride, so the caller sums them in a fixed order.
extern "C" void titn_inner_forward(const float* X, float* Y, int64_t P, int C, int HID, int heads, float eps,
                                   const float* const* prm, const float* m1s, const float* m2s, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static, 1)
  for (int t = 0; t < threads; ++t) {
    const int64_t lo = P * t / threads, hi = P * (t + 1) / threads, at = lo * T * C;
    forward_range(X + at, Y + at, hi - lo, C, HID, heads, eps, prm, m1s ? m1s + lo : nullptr, m2s ? m2s + lo : nullptr);
  }
}

extern "C" void titn_inner_backward(const float* X, const float* dY, float* dX, int64_t P, int C, int HID, int heads,
                                    float eps, const float* const* prm, const float* m1s, const float* m2s,
                                    float* grd, int64_t grd_stride, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static, 1)
  for (int t = 0; t < threads; ++t) {
    const int64_t lo = P * t / threads, hi = P * (t + 1) / threads, at = lo * T * C;
    backward_range(X + at, dY + at, dX + at, hi - lo, C, HID, heads, eps, prm, m1s ? m1s + lo : nullptr,
                   m2s ? m2s + lo : nullptr, grd + t * grd_stride);
  }
}
