// CUDA kernels of multi-scale deformable attention: one warp per (batch, query, head), its lanes over the D
// channels, so every bilinear tap is one coalesced read of a value row. float, double, half and bfloat16
// values; accumulation, sampling locations and attention weights in at::opmath_type (float, or double).
// Backward scatters grad_value with atomicAdd into an opmath buffer (cast to the value dtype at the end) and
// reduces the location and weight gradients across the warp with shuffles.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "ms_deform_attn.h"

namespace crobim {
namespace {

constexpr int kWarp = 32;
constexpr int kThreads = 256;

struct Sizes {
  int64_t heads;  // N * Lq * M: one warp each
  int64_t lq, s, m, d;
  int levels, points;
};

template <typename T>
struct Taps {
  int64_t row[4];
  T weight[4];
  T lx, ly;
};

__device__ __forceinline__ float floor_of(float x) { return floorf(x); }
__device__ __forceinline__ double floor_of(double x) { return ::floor(x); }

// grid_sample(align_corners=False) pixel mapping; false when no tap lies inside the level. Same as the CPU kernel.
template <typename T>
__device__ __forceinline__ bool bilinear_taps(T loc_x, T loc_y, int64_t h, int64_t w, int64_t start, Taps<T>& t) {
  const T x = loc_x * static_cast<T>(w) - T(0.5);
  const T y = loc_y * static_cast<T>(h) - T(0.5);
  const T x0f = floor_of(x), y0f = floor_of(y);
  if (!(x0f >= T(-1) && x0f < static_cast<T>(w) && y0f >= T(-1) && y0f < static_cast<T>(h))) return false;
  const int64_t x0 = static_cast<int64_t>(x0f), y0 = static_cast<int64_t>(y0f);
  t.lx = x - x0f;
  t.ly = y - y0f;
  const T hx = T(1) - t.lx, hy = T(1) - t.ly;
  const int64_t xs[4] = {x0, x0 + 1, x0, x0 + 1};
  const int64_t ys[4] = {y0, y0, y0 + 1, y0 + 1};
  const T ws[4] = {hy * hx, hy * t.lx, t.ly * hx, t.ly * t.lx};
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const bool inside = xs[k] >= 0 && xs[k] < w && ys[k] >= 0 && ys[k] < h;
    t.row[k] = inside ? start + ys[k] * w + xs[k] : -1;
    t.weight[k] = inside ? ws[k] : T(0);
  }
  return true;
}

// 32-bit division: the 64-bit one is emulated in many instructions.
__device__ __forceinline__ int level_of(int64_t sample, int points) { return static_cast<int>(sample) / points; }

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

template <typename scalar_t, typename acc_t>
__global__ void forward_kernel(const scalar_t* __restrict__ value, const int64_t* __restrict__ shapes,
                               const int64_t* __restrict__ starts, const acc_t* __restrict__ loc,
                               const acc_t* __restrict__ attn, scalar_t* __restrict__ out, Sizes z) {
  const int64_t head = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (head >= z.heads) return;  // whole warps only: blockDim is a multiple of 32
  const int64_t row_stride = z.m * z.d, samples = z.levels * z.points;
  const scalar_t* value_h = value + (head / (z.lq * z.m)) * z.s * row_stride + (head % z.m) * z.d;
  const acc_t* loc_h = loc + head * samples * 2;
  const acc_t* attn_h = attn + head * samples;
  for (int64_t c0 = 0; c0 < z.d; c0 += kWarp) {
    const int64_t c = c0 + lane;
    acc_t acc = acc_t(0);
    int64_t sp = 0;
    for (int l = 0; l < z.levels; ++l) {
      const int64_t h = shapes[2 * l], w = shapes[2 * l + 1], start = starts[l];
      for (int p = 0; p < z.points; ++p, ++sp) {
        Taps<acc_t> t;
        if (c >= z.d || !bilinear_taps(loc_h[2 * sp], loc_h[2 * sp + 1], h, w, start, t)) continue;
        const acc_t a = attn_h[sp];
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          if (t.row[k] >= 0) acc += a * t.weight[k] * static_cast<acc_t>(value_h[t.row[k] * row_stride + c]);
        }
      }
    }
    if (c < z.d) out[head * z.d + c] = static_cast<scalar_t>(acc);
  }
}

// d/dx = a * [(1 - ly) (v1 - v0) + ly (v3 - v2)] . grad_out * W, likewise for y with H (as on the CPU).
template <typename scalar_t, typename acc_t>
__global__ void backward_kernel(const scalar_t* __restrict__ value, const int64_t* __restrict__ shapes,
                                const int64_t* __restrict__ starts, const acc_t* __restrict__ loc,
                                const acc_t* __restrict__ attn, const scalar_t* __restrict__ grad_out,
                                acc_t* __restrict__ grad_value, acc_t* __restrict__ grad_loc,
                                acc_t* __restrict__ grad_attn, Sizes z) {
  const int64_t head = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (head >= z.heads) return;  // whole warps only: the shuffles below need all 32 lanes
  const int64_t row_stride = z.m * z.d, samples = z.levels * z.points;
  const int64_t offset = (head / (z.lq * z.m)) * z.s * row_stride + (head % z.m) * z.d;
  const scalar_t* value_h = value + offset;
  acc_t* grad_value_h = grad_value + offset;
  const scalar_t* go = grad_out + head * z.d;
  for (int64_t sp = 0; sp < samples; ++sp) {
    const int l = level_of(sp, z.points);
    const int64_t i = head * samples + sp, w = shapes[2 * l + 1], h = shapes[2 * l];
    Taps<acc_t> t;
    if (!bilinear_taps(loc[2 * i], loc[2 * i + 1], h, w, starts[l], t)) {  // uniform across the warp
      if (lane == 0) {
        grad_attn[i] = acc_t(0);
        grad_loc[2 * i] = acc_t(0);
        grad_loc[2 * i + 1] = acc_t(0);
      }
      continue;
    }
    const acc_t a = attn[i];
    acc_t dot[4] = {acc_t(0), acc_t(0), acc_t(0), acc_t(0)};  // v_k . grad_out, per lane then reduced
    for (int64_t c = lane; c < z.d; c += kWarp) {
      const acc_t g = static_cast<acc_t>(go[c]);
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        if (t.row[k] < 0) continue;
        dot[k] += static_cast<acc_t>(value_h[t.row[k] * row_stride + c]) * g;
        atomicAdd(grad_value_h + t.row[k] * row_stride + c, a * t.weight[k] * g);
      }
    }
#pragma unroll
    for (int k = 0; k < 4; ++k) dot[k] = warp_sum(dot[k]);
    if (lane == 0) {
      const acc_t hx = acc_t(1) - t.lx, hy = acc_t(1) - t.ly;
      grad_attn[i] = t.weight[0] * dot[0] + t.weight[1] * dot[1] + t.weight[2] * dot[2] + t.weight[3] * dot[3];
      grad_loc[2 * i] = a * (hy * (dot[1] - dot[0]) + t.ly * (dot[3] - dot[2])) * static_cast<acc_t>(w);
      grad_loc[2 * i + 1] = a * (hx * (dot[2] - dot[0]) + t.lx * (dot[3] - dot[1])) * static_cast<acc_t>(h);
    }
  }
}

Sizes sizes_of(const at::Tensor& value, const at::Tensor& sampling_loc) {
  return {value.size(0) * sampling_loc.size(1) * value.size(2), sampling_loc.size(1), value.size(1), value.size(2),
          value.size(3), static_cast<int>(sampling_loc.size(3)), static_cast<int>(sampling_loc.size(4))};
}

dim3 grid_for(const Sizes& z) { return dim3(static_cast<unsigned>((z.heads * kWarp + kThreads - 1) / kThreads)); }

}  // namespace

at::Tensor ms_deform_attn_forward_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                       const at::Tensor& level_start_index, const at::Tensor& sampling_loc,
                                       const at::Tensor& attn_weight) {
  check_inputs(value, spatial_shapes, level_start_index, sampling_loc, attn_weight);
  TORCH_CHECK(value.is_cuda(), "ms_deform_attn_forward_cuda needs CUDA tensors, got ", value.device());
  const c10::cuda::CUDAGuard guard(value.device());
  const Sizes z = sizes_of(value, sampling_loc);
  auto output = at::empty({value.size(0), z.lq, z.m * z.d}, value.options());
  if (output.numel() == 0) return output;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    forward_kernel<scalar_t, acc_t><<<grid_for(z), kThreads, 0, stream>>>(
        value.const_data_ptr<scalar_t>(), spatial_shapes.const_data_ptr<int64_t>(),
        level_start_index.const_data_ptr<int64_t>(), sampling_loc.const_data_ptr<acc_t>(),
        attn_weight.const_data_ptr<acc_t>(), output.mutable_data_ptr<scalar_t>(), z);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return output;
}

std::vector<at::Tensor> ms_deform_attn_backward_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                                     const at::Tensor& level_start_index,
                                                     const at::Tensor& sampling_loc, const at::Tensor& attn_weight,
                                                     const at::Tensor& grad_output) {
  check_inputs(value, spatial_shapes, level_start_index, sampling_loc, attn_weight);
  check_grad_output(value, sampling_loc, grad_output);
  TORCH_CHECK(value.is_cuda(), "ms_deform_attn_backward_cuda needs CUDA tensors, got ", value.device());
  const c10::cuda::CUDAGuard guard(value.device());
  const Sizes z = sizes_of(value, sampling_loc);
  // Accumulate grad_value in the locations' dtype (float, or double): atomics in half would lose updates.
  auto grad_value = at::zeros(value.sizes(), value.options().dtype(sampling_loc.scalar_type()));
  auto grad_loc = at::empty_like(sampling_loc);
  auto grad_attn = at::empty_like(attn_weight);
  if (z.heads > 0 && z.levels * z.points > 0) {
    const auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_backward_cuda",
                                    [&] {
      using acc_t = at::opmath_type<scalar_t>;
      backward_kernel<scalar_t, acc_t><<<grid_for(z), kThreads, 0, stream>>>(
          value.const_data_ptr<scalar_t>(), spatial_shapes.const_data_ptr<int64_t>(),
          level_start_index.const_data_ptr<int64_t>(), sampling_loc.const_data_ptr<acc_t>(),
          attn_weight.const_data_ptr<acc_t>(), grad_output.const_data_ptr<scalar_t>(),
          grad_value.mutable_data_ptr<acc_t>(), grad_loc.mutable_data_ptr<acc_t>(),
          grad_attn.mutable_data_ptr<acc_t>(), z);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {grad_value.to(value.scalar_type()), grad_loc, grad_attn};
}

}  // namespace crobim
