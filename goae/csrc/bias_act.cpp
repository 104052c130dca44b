// Fused in-place epilogue of a synthesis layer for CPU float32 inference (goae/models/kernels.py):
// x = clamp(lrelu(x + noise + b) * gain, -clamp, clamp) in one pass over x instead of five, with the
// same IEEE operations in the same order as the op-by-op path, so the result is bit-identical.
// x is NCHW or NHWC (channels-last); noise is [H, W] (or absent), b is [C]. (bfloat16 activations are
// half the bytes and PyTorch's own passes over them are already cheap: they keep the op-by-op path.)
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

struct Epilogue {
  float alpha, gain, lo, hi;
  bool clamp;
};

// One element. No product feeds an add, so nothing can be contracted into a multiply-add.
inline float apply(float v, float nz, bool has_noise, float b, const Epilogue& e) {
  if (has_noise) v = v + nz;
  v = v + b;
  const float neg = v * e.alpha;
  v = v > 0 ? v : neg;
  v = v * e.gain;
  if (e.clamp) v = v < e.lo ? e.lo : (v > e.hi ? e.hi : v);  // NaN compares false: it stays NaN
  return v;
}

// Channels-last rows [N*H*W][C]: the bias runs along the row, one noise value per row.
void rows_nhwc(float* x, const float* noise, const float* b, int64_t C, int64_t HW, int64_t begin, int64_t end,
               const Epilogue& e) {
  std::vector<float> bias(C);
  for (int64_t c = 0; c < C; ++c) bias[c] = b[c];
  for (int64_t r = begin; r < end; ++r) {
    float* row = x + r * C;
    const float nz = noise ? noise[r % HW] : 0.0f;
    const bool has_noise = noise != nullptr;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) row[c] = apply(row[c], nz, has_noise, bias[c], e);
  }
}

// NCHW planes [N*C][H*W]: one bias value per plane, the noise runs along the plane.
void planes_nchw(float* x, const float* noise, const float* b, int64_t C, int64_t HW, int64_t begin, int64_t end,
                 const Epilogue& e) {
  for (int64_t p = begin; p < end; ++p) {
    float* plane = x + p * HW;
    const float bias = b[p % C];
    const bool has_noise = noise != nullptr;
#pragma omp simd
    for (int64_t i = 0; i < HW; ++i)
      plane[i] = apply(plane[i], has_noise ? noise[i] : 0.0f, has_noise, bias, e);
  }
}

void run(at::Tensor& x, const c10::optional<at::Tensor>& noise, const at::Tensor& b, bool nhwc, const Epilogue& e) {
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  float* px = x.data_ptr<float>();
  const float* pn = noise.has_value() ? noise->data_ptr<float>() : nullptr;
  const float* pb = b.data_ptr<float>();
  const int64_t units = nhwc ? N * HW : N * C;
  const int64_t per_unit = nhwc ? C : HW;
  auto work = [&](int64_t begin, int64_t end) {
    nhwc ? rows_nhwc(px, pn, pb, C, HW, begin, end, e) : planes_nchw(px, pn, pb, C, HW, begin, end, e);
  };
  // Plain threads as in triplane_decode.cpp; small tensors are not worth a thread.
  const int64_t threads = at::in_parallel_region()
                              ? 1
                              : std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(),
                                                                       units * per_unit / (1 << 16)));
  std::vector<std::thread> pool;
  for (int64_t k = 1; k < threads; ++k) pool.emplace_back(work, units * k / threads, units * (k + 1) / threads);
  work(0, units / threads);
  for (auto& th : pool) th.join();
}

at::Tensor bias_lrelu_(at::Tensor x, const c10::optional<at::Tensor>& noise, const at::Tensor& b, double alpha,
                       double gain, double clamp) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat,
              "goae_kernels::bias_lrelu_ takes a float32 CPU tensor, got ", x.scalar_type(), " on ",
              x.device());
  TORCH_CHECK(x.dim() == 4, "bias_lrelu_: x must be [N, C, H, W]");
  const bool nhwc = !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
  TORCH_CHECK(nhwc || x.is_contiguous(), "bias_lrelu_: x must be contiguous (NCHW or channels-last)");
  TORCH_CHECK(b.device().is_cpu() && b.scalar_type() == x.scalar_type() && b.is_contiguous() && b.dim() == 1 &&
                  b.size(0) == x.size(1),
              "bias_lrelu_: b must be a contiguous [C] tensor of x's dtype");
  if (noise.has_value()) {
    TORCH_CHECK(noise->device().is_cpu() && noise->scalar_type() == x.scalar_type() && noise->is_contiguous() &&
                    noise->numel() == x.size(2) * x.size(3) && noise->size(-1) == x.size(3),
                "bias_lrelu_: noise must be a contiguous [H, W] tensor of x's dtype");
  }
  const Epilogue e{static_cast<float>(alpha), static_cast<float>(gain), static_cast<float>(-clamp),
                   static_cast<float>(clamp), clamp >= 0};
  run(x, noise, b, nhwc, e);
  return x;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(goae_kernels, m) {
  m.def("bias_lrelu_(Tensor(a!) x, Tensor? noise, Tensor b, float alpha, float gain, float clamp) -> Tensor(a!)");
}

TORCH_LIBRARY_IMPL(goae_kernels, CPU, m) {
  m.impl("bias_lrelu_", &bias_lrelu_);
}
