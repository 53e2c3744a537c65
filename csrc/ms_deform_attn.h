// Multi-scale deformable attention (Deformable DETR layout), CPU and CUDA kernels.
//   value              (N, S, M, D)        float/double; also half/bfloat16 (CUDA), bfloat16 (CPU forward)
//   spatial_shapes     (L, 2) long         (H_l, W_l)
//   level_start_index  (L,) long
//   sampling_loc       (N, Lq, M, L, P, 2) normalized (x, y); float (double for double values)
//   attn_weight        (N, Lq, M, L, P)    same dtype as sampling_loc
//   output             (N, Lq, M * D)      value's dtype
// Sampling matches grid_sample(bilinear, zeros, align_corners=False): pixel = loc * size - 0.5.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace crobim {

void check_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                  const at::Tensor& sampling_loc, const at::Tensor& attn_weight);
void check_grad_output(const at::Tensor& value, const at::Tensor& sampling_loc, const at::Tensor& grad_output);

at::Tensor ms_deform_attn_forward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                      const at::Tensor& level_start_index, const at::Tensor& sampling_loc,
                                      const at::Tensor& attn_weight);

std::vector<at::Tensor> ms_deform_attn_backward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                                    const at::Tensor& level_start_index,
                                                    const at::Tensor& sampling_loc, const at::Tensor& attn_weight,
                                                    const at::Tensor& grad_output);

#ifdef WITH_CUDA
at::Tensor ms_deform_attn_forward_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                       const at::Tensor& level_start_index, const at::Tensor& sampling_loc,
                                       const at::Tensor& attn_weight);

std::vector<at::Tensor> ms_deform_attn_backward_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                                     const at::Tensor& level_start_index,
                                                     const at::Tensor& sampling_loc, const at::Tensor& attn_weight,
                                                     const at::Tensor& grad_output);
#endif

}  // namespace crobim
