// BurstIF kernel (docs/method.md §2). Per neuron, with theta = tau * vth[c] and u = 0:
//   for t: u = u + X[t] + theta/(2T); s = clip(floor(u/theta), 0, psi); u = u - s*theta; Y[t] = s*theta
// float32 in exactly this order (built with -ffp-contract=off), so it matches the numpy
// reference and the standard-op fallback bit for bit. theta <= 0 never fires (Y = 0).
// The clip is written as two selects, (q > 0 ? q : 0) then (q > psi ? psi : q), so that a
// NaN membrane gives no spike (Y = 0) in all three implementations alike.
//
// Work split: each sample's C*K neurons are cut into equal tiles; ORT's intra-op pool runs the
// tiles in parallel; inside a tile the loop over T is sequential and the loop over neurons
// is contiguous and vectorised.
#include "burst_if.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <sstream>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#define ONNX2BURST_AVX512 1
#endif

namespace onnx2burst {
namespace {

constexpr int64_t kTile = 4096;
constexpr int64_t kMaxPsi = 65536;

std::string ShapeStr(const std::vector<int64_t>& s) {
  std::ostringstream o;
  o << "[";
  for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  o << "]";
  return o.str();
}

OrtStatusPtr Fail(const std::string& name, const std::string& msg) {
  return Ort::GetApi().CreateStatus(ORT_INVALID_ARGUMENT,
                                    ("BurstIF node '" + name + "': " + msg).c_str());
}

struct Job {
  const float* x;
  const float* r;  // the optional addend R (X's shape), or nullptr
  float* y;
  int64_t* partial;  // per tile spike count, or nullptr
  const float* theta;   // per channel, safe (1 where the channel never fires)
  const float* offset;  // theta / (2T)
  const float* psi_c;   // psi per channel, 0 where theta <= 0 (the channel never fires)
  int64_t T, N, C, K, P, M, tile, tiles_per_sample;
  int64_t B;        // channel block of the NCHWc layout, 1 for plain NCHW
  int64_t x_step;   // X's stride between timesteps: M, or 0 when X holds one step for all T
  const float* theta_n = nullptr;  // signed neurons: per channel theta / alpha, 2 * offset, psi
  const float* step_w = nullptr;
  const float* psi_neg = nullptr;
  const float* u_prev = nullptr;   // BurstIFStep: the membrane before the step (X's layout), and after it
  float* u_next = nullptr;
};

// The input of one neuron at one step: X[t], or fl(X[t] + R[t]) -- exactly what a separate
// Add node feeding BurstIF computes, so a fused addend changes no bit.
template <bool ADD>
inline __attribute__((always_inline)) float In(const float* __restrict xt, const float* __restrict rt, int64_t i) {
  if constexpr (ADD) return xt[i] + rt[i];
  else return xt[i];
}

// One timestep over contiguous neurons with per-neuron theta (Gemm-like layers, K small).
// Every pointer is distinct, so it vectorises. psi_n is psi, or 0 where theta <= 0 (never fires).
// Returns the number of spikes (an integer reduction, which vectorises).
template <bool ADD>
__attribute__((target_clones("avx512f", "avx2", "sse4.1", "default")))
int32_t StepPerNeuron(const float* __restrict xt, const float* __restrict rt, float* __restrict yt,
                      float* __restrict u, const float* __restrict th, const float* __restrict off,
                      const float* __restrict psi_n, int64_t len) {
  int32_t count = 0;
  for (int64_t i = 0; i < len; ++i) {
    const float u1 = (u[i] + In<ADD>(xt, rt, i)) + off[i];  // u = u + X[t] + theta/(2T)
    float s = std::floor(u1 / th[i]);                        // floor(u / theta)
    s = s > 0.f ? s : 0.f;                                   // clip to [0, psi]; NaN -> 0
    s = s > psi_n[i] ? psi_n[i] : s;
    const float st = s * th[i];
    u[i] = u1 - st;                    // reset by subtraction
    yt[i] = st;                        // Y[t] = s * theta
    count += static_cast<int32_t>(s);  // exact: 0 <= s <= psi
  }
  return count;
}

// The same step over the runs of one channel each (Conv-like layers, K >= 16): theta is a
// scalar per run. The first run starts at channel c0 with run0 neurons left; then whole runs of
// K.
template <bool ADD>
__attribute__((target_clones("avx512f", "avx2", "sse4.1", "default")))
int32_t StepChannels(const Job& j, const float* __restrict xt, const float* __restrict rt,
                     float* __restrict yt, float* __restrict u, int64_t c0, int64_t run0, int64_t len) {
  int32_t count = 0;
  int64_t c = c0, i = 0, run = run0;
  while (i < len) {
    const int64_t end = i + std::min(run, len - i);
    const float th = j.theta[c], off = j.offset[c], psi = j.psi_c[c];
    for (; i < end; ++i) {
      const float u1 = (u[i] + In<ADD>(xt, rt, i)) + off;
      float s = std::floor(u1 / th);
      s = s > 0.f ? s : 0.f;
      s = s > psi ? psi : s;
      const float st = s * th;
      u[i] = u1 - st;
      yt[i] = st;
      count += static_cast<int32_t>(s);
    }
    run = j.K;
    if (++c == j.C) c = 0;
  }
  return count;
}

#ifdef ONNX2BURST_AVX512
#pragma GCC diagnostic push
// GCC 12's avx512fintrin.h: _mm512_undefined_ps() in the intrinsics reads as uninitialized
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// StepChannels by hand in AVX-512, over aligned 16-neuron vectors of the tile rather than run
// by run: a run of K neurons (196 for a 14x14 map) rarely starts on a 64-byte line, and every
// vector access of a misaligned run splits two cache lines. A vector that holds the end of one
// channel's run and the start of the next (K >= 16: at most one such boundary) blends the two
// channels' parameters per lane. Lanes compute what StepChannels computes, in the same order
// (divide, floor, max with 0 so that NaN gives 0, min with psi, multiply, subtract): the same bits.
template <bool ADD>
__attribute__((target("avx512f"), always_inline)) inline void Step16(
    const float* __restrict xt, const float* __restrict rt, float* __restrict yt, float* __restrict u, int64_t i,
    __mmask16 m, __m512 th, __m512 off, __m512 psi, __m512i& acc) {
  __m512 x = _mm512_maskz_loadu_ps(m, xt + i);
  if constexpr (ADD) x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(m, rt + i));
  const __m512 u1 = _mm512_add_ps(_mm512_add_ps(_mm512_maskz_loadu_ps(m, u + i), x), off);
  __m512 s = _mm512_roundscale_ps(_mm512_div_ps(u1, th), _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  s = _mm512_max_ps(s, _mm512_setzero_ps());  // s > 0 ? s : 0 (a NaN gives the second operand, 0)
  s = _mm512_min_ps(psi, s);                  // psi < s ? psi : s
  const __m512 st = _mm512_mul_ps(s, th);
  _mm512_mask_storeu_ps(u + i, m, _mm512_sub_ps(u1, st));
  _mm512_mask_storeu_ps(yt + i, m, st);
  acc = _mm512_add_epi32(acc, _mm512_maskz_cvttps_epi32(m, s));
}

template <bool ADD>
__attribute__((target("avx512f")))
int32_t StepChannelsAvx512(const Job& j, const float* __restrict xt, const float* __restrict rt,
                           float* __restrict yt, float* __restrict u, int64_t c0, int64_t run0, int64_t len) {
  __m512i acc = _mm512_setzero_si512();
  int64_t c = c0, left = run0;  // channel of neuron i, and how many of its run start at i
  auto next = [&](int64_t ch) { return ch + 1 == j.C ? 0 : ch + 1; };
  __m512 th = _mm512_set1_ps(j.theta[c]), off = _mm512_set1_ps(j.offset[c]), psi = _mm512_set1_ps(j.psi_c[c]);
  for (int64_t i = 0; i < len; i += 16) {
    const int64_t n = std::min<int64_t>(16, len - i);
    const __mmask16 m = n == 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << n) - 1u);
    if (left >= 16) {
      Step16<ADD>(xt, rt, yt, u, i, m, th, off, psi, acc);
      left -= 16;
    } else {  // lanes [0, left) end channel c's run, lanes [left, 16) start channel c+1's
      const int64_t c1 = next(c);
      const __m512 th1 = _mm512_set1_ps(j.theta[c1]), off1 = _mm512_set1_ps(j.offset[c1]),
                   psi1 = _mm512_set1_ps(j.psi_c[c1]);
      const __mmask16 first = static_cast<__mmask16>((1u << left) - 1u);
      Step16<ADD>(xt, rt, yt, u, i, m, _mm512_mask_blend_ps(first, th1, th), _mm512_mask_blend_ps(first, off1, off),
                  _mm512_mask_blend_ps(first, psi1, psi), acc);
      c = c1;
      th = th1, off = off1, psi = psi1;
      left = j.K - (16 - left);  // >= 1, since K >= 16
    }
    if (left == 0) {
      c = next(c);
      left = j.K;
      th = _mm512_set1_ps(j.theta[c]), off = _mm512_set1_ps(j.offset[c]), psi = _mm512_set1_ps(j.psi_c[c]);
    }
  }
  alignas(64) int32_t lanes[16];
  _mm512_store_si512(lanes, acc);
  int32_t count = 0;
  for (int32_t v : lanes) count += v;
  return count;
}

// ONNX2BURST_KERNEL_NO_AVX512 (any value) keeps the multiversioned loop: the tests run both.
bool HasAvx512() {
  static const bool yes = __builtin_cpu_supports("avx512f") && !std::getenv("ONNX2BURST_KERNEL_NO_AVX512");
  return yes;
}
#pragma GCC diagnostic pop
#endif

// The same step in the blocked NCHWc layout with a compile-time block BL: a run of K*BL
// neurons shares one channel block, and lane l of every BL-group is channel cb*BL + l, so the
// parameters are BL-wide vectors loaded once per run. p0 and len are multiples of BL.
template <int BL, bool ADD>
__attribute__((target_clones("avx512f", "avx2", "sse4.1", "default")))
int32_t StepBlocked(const Job& j, const float* __restrict xt, const float* __restrict rt,
                    float* __restrict yt, float* __restrict u, int64_t p0, int64_t len) {
  int32_t count = 0;
  const int64_t run = j.K * BL;
  for (int64_t i = 0; i < len;) {
    const int64_t p = p0 + i;
    const int64_t c = (p / run) * BL;  // first channel of this block
    const int64_t end = std::min(len, i + (run - p % run));
    float th[BL], off[BL], ps[BL];
    for (int l = 0; l < BL; ++l) {
      th[l] = j.theta[c + l];
      off[l] = j.offset[c + l];
      ps[l] = j.psi_c[c + l];
    }
    for (; i < end; i += BL) {
      for (int l = 0; l < BL; ++l) {
        const float u1 = (u[i + l] + In<ADD>(xt, rt, i + l)) + off[l];
        float s = std::floor(u1 / th[l]);
        s = s > 0.f ? s : 0.f;
        s = s > ps[l] ? ps[l] : s;
        const float st = s * th[l];
        u[i + l] = u1 - st;
        yt[i + l] = st;
        count += static_cast<int32_t>(s);
      }
    }
  }
  return count;
}

// One tile: neurons [p0, p1) of sample n, over all T steps.
template <bool ADD>
int64_t RunTile(const Job& j, int64_t n, int64_t p0, int64_t p1, float* u, float* th, float* off,
                float* psi_n) {
  const int64_t len = p1 - p0;
  const int64_t first = n * j.P + p0;
  if (j.u_prev) std::copy_n(j.u_prev + first, len, u);
  else std::fill(u, u + len, 0.f);
  int64_t total = 0;
  // pointers of step t: X (maybe one step for all T), R and Y
  auto xt = [&](int64_t t) { return j.x + t * j.x_step + first; };
  auto rt = [&](int64_t t) { return ADD ? j.r + t * j.M + first : nullptr; };
  auto yt = [&](int64_t t) { return j.y + t * j.M + first; };
  if (j.B == 16 || j.B == 8 || j.B == 4) {  // the blocks onnxruntime uses (AVX-512, AVX2, NEON)
    for (int64_t t = 0; t < j.T; ++t) {
      if (j.B == 16) total += StepBlocked<16, ADD>(j, xt(t), rt(t), yt(t), u, p0, len);
      else if (j.B == 8) total += StepBlocked<8, ADD>(j, xt(t), rt(t), yt(t), u, p0, len);
      else total += StepBlocked<4, ADD>(j, xt(t), rt(t), yt(t), u, p0, len);
    }
    return total;
  }
  if (j.K >= 16 && j.B == 1) {  // runs of one channel
    const int64_t c0 = (p0 / j.K) % j.C, run0 = j.K - p0 % j.K;  // channel of neuron p0, its run
#ifdef ONNX2BURST_AVX512
    if (HasAvx512()) {
      for (int64_t t = 0; t < j.T; ++t)
        total += StepChannelsAvx512<ADD>(j, xt(t), rt(t), yt(t), u, c0, run0, len);
      return total;
    }
#endif
    for (int64_t t = 0; t < j.T; ++t) total += StepChannels<ADD>(j, xt(t), rt(t), yt(t), u, c0, run0, len);
    return total;
  }
  // per-neuron copies of the parameters: small K, or another channel block. Filled by runs
  // (B = 1) or with counters, never with an integer division per neuron: that cost more than
  // the T steps themselves.
  if (j.B == 1) {
    int64_t c = (p0 / j.K) % j.C, run = j.K - p0 % j.K;  // channel of neuron p0, its run
    for (int64_t i = 0; i < len;) {
      if (j.K == 1) {  // Gemm-like: consecutive neurons are consecutive channels
        const int64_t m = std::min(j.C - c, len - i);
        std::copy_n(j.theta + c, m, th + i);
        std::copy_n(j.offset + c, m, off + i);
        std::copy_n(j.psi_c + c, m, psi_n + i);
        i += m;
        c = 0;
        continue;
      }
      const int64_t m = std::min(run, len - i);
      std::fill_n(th + i, m, j.theta[c]);
      std::fill_n(off + i, m, j.offset[c]);
      std::fill_n(psi_n + i, m, j.psi_c[c]);
      i += m;
      run = j.K;
      if (++c == j.C) c = 0;
    }
  } else {
    const int64_t B = j.B, run = j.K * B;
    int64_t lane = p0 % B, pos = p0 % run, blk = (p0 / run) % (j.C / B);  // neuron p0's place
    for (int64_t i = 0; i < len; ++i) {
      const int64_t c = blk * B + lane;
      th[i] = j.theta[c];
      off[i] = j.offset[c];
      psi_n[i] = j.psi_c[c];
      if (++lane == B) lane = 0;
      if (++pos == run) {
        pos = 0;
        if (++blk * B == j.C) blk = 0;
      }
    }
  }
  for (int64_t t = 0; t < j.T; ++t)
    total += StepPerNeuron<ADD>(xt(t), rt(t), yt(t), u, th, off, psi_n, len);
  return total;
}

// The signed neuron (attribute alpha), neuron by neuron in the order of reference._signed:
//   u1 = u + X[t] + offset; w1 = w + 2*offset
//   sp = clip(floor(u1/theta), 0, psi); sn = clip(floor((w1 - u1)/theta_n), 0, psi_neg)
//   u = (u1 - sp*theta) + sn*theta_n; Y[t] = sp*theta - sn*theta
template <bool ADD>
__attribute__((target_clones("avx512f", "avx2", "sse4.1", "default")))
int32_t StepSigned(const float* __restrict xt, const float* __restrict rt, float* __restrict yt,
                   float* __restrict u, float* __restrict w, const float* __restrict prm, int64_t len) {
  const float* th = prm;
  const float* off = prm + len;
  const float* ps = prm + 2 * len;
  const float* thn = prm + 3 * len;
  const float* sw = prm + 4 * len;
  const float* psn = prm + 5 * len;
  int32_t count = 0;
  for (int64_t i = 0; i < len; ++i) {
    const float u1 = (u[i] + In<ADD>(xt, rt, i)) + off[i];
    const float w1 = w[i] + sw[i];
    float sp = std::floor(u1 / th[i]);
    sp = sp > 0.f ? sp : 0.f;
    sp = sp > ps[i] ? ps[i] : sp;
    float sn = std::floor((w1 - u1) / thn[i]);
    sn = sn > 0.f ? sn : 0.f;
    sn = sn > psn[i] ? psn[i] : sn;
    const float yp = sp * th[i];
    u[i] = (u1 - yp) + sn * thn[i];
    w[i] = w1;
    yt[i] = yp - sn * th[i];
    count += static_cast<int32_t>(sp) + static_cast<int32_t>(sn);
  }
  return count;
}

template <bool ADD>
int64_t RunTileSigned(const Job& j, int64_t n, int64_t p0, int64_t p1) {
  const int64_t len = p1 - p0;
  std::vector<float> u(static_cast<size_t>(len), 0.f), w(static_cast<size_t>(len), 0.f);
  std::vector<float> prm(static_cast<size_t>(6 * len));
  for (int64_t i = 0; i < len; ++i) {
    const int64_t p = p0 + i;
    const int64_t c = j.B == 1 ? (p / j.K) % j.C : ((p / (j.K * j.B)) % (j.C / j.B)) * j.B + p % j.B;
    prm[i] = j.theta[c];
    prm[len + i] = j.offset[c];
    prm[2 * len + i] = j.psi_c[c];
    prm[3 * len + i] = j.theta_n[c];
    prm[4 * len + i] = j.step_w[c];
    prm[5 * len + i] = j.psi_neg[c];
  }
  const int64_t first = n * j.P + p0;
  int64_t total = 0;
  for (int64_t t = 0; t < j.T; ++t)
    total += StepSigned<ADD>(j.x + t * j.x_step + first, ADD ? j.r + t * j.M + first : nullptr,
                             j.y + t * j.M + first, u.data(), w.data(), prm.data(), len);
  return total;
}

void RunTask(void* data, size_t task) {
  const Job& j = *static_cast<const Job*>(data);
  const int64_t n = static_cast<int64_t>(task) / j.tiles_per_sample;
  const int64_t q = static_cast<int64_t>(task) % j.tiles_per_sample;
  const int64_t p0 = q * j.tile;
  const int64_t p1 = std::min(p0 + j.tile, j.P);
  if (j.theta_n) {
    const int64_t total = j.r ? RunTileSigned<true>(j, n, p0, p1) : RunTileSigned<false>(j, n, p0, p1);
    if (j.partial) j.partial[task] = total;
    return;
  }
  alignas(64) float u[kTile], th[kTile], off[kTile], psi_n[kTile];
  const int64_t total = j.r ? RunTile<true>(j, n, p0, p1, u, th, off, psi_n)
                            : RunTile<false>(j, n, p0, p1, u, th, off, psi_n);
  if (j.u_next) std::copy_n(u, p1 - p0, j.u_next + n * j.P + p0);
  if (j.partial) j.partial[task] = total;
}

}  // namespace

namespace {
OrtStatusPtr MakeKernel(const OrtApi& api, const OrtKernelInfo* info, void** op_kernel, bool step) {
  Ort::ConstKernelInfo ki(info);
  std::string name;
  try {
    name = ki.GetNodeName();
  } catch (...) {
  }
  auto get_int = [&](const char* attr, int64_t* out) -> OrtStatusPtr {
    if (OrtStatus* st = api.KernelInfoGetAttribute_int64(info, attr, out)) {
      api.ReleaseStatus(st);
      return Fail(name, std::string("missing int attribute '") + attr + "'");
    }
    return nullptr;
  };
  int64_t T = 0, psi = 0;
  if (OrtStatusPtr st = get_int("T", &T)) return st;
  if (OrtStatusPtr st = get_int("psi", &psi)) return st;
  float tau = 1.f;
  if (OrtStatus* st = api.KernelInfoGetAttribute_float(info, "tau", &tau)) {
    api.ReleaseStatus(st);  // absent: the default 1.0
    tau = 1.f;
  }
  if (T < 1) return Fail(name, "attribute T must be >= 1, got " + std::to_string(T));
  if (psi < 1) return Fail(name, "attribute psi must be >= 1, got " + std::to_string(psi));
  if (psi > kMaxPsi)  // keeps a tile's per-step spike count inside int32
    return Fail(name, "attribute psi must be <= " + std::to_string(kMaxPsi) + ", got " + std::to_string(psi));
  if (!(tau > 0.f) || !std::isfinite(tau))
    return Fail(name, "attribute tau must be a finite number > 0, got " + std::to_string(tau));
  int64_t block = 1;
  if (OrtStatus* st = api.KernelInfoGetAttribute_int64(info, "channel_block", &block)) {
    api.ReleaseStatus(st);  // absent: plain NCHW
    block = 1;
  }
  if (block < 1 || block > 64)
    return Fail(name, "attribute channel_block must be in 1..64, got " + std::to_string(block));
  int64_t once = 0;
  if (OrtStatus* st = api.KernelInfoGetAttribute_int64(info, "time_broadcast", &once)) {
    api.ReleaseStatus(st);  // absent: X holds all T steps
    once = 0;
  }
  if (once != 0 && once != 1)
    return Fail(name, "attribute time_broadcast must be 0 or 1, got " + std::to_string(once));
  std::vector<float> alpha;
  size_t na = 0;
  if (OrtStatus* st = api.KernelInfoGetAttributeArray_float(info, "alpha", nullptr, &na)) {
    api.ReleaseStatus(st);  // absent: no negative spikes
    na = 0;
  } else if (na > 0) {
    alpha.resize(na);
    if (OrtStatus* st2 = api.KernelInfoGetAttributeArray_float(info, "alpha", alpha.data(), &na)) {
      api.ReleaseStatus(st2);
      return Fail(name, "attribute alpha could not be read");
    }
    for (float a : alpha)
      if (!(a >= 0.f) || !std::isfinite(a))
        return Fail(name, "attribute alpha must hold finite values >= 0, got " + std::to_string(a));
    if (std::none_of(alpha.begin(), alpha.end(), [](float a) { return a > 0.f; })) alpha.clear();
  }
  if (step && (once != 0 || !alpha.empty()))
    return Fail(name, "BurstIFStep takes no time_broadcast or alpha (the ReLU neuron's step only)");
  *op_kernel = new BurstIFKernel(T, psi, tau, block, once == 1, name, std::move(alpha), step);
  return nullptr;
}
}  // namespace

OrtStatusPtr BurstIFOp::CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** op_kernel) const {
  return MakeKernel(api, info, op_kernel, false);
}

OrtStatusPtr BurstIFStepOp::CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** op_kernel) const {
  return MakeKernel(api, info, op_kernel, true);
}

// The per-channel parameters for these vth values, cached: vth is almost always a constant
// initializer, and rebuilding them costs three allocations per call (in-cache layers notice).
std::shared_ptr<const BurstIFKernel::Params> BurstIFKernel::GetParams(const float* vth, int64_t nv, int64_t C) {
  std::lock_guard<std::mutex> lock(mu_);  // one kernel may run in several threads at once
  auto same = [](float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; };
  if (params_ && params_->C == C && params_->vth.size() == static_cast<size_t>(nv) &&
      std::equal(vth, vth + nv, params_->vth.begin(), same))
    return params_;
  auto p = std::make_shared<Params>();
  p->C = C;
  p->vth.assign(vth, vth + nv);
  p->theta.resize(C);
  p->offset.resize(C);
  p->psi_c.resize(C);
  for (int64_t c = 0; c < C; ++c) {
    const float th = tau_ * vth[nv == 1 ? 0 : c];
    p->psi_c[c] = th > 0.f ? static_cast<float>(psi_) : 0.f;
    p->theta[c] = th > 0.f ? th : 1.f;
    p->offset[c] = p->theta[c] / static_cast<float>(2 * T_);
  }
  if (!alpha_.empty()) {
    p->theta_n.resize(C);
    p->step_w.resize(C);
    p->psi_n.resize(C);
    const bool one = alpha_.size() == 1;
    for (int64_t c = 0; c < C; ++c) {
      const float a = alpha_[one ? 0 : c];
      const float thn = p->theta[c] / (a > 0.f ? a : 1.f);
      const bool neg = p->psi_c[c] > 0.f && a > 0.f && thn <= std::numeric_limits<float>::max();
      p->theta_n[c] = neg ? thn : 1.f;
      p->psi_n[c] = neg ? static_cast<float>(psi_) : 0.f;
      p->step_w[c] = p->offset[c] + p->offset[c];
    }
  }
  params_ = p;
  return params_;
}

OrtStatusPtr BurstIFKernel::ComputeV2(OrtKernelContext* context) {
  try {
    Ort::KernelContext ctx(context);
    Ort::ConstValue X = ctx.GetInput(0);
    Ort::ConstValue V = ctx.GetInput(1);
    if (!X || !V) return Fail(name_, "inputs X and vth are required");
    auto xinfo = X.GetTensorTypeAndShapeInfo();
    auto vinfo = V.GetTensorTypeAndShapeInfo();
    if (xinfo.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT ||
        vinfo.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
      return Fail(name_, "X and vth must be float32 tensors");
    const std::vector<int64_t> shape = xinfo.GetShape();
    if (shape.size() < 2)
      return Fail(name_, "X must have rank >= 2 ([T*N, C, ...]), got shape " + ShapeStr(shape));
    for (int64_t d : shape)
      if (d < 0) return Fail(name_, "X has a negative dimension: " + ShapeStr(shape));
    if (!once_ && !step_ && shape[0] % T_ != 0)
      return Fail(name_, "batch dimension of X " + ShapeStr(shape) + " is " + std::to_string(shape[0]) +
                             ", not a multiple of T=" + std::to_string(T_));
    std::vector<int64_t> yshape = shape;  // [T*N, C, ...]
    if (once_) yshape[0] = shape[0] * T_;  // X is one step [N, C, ...], fed at every t
    const int64_t C = shape[1];
    const int64_t nv = static_cast<int64_t>(vinfo.GetElementCount());
    if (nv != 1 && nv != C)
      return Fail(name_, "vth has " + std::to_string(nv) + " values; X " + ShapeStr(shape) +
                             " has C=" + std::to_string(C) + " channels (need 1 or C)");
    if (!alpha_.empty() && alpha_.size() != 1 && static_cast<int64_t>(alpha_.size()) != C)
      return Fail(name_, "attribute alpha has " + std::to_string(alpha_.size()) + " values; X " + ShapeStr(shape) +
                             " has C=" + std::to_string(C) + " channels (need 1 or C)");
    if (block_ > 1 && C % block_ != 0)
      return Fail(name_, "X " + ShapeStr(shape) + " has C=" + std::to_string(C) +
                             " channels, not a multiple of channel_block=" + std::to_string(block_));
    int64_t K = 1;
    for (size_t i = 2; i < shape.size(); ++i) K *= shape[i];
    int64_t N = yshape[0] / T_;
    int64_t steps = T_;  // the steps this call runs: all T, or BurstIFStep's k
    std::vector<int64_t> ushape;
    const float* addend = nullptr;
    const float* u_prev = nullptr;
    if (step_) {
      Ort::ConstValue U = ctx.GetInput(2);
      if (!U) return Fail(name_, "input U (the membrane) is required");
      auto uinfo = U.GetTensorTypeAndShapeInfo();
      if (uinfo.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
        return Fail(name_, "the membrane U must be a float32 tensor");
      ushape = uinfo.GetShape();
      // X holds k >= 1 consecutive steps [k*N, C, ...] (time-major) of U's N samples
      const bool same_tail = ushape.size() == shape.size() && std::equal(shape.begin() + 1, shape.end(), ushape.begin() + 1);
      if (!same_tail || (ushape[0] == 0 ? shape[0] != 0 : shape[0] % ushape[0] != 0))
        return Fail(name_, "the membrane U has shape " + ShapeStr(ushape) + ", X has " + ShapeStr(shape) +
                               " (X must hold k >= 1 steps of U's samples: [k*N, ...] against [N, ...])");
      N = ushape[0];
      steps = N == 0 ? 1 : shape[0] / N;
      u_prev = U.GetTensorData<float>();
    }
    const size_t r_at = step_ ? 3 : 2;  // the optional addend: BurstIF's third input, BurstIFStep's fourth
    if (ctx.GetInputCount() > r_at) {
      Ort::ConstValue R = ctx.GetInput(r_at);
      if (R) {
        auto rinfo = R.GetTensorTypeAndShapeInfo();
        if (rinfo.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
          return Fail(name_, "the addend R must be a float32 tensor");
        if (rinfo.GetShape() != yshape)
          return Fail(name_, "the addend R has shape " + ShapeStr(rinfo.GetShape()) + ", Y has " + ShapeStr(yshape) +
                                 " (they must be equal)");
        addend = R.GetTensorData<float>();
      }
    }

    Ort::UnownedValue Y = ctx.GetOutput(0, yshape);
    float* spikes = nullptr;
    if (ctx.GetOutputCount() > 1) {
      Ort::UnownedValue S = ctx.GetOutput(1, std::vector<int64_t>{N});
      if (S) spikes = S.GetTensorMutableData<float>();
    }
    float* u_next = nullptr;
    if (step_) {
      Ort::UnownedValue Un = ctx.GetOutput(2, ushape);
      if (!Un) return Fail(name_, "output U_next is required");
      u_next = Un.GetTensorMutableData<float>();
    }
    if (N == 0 || C == 0 || K == 0) {
      if (spikes) std::fill(spikes, spikes + N, 0.f);
      return nullptr;
    }

    const std::shared_ptr<const Params> prm = GetParams(V.GetTensorData<float>(), nv, C);
    Job job{};
    job.x = X.GetTensorData<float>();
    job.r = addend;
    job.y = Y.GetTensorMutableData<float>();
    job.theta = prm->theta.data();
    job.offset = prm->offset.data();
    job.psi_c = prm->psi_c.data();
    job.T = steps;  // a BurstIFStep runs its k steps; the offset keeps the SNN's T (GetParams)
    job.u_prev = u_prev;
    job.u_next = u_next;
    job.N = N;
    job.C = C;
    job.K = K;
    job.P = C * K;
    job.M = N * job.P;
    job.B = block_;
    job.x_step = once_ ? 0 : job.M;
    if (!prm->theta_n.empty()) {
      job.theta_n = prm->theta_n.data();
      job.step_w = prm->step_w.data();
      job.psi_neg = prm->psi_n.data();
    }
    // Equal tiles of at most kTile neurons, each a multiple of 64 (whole NCHWc blocks), so
    // that no thread is left with a short remainder tile.
    job.tiles_per_sample = (job.P + kTile - 1) / kTile;
    job.tile = ((job.P + job.tiles_per_sample - 1) / job.tiles_per_sample + 63) / 64 * 64;
    job.tiles_per_sample = (job.P + job.tile - 1) / job.tile;
    std::vector<int64_t> partial;
    if (spikes) {
      partial.assign(static_cast<size_t>(N * job.tiles_per_sample), 0);
      job.partial = partial.data();
    }
    const size_t tasks = static_cast<size_t>(N * job.tiles_per_sample);
    ctx.ParallelFor(RunTask, tasks, 0, &job);
    if (spikes) {
      for (int64_t n = 0; n < N; ++n) {
        int64_t total = 0;
        for (int64_t k = 0; k < job.tiles_per_sample; ++k) total += partial[n * job.tiles_per_sample + k];
        spikes[n] = static_cast<float>(total);
      }
    }
    return nullptr;
  } catch (const std::exception& e) {
    return Fail(name_, e.what());
  }
}

}  // namespace onnx2burst
