// Fused CPU inference kernel for the renderer's fast path (goae/models/kernels.py):
// points o + t*d -> bilinear taps of the 3 tri-planes (summed) -> OSGDecoder MLP
// (32 -> 64, softplus, -> 1 + 32) -> sigma and widened-sigmoid features, one tile of points at a
// time so nothing but the outputs leaves the cache. Portable C++: loops for the auto-vectoriser and
// GCC/Clang vector types, no intrinsics; threads as many as torch.get_num_threads().
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

namespace {

constexpr int C = 32;    // plane channels
constexpr int H = 64;    // hidden width
constexpr int F = 32;    // feature outputs (after sigma)
constexpr int TILE = 16; // points per tile (a multiple of 4)

typedef float v16 __attribute__((vector_size(64)));
static_assert(C % 16 == 0 && H % 16 == 0 && F % 16 == 0, "widths must be multiples of 16");

inline v16 load(const float* p) {  // unaligned load
  v16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// exp(x) for x <= 0 (Cody-Waite reduction + degree-6 polynomial, ~1 ulp); vectorisable.
inline float exp_neg(float x) {
  x = x < -87.0f ? -87.0f : x;
  float n = std::nearbyint(x * 1.44269504088896341f);
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// log(1 + u) for u in [0, 1]: 2 atanh(s), s = u / (2 + u) <= 1/3 (series to s^15, rel. error < 1e-8).
inline float log1p_unit(float u) {
  float s = u / (2.0f + u), s2 = s * s;
  float p = 1.0f / 15;
  p = p * s2 + 1.0f / 13;
  p = p * s2 + 1.0f / 11;
  p = p * s2 + 1.0f / 9;
  p = p * s2 + 1.0f / 7;
  p = p * s2 + 1.0f / 5;
  p = p * s2 + 1.0f / 3;
  p = p * s2 + 1.0f;
  return 2.0f * s * p;
}

inline float softplus(float h) {  // max(h, 0) + log1p(exp(-|h|))
  return (h > 0 ? h : 0.0f) + log1p_unit(exp_neg(-std::fabs(h)));
}

inline float sigmoid(float o) {
  float e = exp_neg(-std::fabs(o));
  float r = 1.0f / (1.0f + e);
  return o >= 0 ? r : e * r;
}

// Point o + t*d and its pixel coordinates uv = xyz @ A + b on the 3 planes, rounded op by op like the
// PyTorch path (no fused multiply-add): on sharp density surfaces one rounding of the position
// changes sigma by ~1e-3, the matmuls below may contract freely.
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("fp-contract=off")))
#endif
void point_uv(const float* o, float t, const float* d, const float* A, const float* b, float* uv) {
  float xyz[3];
  for (int k = 0; k < 3; ++k) {
    const float td = t * d[k];  // separate statements: clang contracts only within one expression
    xyz[k] = o[k] + td;
  }
  for (int q = 0; q < 6; ++q) {
    const float x = xyz[0] * A[q], y = xyz[1] * A[6 + q], z = xyz[2] * A[12 + q];
    const float xy = x + y, xyz_ = xy + z;
    uv[q] = xyz_ + b[q];
  }
}

// One tile: n points with coordinates xyz [n][3] -> sigma [n], rgb [n][F] (if rgb != nullptr).
struct Decoder {
  const float* table; int64_t plane_rows, batch_rows, width;  // padded channels-last planes
  const float* A; const float* b; float hi_x, hi_y;           // pixel map [3][6], [6]; last pixel x, y
  const float* w0; const float* b0;                           // [C][H] (pre-scaled), [H]
  const float* ws; const float* w2; const float* b2;          // sigma row [H], [H][F] (pre-scaled), [1 + F]

  void tile(const float (*uvs)[6], int n, int64_t batch, float* sigma, float* rgb) const {
    alignas(64) float feat[TILE][C];
    alignas(64) float hid[TILE][H];
    for (int i = 0; i < n; ++i) {
      alignas(64) float acc[C] = {};
      for (int p = 0; p < 3; ++p) {
        const float u = uvs[i][2 * p], v = uvs[i][2 * p + 1];
        float fu = std::floor(u), fv = std::floor(v), tu = u - fu, tv = v - fv;
        // Taps at x0 = floor(u) and x0 + 1, clamped onto the zero border [-1, size] (fmax/fmin drop NaN).
        int64_t x0 = static_cast<int64_t>(std::fmin(std::fmax(fu, -1.0f), hi_x)) + 1;
        int64_t x1 = static_cast<int64_t>(std::fmin(std::fmax(fu + 1, -1.0f), hi_x)) + 1;
        int64_t y0 = static_cast<int64_t>(std::fmin(std::fmax(fv, -1.0f), hi_y)) + 1;
        int64_t y1 = static_cast<int64_t>(std::fmin(std::fmax(fv + 1, -1.0f), hi_y)) + 1;
        const float* base = table + batch * batch_rows * C + p * plane_rows * C;
        const float* r00 = base + (y0 * width + x0) * C; const float* r01 = base + (y0 * width + x1) * C;
        const float* r10 = base + (y1 * width + x0) * C; const float* r11 = base + (y1 * width + x1) * C;
        float w00 = (1 - tv) * (1 - tu), w01 = (1 - tv) * tu, w10 = tv * (1 - tu), w11 = tv * tu;
#pragma omp simd
        for (int c = 0; c < C; ++c) acc[c] += w00 * r00[c] + w01 * r01[c] + w10 * r10[c] + w11 * r11[c];
      }
      std::memcpy(feat[i], acc, sizeof(acc));
    }
    for (int i = n; i < TILE; ++i) std::memset(feat[i], 0, sizeof(feat[i]));
    // Layers in blocks of 4 points on 16-float vectors (GCC/Clang vector extension, split into
    // narrower registers where the CPU has no 512-bit ones): the accumulators stay in registers and
    // each weight vector loaded feeds 4 FMAs.
    for (int i = 0; i < n; i += 4) {
      v16 acc[4][H / 16];
      for (int q = 0; q < 4; ++q)
        for (int v = 0; v < H / 16; ++v) acc[q][v] = load(b0 + 16 * v);
      for (int c = 0; c < C; ++c) {
        v16 w[H / 16];
        for (int v = 0; v < H / 16; ++v) w[v] = load(w0 + c * H + 16 * v);
        for (int q = 0; q < 4; ++q) {
          const float f = feat[i + q][c];
          for (int v = 0; v < H / 16; ++v) acc[q][v] += f * w[v];
        }
      }
      for (int q = 0; q < 4; ++q)
        for (int v = 0; v < H / 16; ++v) std::memcpy(&hid[i + q][16 * v], &acc[q][v], sizeof(v16));
    }
    for (int i = 0; i < n; ++i) {
#pragma omp simd
      for (int j = 0; j < H; ++j) hid[i][j] = softplus(hid[i][j]);
    }
    for (int i = 0; i < n; ++i) {  // sigma: the same code whether or not features are wanted
      float s = 0;
#pragma omp simd reduction(+ : s)
      for (int j = 0; j < H; ++j) s += hid[i][j] * ws[j];
      sigma[i] = s + b2[0];
    }
    if (rgb == nullptr) return;
    for (int i = 0; i < n; i += 4) {
      v16 acc[4][F / 16];
      for (int q = 0; q < 4; ++q)
        for (int v = 0; v < F / 16; ++v) acc[q][v] = load(b2 + 1 + 16 * v);
      for (int j = 0; j < H; ++j) {
        v16 w[F / 16];
        for (int v = 0; v < F / 16; ++v) w[v] = load(w2 + j * F + 16 * v);
        for (int q = 0; q < 4; ++q) {
          const float s = hid[i + q][j];
          for (int v = 0; v < F / 16; ++v) acc[q][v] += s * w[v];
        }
      }
      for (int q = 0; q < 4 && i + q < n; ++q) {
        alignas(64) float o[F];
        std::memcpy(o, acc[q], sizeof(o));
        float* dst = rgb + (i + q) * F;
#pragma omp simd
        for (int k = 0; k < F; ++k) dst[k] = sigmoid(o[k]) * (1 + 2 * 0.001f) - 0.001f;
      }
    }
  }
};

// origins/directions [N, R, 3], depths [N, R, S] -> sigma [N, R, S] (+ rgb [N, R, S, F] if features).
std::vector<at::Tensor> triplane_decode(const at::Tensor& table, int64_t n_rows, int64_t n_cols,
                                        const at::Tensor& A, const at::Tensor& b,
                                        const at::Tensor& origins, const at::Tensor& directions,
                                        const at::Tensor& depths, const at::Tensor& w0, const at::Tensor& b0,
                                        const at::Tensor& ws, const at::Tensor& w2, const at::Tensor& b2,
                                        bool features) {
  // The op is registered for CPU only; mixed devices or dtypes would read garbage, so refuse them here too.
  for (const at::Tensor* t : {&table, &A, &b, &origins, &directions, &depths, &w0, &b0, &ws, &w2, &b2}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat,
                "goae_kernels::triplane_decode takes float32 CPU tensors only, got ", t->scalar_type(), " on ",
                t->device());
  }
  TORCH_CHECK(origins.dim() == 3 && origins.size(2) == 3 && directions.sizes() == origins.sizes() &&
              depths.dim() == 3 && depths.size(0) == origins.size(0) && depths.size(1) == origins.size(1),
              "triplane_decode: rays must be [N, R, 3] and depths [N, R, S]");
  TORCH_CHECK(table.is_contiguous() && table.dim() == 2 && table.size(1) == C &&
              table.size(0) == depths.size(0) * 3 * (n_rows + 2) * (n_cols + 2),
              "triplane_decode: table must be the contiguous zero-bordered [N*3*(H+2)*(W+2), 32] plane table");
  TORCH_CHECK(w0.sizes() == at::IntArrayRef({C, H}) && w2.sizes() == at::IntArrayRef({H, F}) && ws.numel() == H &&
              b0.numel() == H && b2.numel() == 1 + F, "triplane_decode: decoder widths must be 32 -> 64 -> 33");
  const int64_t N = depths.size(0), R = depths.size(1), S = depths.size(2);
  auto o = origins.contiguous(), d = directions.contiguous(), t = depths.contiguous();
  auto Ac = A.contiguous(), bc = b.contiguous(), w0c = w0.contiguous(), b0c = b0.contiguous();
  auto wsc = ws.contiguous(), w2c = w2.contiguous(), b2c = b2.contiguous();
  at::Tensor sigma = at::empty({N, R, S}, depths.options());
  at::Tensor rgb = features ? at::empty({N, R, S, F}, depths.options()) : at::Tensor();
  const int64_t plane_rows = (n_rows + 2) * (n_cols + 2);
  Decoder dec{table.data_ptr<float>(), plane_rows, 3 * plane_rows, n_cols + 2,
              Ac.data_ptr<float>(), bc.data_ptr<float>(), float(n_cols), float(n_rows),
              w0c.data_ptr<float>(), b0c.data_ptr<float>(), wsc.data_ptr<float>(), w2c.data_ptr<float>(),
              b2c.data_ptr<float>()};
  const float* po = o.data_ptr<float>(); const float* pd = d.data_ptr<float>(); const float* pt = t.data_ptr<float>();
  float* ps = sigma.data_ptr<float>(); float* pr = features ? rgb.data_ptr<float>() : nullptr;
  const int64_t total = N * R * S, tiles = (total + TILE - 1) / TILE;
  // Scanline order: consecutive tiles of 16 points (a tile may straddle rays and batch elements).
  auto scanline = [&](int64_t begin, int64_t end) {
    float uv[TILE][6];
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t first = tile * TILE;
      const int n = static_cast<int>(std::min<int64_t>(TILE, total - first));
      int start = 0;  // split a tile that straddles two batch elements
      while (start < n) {
        const int64_t batch = (first + start) / (R * S);
        int stop = static_cast<int>(std::min<int64_t>(n, (batch + 1) * R * S - first));
        for (int i = start; i < stop; ++i) {
          const int64_t q = first + i, ray = q / S;
          point_uv(po + ray * 3, pt[q], pd + ray * 3, dec.A, dec.b, uv[i - start]);
        }
        dec.tile(uv, stop - start, batch, ps + first + start, pr ? pr + (first + start) * F : nullptr);
        start = stop;
      }
    }
  };
  // Block order for square images with >= 16 samples per ray: rays in 16 x 16 pixel blocks. A ray's
  // samples sweep across the two planes seen edge-on, and neighbouring rays of a block re-read the
  // same texels while they are still in L1/L2 (scanline order re-reads them from L3 a row later):
  // 10-20% faster at 128^2 x 48 samples, bit-identical output.
  constexpr int64_t BLOCK = 16;
  const int64_t res = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(R))));
  const bool blocked = S >= TILE && res * res == R;
  std::vector<int64_t> order;
  if (blocked) {
    order.reserve(N * R);
    for (int64_t nb = 0; nb < N; ++nb)
      for (int64_t by = 0; by < res; by += BLOCK)
        for (int64_t bx = 0; bx < res; bx += BLOCK)
          for (int64_t y = by; y < std::min(by + BLOCK, res); ++y)
            for (int64_t x = bx; x < std::min(bx + BLOCK, res); ++x) order.push_back(nb * R + y * res + x);
  }
  auto by_block = [&](int64_t begin, int64_t end) {
    float uv[TILE][6];
    for (int64_t k = begin; k < end; ++k) {
      const int64_t ray = order[k], batch = ray / R;
      for (int64_t s0 = 0; s0 < S; s0 += TILE) {
        const int n = static_cast<int>(std::min<int64_t>(TILE, S - s0));
        const int64_t first = ray * S + s0;
        for (int i = 0; i < n; ++i) point_uv(po + ray * 3, pt[first + i], pd + ray * 3, dec.A, dec.b, uv[i]);
        dec.tile(uv, n, batch, ps + first, pr ? pr + first * F : nullptr);
      }
    }
  };
  // Plain threads, not at::parallel_for: its OpenMP body is inlined from the headers and would need
  // this file built with -fopenmp against torch's own OpenMP runtime. Same thread count as torch.
  const int64_t units = blocked ? N * R : tiles;
  const int64_t threads = at::in_parallel_region() ? 1 : std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), tiles / 64));
  auto work = [&](int64_t begin, int64_t end) { blocked ? by_block(begin, end) : scanline(begin, end); };
  std::vector<std::thread> pool;
  for (int64_t k = 1; k < threads; ++k) pool.emplace_back(work, units * k / threads, units * (k + 1) / threads);
  work(0, units / threads);
  for (auto& th : pool) th.join();
  if (features) return {sigma, rgb};
  return {sigma};
}

}  // namespace

TORCH_LIBRARY(goae_kernels, m) {
  m.def("triplane_decode(Tensor table, int n_rows, int n_cols, Tensor A, Tensor b, Tensor origins, "
        "Tensor directions, Tensor depths, Tensor w0, Tensor b0, Tensor ws, Tensor w2, Tensor b2, "
        "bool features) -> Tensor[]");
}

// CPU only: a CUDA (or meta) call fails in the dispatcher; torch.compile uses the fake kernel of kernels.py.
TORCH_LIBRARY_IMPL(goae_kernels, CPU, m) {
  m.impl("triplane_decode", &triplane_decode);
}
