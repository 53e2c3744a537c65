// CPU kernels of multi-scale deformable attention.
//
// Forward runs in parallel over (batch, query) blocks. Backward runs in parallel over (batch, head): the
// grad_value rows a head scatters into, value[n, :, m, :], are disjoint from every other head's, so the
// scatter-add needs no atomics and no per-thread copies of grad_value. Both loop over the D channels of one
// head innermost (contiguous rows), which the compiler vectorizes; on x86 the hot loops are compiled for
// AVX-512, AVX2 and baseline and picked at load time (target_clones).
//
// bfloat16 values (forward only, for inference under CPU autocast): the value rows are read as bfloat16 and
// widened to float32 in registers (a bfloat16 is the upper half of a float32), so the gathers move half the
// bytes and no float32 copy of value is made; locations, weights and accumulation are float32, and the
// output is rounded to bfloat16 once. Backward needs float32/float64 values (ms_deform_attn casts).
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "ms_deform_attn.h"

#if defined(__x86_64__) && defined(__GNUC__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define CROBIM_MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
#endif
#endif
#ifndef CROBIM_MULTIVERSION
#define CROBIM_MULTIVERSION
#endif
// The kernels must be inlined into each clone to be compiled for its instruction set.
#if defined(__GNUC__)
#define CROBIM_INLINE inline __attribute__((always_inline))
#else
#define CROBIM_INLINE inline
#endif

namespace crobim {
namespace {

struct Sizes {
  int64_t n, s, m, d, lq, levels, points;
  const int32_t* level_of;  // level of each of the L * P samples of a head
};

struct Level {
  int64_t h, w, start;
};

// The four bilinear taps of one sample: spatial row (index into S, -1 when outside) and weight.
template <typename T>
struct Taps {
  int64_t row[4];
  T weight[4];
  T lx, ly;  // fractional pixel position: d(weight)/d(x, y) follows from these
};

// grid_sample(align_corners=False) pixel mapping; false when no tap lies inside the level.
template <typename T>
CROBIM_INLINE bool bilinear_taps(T loc_x, T loc_y, const Level& lv, Taps<T>& t) {
  const T x = loc_x * static_cast<T>(lv.w) - T(0.5);
  const T y = loc_y * static_cast<T>(lv.h) - T(0.5);
  const T x0f = std::floor(x), y0f = std::floor(y);
  if (!(x0f >= T(-1) && x0f < static_cast<T>(lv.w) && y0f >= T(-1) && y0f < static_cast<T>(lv.h))) {
    return false;  // also rejects NaN
  }
  const int64_t x0 = static_cast<int64_t>(x0f), y0 = static_cast<int64_t>(y0f);
  t.lx = x - x0f;
  t.ly = y - y0f;
  const T hx = T(1) - t.lx, hy = T(1) - t.ly;
  const int64_t xs[4] = {x0, x0 + 1, x0, x0 + 1};
  const int64_t ys[4] = {y0, y0, y0 + 1, y0 + 1};
  const T ws[4] = {hy * hx, hy * t.lx, t.ly * hx, t.ly * t.lx};
  for (int k = 0; k < 4; ++k) {
    const bool inside = xs[k] >= 0 && xs[k] < lv.w && ys[k] >= 0 && ys[k] < lv.h;
    t.row[k] = inside ? lv.start + ys[k] * lv.w + xs[k] : -1;
    t.weight[k] = inside ? ws[k] : T(0);
  }
  return true;
}

// bfloat16 storage: the upper 16 bits of a float32.
struct BF16 {
  uint16_t bits;
};

CROBIM_INLINE float widen(BF16 x) {
  const uint32_t u = static_cast<uint32_t>(x.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}
template <typename T>
CROBIM_INLINE T widen(T x) {
  return x;
}

// Round to nearest even, as torch does (NaN stays NaN).
CROBIM_INLINE void narrow(float f, BF16& out) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  out.bits = std::isnan(f) ? uint16_t(0x7FC0) : static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}
template <typename T>
CROBIM_INLINE void narrow(T f, T& out) {
  out = f;
}

// y += a * x over one head's channels (x stored as V, accumulated as T).
template <typename T, typename V>
CROBIM_INLINE void axpy(T a, const V* __restrict__ x, T* __restrict__ y, int64_t d) {
  for (int64_t c = 0; c < d; ++c) y[c] += a * widen(x[c]);
}

// x . y with independent partial sums, so that it vectorizes without reassociating (no -ffast-math).
template <typename T>
CROBIM_INLINE T dot_product(const T* __restrict__ x, const T* __restrict__ y, int64_t d) {
  constexpr int kLanes = 16;
  T part[kLanes] = {};
  int64_t c = 0;
  for (; c + kLanes <= d; c += kLanes) {
    for (int j = 0; j < kLanes; ++j) part[j] += x[c + j] * y[c + j];
  }
  for (int j = 0; c < d; ++c, ++j) part[j] += x[c] * y[c];
  for (int width = kLanes / 2; width > 0; width /= 2) {  // tree reduction: log-depth, not a serial chain
    for (int j = 0; j < width; ++j) part[j] += part[j + width];
  }
  return part[0];
}

// One head's D = kD channels held in registers as 64-byte vectors (GCC/Clang vector extensions, split into
// AVX2/SSE registers by the narrower clones): the fixed-size fast path for Deformable DETR's D = 32.
template <typename T>
struct Vec64;
template <>
struct Vec64<float> {
  typedef float type __attribute__((vector_size(64)));
  static float sum(type x) {
    auto a = __builtin_shufflevector(x, x, 0, 1, 2, 3, 4, 5, 6, 7) +
             __builtin_shufflevector(x, x, 8, 9, 10, 11, 12, 13, 14, 15);
    auto b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
    auto c = __builtin_shufflevector(b, b, 0, 1) + __builtin_shufflevector(b, b, 2, 3);
    return c[0] + c[1];
  }
};
template <>
struct Vec64<double> {
  typedef double type __attribute__((vector_size(64)));
  static double sum(type x) {
    auto a = __builtin_shufflevector(x, x, 0, 1, 2, 3) + __builtin_shufflevector(x, x, 4, 5, 6, 7);
    auto b = __builtin_shufflevector(a, a, 0, 1) + __builtin_shufflevector(a, a, 2, 3);
    return b[0] + b[1];
  }
};

// 32 bfloat16 bit patterns, and the same widened to 32 bits (the bfloat16 fast path, D = 32).
typedef uint16_t Bits16x32 __attribute__((vector_size(64)));
typedef uint32_t Bits32x32 __attribute__((vector_size(128)));

template <typename T, int kD>
struct Row {
  // One vector of the whole row: a single SSA value stays in registers (an array of vectors would not).
  typedef T W __attribute__((vector_size(sizeof(T) * kD)));
  using V = typename Vec64<T>::type;
  static constexpr int kChunks = sizeof(W) / sizeof(V);
  static_assert(kChunks > 0 && kChunks * sizeof(V) == sizeof(W), "kD must fill whole 64-byte vectors");
  W v;

  static CROBIM_INLINE Row zeros() { return Row{}; }
  static CROBIM_INLINE Row load(const T* p) {
    Row r;
    std::memcpy(&r.v, p, sizeof(W));
    return r;
  }
  // kD bfloat16 values widened in registers (float rows of 32 only): zero-extend to 32 bits, shift to the top half.
  static CROBIM_INLINE Row load(const BF16* p) {
    static_assert(sizeof(T) == 4 && kD == 32, "bfloat16 rows of 32 channels widen to float");
    Bits16x32 h;
    std::memcpy(&h, p, sizeof(h));
    const Bits32x32 u = __builtin_convertvector(h, Bits32x32) << 16;
    Row r;
    std::memcpy(&r.v, &u, sizeof(W));
    return r;
  }
  CROBIM_INLINE void store(T* p) const { std::memcpy(p, &v, sizeof(W)); }
  CROBIM_INLINE void add_scaled(T a, const Row& x) { v += a * x.v; }
  CROBIM_INLINE T dot(const Row& x) const {
    const W prod = v * x.v;
    V parts[kChunks];
    std::memcpy(parts, &prod, sizeof(W));
    V acc = parts[0];
#pragma GCC unroll 8
    for (int c = 1; c < kChunks; ++c) acc += parts[c];
    return Vec64<T>::sum(acc);
  }
};

std::vector<Level> read_levels(const at::Tensor& spatial_shapes, const at::Tensor& level_start_index, int64_t s) {
  const auto shapes = spatial_shapes.accessor<int64_t, 2>();
  const auto starts = level_start_index.accessor<int64_t, 1>();
  std::vector<Level> levels;
  for (int64_t l = 0; l < spatial_shapes.size(0); ++l) {
    levels.push_back({shapes[l][0], shapes[l][1], starts[l]});
    TORCH_CHECK(levels.back().h > 0 && levels.back().w > 0 && levels.back().start >= 0 &&
                    levels.back().start + levels.back().h * levels.back().w <= s,
                "level ", l, " (", levels.back().h, "x", levels.back().w, " at ", levels.back().start,
                ") does not fit in value's S=", s, "; check spatial_shapes and level_start_index");
  }
  return levels;
}

// Samples whose taps are computed (and whose rows are prefetched) before any of them is used, so that the
// memory system fetches the value rows of many samples at once instead of one tap at a time.
constexpr int64_t kBatch = 16;

inline void prefetch_row(const void* row, int64_t bytes, bool write) {
  const char* p = static_cast<const char*>(row);
  for (int64_t b = 0; b < bytes; b += 64) write ? __builtin_prefetch(p + b, 1) : __builtin_prefetch(p + b);
}

// Taps of samples [begin, end) of one head (loc_h: its locations), prefetching the rows they read from
// value_h (stored as V) and, in backward, write in grad_value_h.
template <typename T, typename V>
CROBIM_INLINE void batch_taps(const T* loc_h, const Level* levels, const Sizes& z, int64_t begin, int64_t end,
                              int64_t row_stride, const V* value_h, const V* grad_value_h, Taps<T>* taps,
                              bool* ok) {
  const int64_t row_bytes = z.d * static_cast<int64_t>(sizeof(V));
  for (int64_t s = begin; s < end; ++s) {
    Taps<T>& t = taps[s - begin];
    ok[s - begin] = bilinear_taps(loc_h[2 * s], loc_h[2 * s + 1], levels[z.level_of[s]], t);
    if (!ok[s - begin]) continue;
    for (int k = 0; k < 4; ++k) {
      if (t.row[k] < 0) continue;
      prefetch_row(value_h + t.row[k] * row_stride, row_bytes, false);
      if (grad_value_h != nullptr) prefetch_row(grad_value_h + t.row[k] * row_stride, row_bytes, true);
    }
  }
}

// Output rows of queries [q_begin, q_end) (flattened over batch): out[q, m, :] = sum a * bilinear(value).
// kD > 0 fixes the channel count at compile time so that the accumulator stays in registers (Row). Values
// and output are stored as V (T, or BF16 with T = float), accumulated as T.
template <typename T, typename V, int kD>
CROBIM_INLINE void forward_block(const V* value, const Level* levels, const T* loc, const T* attn, V* out,
                                 const Sizes& z, int64_t q_begin, int64_t q_end) {
  const int64_t d = kD > 0 ? kD : z.d, row_stride = z.m * d, samples = z.levels * z.points;
  Taps<T> taps[kBatch];
  bool ok[kBatch];
  std::vector<T> generic_acc(kD > 0 ? 0 : d);  // the kD == 0 accumulator
  for (int64_t nq = q_begin; nq < q_end; ++nq) {
    const V* value_n = value + (nq / z.lq) * z.s * row_stride;
    for (int64_t m = 0; m < z.m; ++m) {
      const int64_t head = nq * z.m + m;
      const T* loc_h = loc + head * samples * 2;
      const T* attn_h = attn + head * samples;
      const V* value_h = value_n + m * d;
      auto acc = Row<T, (kD > 0 ? kD : 16)>::zeros();  // unused when kD == 0
      T* acc_h = generic_acc.data();
      if constexpr (kD == 0) std::fill(acc_h, acc_h + d, T(0));
      for (int64_t s0 = 0; s0 < samples; s0 += kBatch) {
        const int64_t s1 = std::min(samples, s0 + kBatch);
        batch_taps<T, V>(loc_h, levels, z, s0, s1, row_stride, value_h, nullptr, taps, ok);
        for (int64_t s = s0; s < s1; ++s) {
          if (!ok[s - s0]) continue;
          const Taps<T>& t = taps[s - s0];
          for (int k = 0; k < 4; ++k) {
            if (t.row[k] < 0) continue;
            const T coef = attn_h[s] * t.weight[k];
            const V* v = value_h + t.row[k] * row_stride;
            if constexpr (kD > 0) {
              acc.add_scaled(coef, Row<T, kD>::load(v));
            } else {
              axpy(coef, v, acc_h, d);
            }
          }
        }
      }
      V* out_h = out + head * d;
      if constexpr (kD > 0) {
        if constexpr (std::is_same_v<V, T>) {
          acc.store(out_h);
        } else {
          T row[kD];
          acc.store(row);
          for (int c = 0; c < kD; ++c) narrow(row[c], out_h[c]);
        }
      } else {
        for (int64_t c = 0; c < d; ++c) narrow(acc_h[c], out_h[c]);
      }
    }
  }
}

// Gradients of head (n, m) over all its queries. The value gradient of a tap is a * w * grad_out; the
// attention gradient is the sampled value . grad_out; the location gradient differentiates the bilinear
// weights: d/dx = a * [(1 - ly) (v1 - v0) + ly (v3 - v2)] . grad_out * W, likewise for y with H.
template <typename T, int kD>
CROBIM_INLINE void backward_head(const T* value, const Level* levels, const T* loc, const T* attn, const T* grad_out,
                                 T* grad_value, T* grad_loc, T* grad_attn, const Sizes& z, int64_t n, int64_t m) {
  const int64_t d = kD > 0 ? kD : z.d, row_stride = z.m * d, samples = z.levels * z.points;
  const T* value_n = value + n * z.s * row_stride + m * d;
  T* grad_value_n = grad_value + n * z.s * row_stride + m * d;
  Taps<T> taps[kBatch];
  bool ok[kBatch];
  for (int64_t q = 0; q < z.lq; ++q) {
    const int64_t head = (n * z.lq + q) * z.m + m;
    const T* go = grad_out + head * d;
    const T* loc_h = loc + head * samples * 2;
    if (q + 1 < z.lq) {  // the next query's locations of this head are M heads further on
      prefetch_row(loc_h + z.m * samples * 2, samples * 2 * static_cast<int64_t>(sizeof(T)), false);
      prefetch_row(go + z.m * d, d * static_cast<int64_t>(sizeof(T)), false);
    }
    for (int64_t s0 = 0; s0 < samples; s0 += kBatch) {
      const int64_t s1 = std::min(samples, s0 + kBatch);
      batch_taps<T, T>(loc_h, levels, z, s0, s1, row_stride, value_n, grad_value_n, taps, ok);
      for (int64_t s = s0; s < s1; ++s) {
        const int64_t i = head * samples + s;
        if (!ok[s - s0]) {
          grad_attn[i] = T(0);
          grad_loc[2 * i] = T(0);
          grad_loc[2 * i + 1] = T(0);
          continue;
        }
        const Taps<T>& t = taps[s - s0];
        const T a = attn[i];
        T dot[4] = {T(0), T(0), T(0), T(0)};  // v_k . grad_out
        for (int k = 0; k < 4; ++k) {
          if (t.row[k] < 0) continue;
          const T* v = value_n + t.row[k] * row_stride;
          T* gv = grad_value_n + t.row[k] * row_stride;
          if constexpr (kD > 0) {
            const auto g = Row<T, kD>::load(go);
            dot[k] = g.dot(Row<T, kD>::load(v));
            auto acc = Row<T, kD>::load(gv);
            acc.add_scaled(a * t.weight[k], g);
            acc.store(gv);
          } else {
            dot[k] = dot_product(v, go, d);
            axpy(a * t.weight[k], go, gv, d);
          }
        }
        const Level& lv = levels[z.level_of[s]];
        const T hx = T(1) - t.lx, hy = T(1) - t.ly;
        grad_attn[i] = t.weight[0] * dot[0] + t.weight[1] * dot[1] + t.weight[2] * dot[2] + t.weight[3] * dot[3];
        grad_loc[2 * i] = a * (hy * (dot[1] - dot[0]) + t.ly * (dot[3] - dot[2])) * static_cast<T>(lv.w);
        grad_loc[2 * i + 1] = a * (hx * (dot[2] - dot[0]) + t.lx * (dot[3] - dot[1])) * static_cast<T>(lv.h);
      }
    }
  }
}

// Non-template entry points so that target_clones can compile each for several instruction sets.
#define CROBIM_DEFINE_ENTRIES(T)                                                                               \
  CROBIM_MULTIVERSION void forward_block_##T(const T* value, const Level* levels, const T* loc, const T* attn, \
                                             T* out, const Sizes& z, int64_t b, int64_t e) {                   \
    if (z.d == 32) return forward_block<T, T, 32>(value, levels, loc, attn, out, z, b, e);                     \
    forward_block<T, T, 0>(value, levels, loc, attn, out, z, b, e);                                            \
  }                                                                                                            \
  CROBIM_MULTIVERSION void backward_head_##T(const T* value, const Level* levels, const T* loc, const T* attn, \
                                             const T* go, T* gv, T* gl, T* ga, const Sizes& z, int64_t n,      \
                                             int64_t m) {                                                      \
    if (z.d == 32) return backward_head<T, 32>(value, levels, loc, attn, go, gv, gl, ga, z, n, m);             \
    backward_head<T, 0>(value, levels, loc, attn, go, gv, gl, ga, z, n, m);                                    \
  }
CROBIM_DEFINE_ENTRIES(float)
CROBIM_DEFINE_ENTRIES(double)
#undef CROBIM_DEFINE_ENTRIES

CROBIM_MULTIVERSION void forward_block_bf16(const BF16* value, const Level* levels, const float* loc,
                                           const float* attn, BF16* out, const Sizes& z, int64_t b, int64_t e) {
  if (z.d == 32) return forward_block<float, BF16, 32>(value, levels, loc, attn, out, z, b, e);
  forward_block<float, BF16, 0>(value, levels, loc, attn, out, z, b, e);
}

inline void forward_entry(const float* v, const Level* lv, const float* l, const float* a, float* o,
                          const Sizes& z, int64_t b, int64_t e) {
  forward_block_float(v, lv, l, a, o, z, b, e);
}
inline void forward_entry(const double* v, const Level* lv, const double* l, const double* a, double* o,
                          const Sizes& z, int64_t b, int64_t e) {
  forward_block_double(v, lv, l, a, o, z, b, e);
}
inline void backward_entry(const float* v, const Level* lv, const float* l, const float* a, const float* go,
                           float* gv, float* gl, float* ga, const Sizes& z, int64_t n, int64_t m) {
  backward_head_float(v, lv, l, a, go, gv, gl, ga, z, n, m);
}
inline void backward_entry(const double* v, const Level* lv, const double* l, const double* a, const double* go,
                           double* gv, double* gl, double* ga, const Sizes& z, int64_t n, int64_t m) {
  backward_head_double(v, lv, l, a, go, gv, gl, ga, z, n, m);
}

Sizes sizes_of(const at::Tensor& value, const at::Tensor& sampling_loc, std::vector<int32_t>& level_of) {
  const int64_t levels = sampling_loc.size(3), points = sampling_loc.size(4);
  level_of.resize(levels * points);
  for (int64_t s = 0; s < levels * points; ++s) level_of[s] = static_cast<int32_t>(s / points);
  return {value.size(0), value.size(1), value.size(2), value.size(3), sampling_loc.size(1), levels, points,
          level_of.data()};
}

}  // namespace

at::Tensor ms_deform_attn_forward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                      const at::Tensor& level_start_index, const at::Tensor& sampling_loc,
                                      const at::Tensor& attn_weight) {
  check_inputs(value, spatial_shapes, level_start_index, sampling_loc, attn_weight);
  std::vector<int32_t> level_of;
  const Sizes z = sizes_of(value, sampling_loc, level_of);
  const auto levels = read_levels(spatial_shapes, level_start_index, z.s);
  auto output = at::empty({z.n, z.lq, z.m * z.d}, value.options());
  // About 64 queries per task: enough work to amortize scheduling, small enough to balance threads.
  if (value.scalar_type() == at::kBFloat16) {
    static_assert(sizeof(at::BFloat16) == sizeof(BF16), "at::BFloat16 is 16 bits");
    const auto* v = reinterpret_cast<const BF16*>(value.const_data_ptr<at::BFloat16>());
    const float* loc = sampling_loc.const_data_ptr<float>();
    const float* attn = attn_weight.const_data_ptr<float>();
    auto* out = reinterpret_cast<BF16*>(output.mutable_data_ptr<at::BFloat16>());
    at::parallel_for(0, z.n * z.lq, 64, [&](int64_t begin, int64_t end) {
      forward_block_bf16(v, levels.data(), loc, attn, out, z, begin, end);
    });
    return output;
  }
  TORCH_CHECK(value.scalar_type() == at::kFloat || value.scalar_type() == at::kDouble,
              "the CPU kernel takes float32/float64 values (bfloat16 in forward), got ", value.scalar_type());
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_forward_cpu", [&] {
    const scalar_t* v = value.const_data_ptr<scalar_t>();
    const scalar_t* loc = sampling_loc.const_data_ptr<scalar_t>();
    const scalar_t* attn = attn_weight.const_data_ptr<scalar_t>();
    scalar_t* out = output.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, z.n * z.lq, 64, [&](int64_t begin, int64_t end) {
      forward_entry(v, levels.data(), loc, attn, out, z, begin, end);
    });
  });
  return output;
}

std::vector<at::Tensor> ms_deform_attn_backward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                                    const at::Tensor& level_start_index,
                                                    const at::Tensor& sampling_loc, const at::Tensor& attn_weight,
                                                    const at::Tensor& grad_output) {
  check_inputs(value, spatial_shapes, level_start_index, sampling_loc, attn_weight);
  check_grad_output(value, sampling_loc, grad_output);
  TORCH_CHECK(value.scalar_type() == at::kFloat || value.scalar_type() == at::kDouble,
              "the CPU backward takes float32/float64 values, got ", value.scalar_type(),
              "; crobim_d2.modeling.ops.ms_deform_attn casts bfloat16 values to float32 when gradients are needed");
  std::vector<int32_t> level_of;
  const Sizes z = sizes_of(value, sampling_loc, level_of);
  const auto levels = read_levels(spatial_shapes, level_start_index, z.s);
  auto grad_value = at::zeros_like(value);
  auto grad_loc = at::empty_like(sampling_loc);
  auto grad_attn = at::empty_like(attn_weight);
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_backward_cpu", [&] {
    const scalar_t* v = value.const_data_ptr<scalar_t>();
    const scalar_t* loc = sampling_loc.const_data_ptr<scalar_t>();
    const scalar_t* attn = attn_weight.const_data_ptr<scalar_t>();
    const scalar_t* go = grad_output.const_data_ptr<scalar_t>();
    scalar_t* gv = grad_value.mutable_data_ptr<scalar_t>();
    scalar_t* gl = grad_loc.mutable_data_ptr<scalar_t>();
    scalar_t* ga = grad_attn.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, z.n * z.m, 1, [&](int64_t begin, int64_t end) {
      for (int64_t nm = begin; nm < end; ++nm) {
        backward_entry(v, levels.data(), loc, attn, go, gv, gl, ga, z, nm / z.m, nm % z.m);
      }
    });
  });
  return {grad_value, grad_loc, grad_attn};
}

}  // namespace crobim
