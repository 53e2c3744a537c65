// Python binding of the multi-scale deformable attention kernels: input checks (called by every kernel entry)
// and dispatch by device.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <vector>

#include "ms_deform_attn.h"

namespace crobim {

void check_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                  const at::Tensor& sampling_loc, const at::Tensor& attn_weight) {
  TORCH_CHECK(value.dim() == 4, "value must be (N, S, M, D), got ", value.sizes());
  TORCH_CHECK(sampling_loc.dim() == 6 && sampling_loc.size(-1) == 2,
              "sampling_locations must be (N, Lq, M, L, P, 2), got ", sampling_loc.sizes());
  TORCH_CHECK(spatial_shapes.dim() == 2 && spatial_shapes.size(1) == 2 && level_start_index.dim() == 1 &&
                  level_start_index.size(0) == spatial_shapes.size(0),
              "spatial_shapes must be (L, 2) and level_start_index (L,)");
  const auto n = value.size(0), m = value.size(2), levels = spatial_shapes.size(0);
  TORCH_CHECK(sampling_loc.size(0) == n && sampling_loc.size(2) == m && sampling_loc.size(3) == levels,
              "sampling_locations ", sampling_loc.sizes(), " does not match value ", value.sizes(), " and ", levels,
              " levels");
  TORCH_CHECK(attn_weight.sizes() == sampling_loc.sizes().slice(0, 5), "attention_weights must be ",
              sampling_loc.sizes().slice(0, 5), ", got ", attn_weight.sizes());
  TORCH_CHECK(spatial_shapes.scalar_type() == at::kLong && level_start_index.scalar_type() == at::kLong,
              "spatial_shapes and level_start_index must be int64 (long) tensors");
  const auto loc_type = value.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(sampling_loc.scalar_type() == loc_type && attn_weight.scalar_type() == loc_type,
              "sampling_locations and attention_weights must be ", loc_type, " for ", value.scalar_type(),
              " values (use crobim_d2.modeling.ops.ms_deform_attn, which casts them)");
  for (const auto* t : {&spatial_shapes, &level_start_index, &sampling_loc, &attn_weight}) {
    TORCH_CHECK(t->device() == value.device(), "all inputs must be on ", value.device(), ", got one on ",
                t->device());
    TORCH_CHECK(t->is_contiguous(), "inputs must be contiguous (call .contiguous())");
  }
  TORCH_CHECK(value.is_contiguous(), "value must be contiguous (call .contiguous())");
}

void check_grad_output(const at::Tensor& value, const at::Tensor& sampling_loc, const at::Tensor& grad_output) {
  TORCH_CHECK(grad_output.is_contiguous() && grad_output.scalar_type() == value.scalar_type() &&
                  grad_output.device() == value.device() && grad_output.dim() == 3 &&
                  grad_output.size(0) == value.size(0) && grad_output.size(1) == sampling_loc.size(1) &&
                  grad_output.size(2) == value.size(2) * value.size(3),
              "grad_output must be a contiguous (N, Lq, M * D) tensor like the forward output");
}

namespace {

[[noreturn]] void no_cuda() {
  TORCH_CHECK(false, "crobim_d2._C was built without CUDA kernels; rebuild with `make install` (FORCE_CUDA=1) "
                     "on a machine with nvcc");
}

at::Tensor forward(const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                   const at::Tensor& sampling_loc, const at::Tensor& attn_weight) {
  if (value.is_cuda()) {
#ifdef WITH_CUDA
    return ms_deform_attn_forward_cuda(value, spatial_shapes, level_start_index, sampling_loc, attn_weight);
#else
    no_cuda();
#endif
  }
  TORCH_CHECK(value.is_cpu(), "no multi-scale deformable attention kernel for device ", value.device());
  return ms_deform_attn_forward_cpu(value, spatial_shapes, level_start_index, sampling_loc, attn_weight);
}

std::vector<at::Tensor> backward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                 const at::Tensor& level_start_index, const at::Tensor& sampling_loc,
                                 const at::Tensor& attn_weight, const at::Tensor& grad_output) {
  if (value.is_cuda()) {
#ifdef WITH_CUDA
    return ms_deform_attn_backward_cuda(value, spatial_shapes, level_start_index, sampling_loc, attn_weight,
                                        grad_output);
#else
    no_cuda();
#endif
  }
  TORCH_CHECK(value.is_cpu(), "no multi-scale deformable attention kernel for device ", value.device());
  return ms_deform_attn_backward_cpu(value, spatial_shapes, level_start_index, sampling_loc, attn_weight,
                                     grad_output);
}

bool with_cuda() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}

// Threads that at::parallel_for gives this extension's kernels: at::parallel_for is a header template, so it
// only runs in parallel when the extension itself is compiled with the ATen parallel backend (OpenMP:
// -fopenmp); compiled without it, it silently runs the whole range on the calling thread.
int64_t parallel_threads(int64_t tasks) {
  std::vector<int64_t> seen(std::max<int64_t>(tasks, 1), -1);
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) seen[i] = at::get_thread_num();
  });
  return 1 + *std::max_element(seen.begin(), seen.end());
}

}  // namespace
}  // namespace crobim

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "crobim_d2 multi-scale deformable attention kernels";
  m.def("ms_deform_attn_forward", &crobim::forward, "forward (CPU or CUDA by value's device)");
  m.def("ms_deform_attn_backward", &crobim::backward,
        "backward -> [grad_value, grad_sampling_loc, grad_attn_weight] (CPU or CUDA by value's device)");
  m.def("with_cuda", &crobim::with_cuda, "whether the CUDA kernels were compiled in");
  m.def("parallel_threads", &crobim::parallel_threads, "threads used by at::parallel_for over `tasks` tasks");
#ifdef WITH_CUDA
  m.def("ms_deform_attn_forward_cuda", &crobim::ms_deform_attn_forward_cuda, "CUDA forward");
  m.def("ms_deform_attn_backward_cuda", &crobim::ms_deform_attn_backward_cuda, "CUDA backward");
#endif
}
