// The middle of the MLP (eq. 4-5), fused: H = GELU(Z + b) and its backward pass, on CPU.
//
// The outer MLP's hidden activations are (tokens, 768) per block: at batch 128, 2,304 x 768
// floats, 7 MB, more than the processor's L2 cache. PyTorch's training step passes over them
// four times around the GELU: the bias broadcast into the product's output before the matrix
// multiply adds to it, the GELU, the GELU's backward, and the bias gradient's column sum. Here
// the product is computed without its bias (Z = X W^T) and one pass adds the bias and applies
// the GELU (reading Z, writing H); in the backward pass one more pass reads dH and Z and writes
// dZ = dH * GELU'(Z + b) while summing dZ's columns, the bias gradient. Z is kept for the
// backward pass, as PyTorch keeps the product with its bias. The GELU itself (vmath.h) avoids
// the exponential, which halves its cost.
//
// Rows are split into equal ranges, one per OpenMP thread (PyTorch's runtime, see
// inner_block.cpp); thread t adds its part of the bias gradient to db + t * cols, and the caller
// sums the parts in a fixed order, so the result does not depend on timing.
#include <cstdint>
#include <vector>

#include "vmath.h"

// The last cols % 8 columns, through the vector code with unused lanes.
static inline v8 load_tail(const float* p, int64_t n) { v8 v = {}; for (int64_t i = 0; i < n; ++i) v[i] = p[i]; return v; }
static inline void store_tail(float* p, v8 v, int64_t n) { for (int64_t i = 0; i < n; ++i) p[i] = v[i]; }

static void forward_rows(const float* Z, const float* b, float* H, int64_t rows, int64_t cols) {
  const int64_t full = cols / L * L, tail = cols - full;
  for (int64_t r = 0; r < rows; ++r) {
    const float* z = Z + r * cols; float* h = H + r * cols;
    for (int64_t j = 0; j < full; j += L) store8(h + j, gelu(load8(z + j) + load8(b + j)));
    if (tail) store_tail(h + full, gelu(load_tail(z + full, tail) + load_tail(b + full, tail)), tail);
  }
}

static void backward_rows(const float* dH, const float* Z, const float* b, float* dZ, float* db,
                          int64_t rows, int64_t cols) {
  const int64_t full = cols / L * L, tail = cols - full;
  const int64_t vecs = (cols + L - 1) / L;
  // The bias gradient, column by column: sums of 64 rows, added up, which keeps float32 rounding
  // near that of PyTorch's pairwise sum.
  std::vector<v8> total(vecs, v8{}), sum(vecs, v8{});
  for (int64_t r = 0; r < rows; ++r) {
    if (r % 64 == 0) for (int64_t i = 0; i < vecs; ++i) { total[i] += sum[i]; sum[i] = v8{}; }
    const float* z = Z + r * cols; const float* dh = dH + r * cols; float* dz = dZ + r * cols;
    v8 out, grad;
    for (int64_t j = 0; j < full; j += L) {
      gelu_and_grad(load8(z + j) + load8(b + j), out, grad);
      const v8 d = load8(dh + j) * grad;
      store8(dz + j, d);
      sum[j / L] += d;
    }
    if (tail) {
      gelu_and_grad(load_tail(z + full, tail) + load_tail(b + full, tail), out, grad);
      const v8 d = load_tail(dh + full, tail) * grad;
      store_tail(dz + full, d, tail);
      sum[full / L] += d;
    }
  }
  for (int64_t i = 0; i < vecs; ++i) total[i] += sum[i];
  for (int64_t j = 0; j < cols; ++j) db[j] += total[j / L][j % L];
}

extern "C" void titn_bias_gelu_forward(const float* Z, const float* b, float* H, int64_t rows, int64_t cols,
                                       int threads) {
#pragma omp parallel for num_threads(threads) schedule(static, 1)
  for (int t = 0; t < threads; ++t) {
    const int64_t lo = rows * t / threads, hi = rows * (t + 1) / threads;
    forward_rows(Z + lo * cols, b, H + lo * cols, hi - lo, cols);
  }
}

// db: threads x cols partial sums, accumulated (+=) into.
extern "C" void titn_bias_gelu_backward(const float* dH, const float* Z, const float* b, float* dZ, float* db,
                                        int64_t rows, int64_t cols, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static, 1)
  for (int t = 0; t < threads; ++t) {
    const int64_t lo = rows * t / threads, hi = rows * (t + 1) / threads;
    backward_rows(dH + lo * cols, Z + lo * cols, b, dZ + lo * cols, db + t * cols, hi - lo, cols);
  }
}
