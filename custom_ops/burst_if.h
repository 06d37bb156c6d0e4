// BurstIF: burst integrate-and-fire over a time-folded batch (docs/method.md §2).
// Domain "onnx2burst", version 1. Inputs X [T*N, C, ...] float32, vth [C] or [1] float32.
// Attributes T >= 1, psi >= 1, tau > 0 (default 1). Outputs Y (like X), optional spikes [N].
// Optional attribute channel_block b >= 1 (default 1): X holds onnxruntime's blocked NCHWc
// layout, channel c of position k at ((c / b) * K + k) * b + c % b within a sample. Files
// never carry it: make_session (layout "auto") sets it in onnxruntime's optimized CPU graph so
// that no layout reorder runs around each neuron. Two more session-only fusions, set by the
// same rewrite: an optional third input R (X's shape; the neuron integrates fl(X + R), what a
// separate Add feeding it computes) and attribute time_broadcast = 1 (X is one step [N, C, ...]
// fed at every t, Y is [T*N, C, ...]; what a Tile over the batch feeding it computes).
// Optional attribute alpha (floats >= 0, 1 or C values): the signed neuron of LeakyReLU/PReLU
// (negative spikes at threshold theta / alpha, worth -theta); absent or all 0: the ReLU neuron.
//
// BurstIFStep: one timestep of the ReLU neuron, the membrane carried by the caller (streaming
// models; session-only, never in files). Inputs X [N, C, ...], vth as above, U (X's shape: the
// membrane before the step). Outputs Y (X's shape), spikes [N], U_next (U's shape). X may also
// hold k consecutive steps [k*N, C, ...] (time-major) of U's N samples: the k steps in one call,
// spikes summed over them, U_next after the last (what k calls of one step give). An optional
// fourth input R (X's shape) is BurstIF's addend: the step integrates fl(X + R). Attributes
// T (the SNN's, it sets the offset theta / (2T)), psi, tau as BurstIF's, and channel_block (X, U
// and U_next all in the blocked layout: StreamSession keeps such membranes blocked between steps).
// T steps from U = 0 give BurstIF's Y and spikes bit for bit.
#pragma once

#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace onnx2burst {

inline constexpr const char* kDomain = "onnx2burst";
inline constexpr const char* kOpType = "BurstIF";
inline constexpr const char* kStepOpType = "BurstIFStep";

struct BurstIFKernel {
  BurstIFKernel(int64_t T, int64_t psi, float tau, int64_t block, bool once, std::string name,
                std::vector<float> alpha = {}, bool step = false)
      : T_(T), psi_(psi), tau_(tau), block_(block), once_(once), step_(step), name_(std::move(name)),
        alpha_(std::move(alpha)) {}
  // Checks every shape and type before touching memory; errors come back as OrtStatus.
  OrtStatusPtr ComputeV2(OrtKernelContext* context);

  struct Params {  // per channel, for one vth: theta = tau * vth (1 where <= 0), theta / (2T), psi (0 there)
    int64_t C = 0;
    std::vector<float> vth, theta, offset, psi_c;
    // signed neurons only (attribute alpha): theta_n = theta / alpha (1 where no negative
    // spikes), the per-step growth 2 * offset of w, psi (0 where no negative spikes)
    std::vector<float> theta_n, step_w, psi_n;
  };

 private:
  std::shared_ptr<const Params> GetParams(const float* vth, int64_t nv, int64_t C);

  int64_t T_, psi_;
  float tau_;
  int64_t block_;
  bool once_;  // time_broadcast: X holds one step for all T
  bool step_;  // BurstIFStep: X is one step, U the membrane before it
  std::string name_;
  std::vector<float> alpha_;  // empty: no negative spikes (a ReLU neuron)
  std::mutex mu_;
  std::shared_ptr<const Params> params_;
};

struct BurstIFOp : Ort::CustomOpBase<BurstIFOp, BurstIFKernel, /*WithStatus=*/true> {
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** op_kernel) const;
  const char* GetName() const { return kOpType; }
  size_t GetInputTypeCount() const { return 3; }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return index < 2 ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
  ONNXTensorElementDataType GetInputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  size_t GetOutputTypeCount() const { return 2; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  OrtCustomOpInputOutputCharacteristic GetOutputCharacteristic(size_t index) const {
    return index == 0 ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
};

struct BurstIFStepOp : Ort::CustomOpBase<BurstIFStepOp, BurstIFKernel, /*WithStatus=*/true> {
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** op_kernel) const;
  const char* GetName() const { return kStepOpType; }
  size_t GetInputTypeCount() const { return 4; }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return index < 3 ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
  ONNXTensorElementDataType GetInputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  size_t GetOutputTypeCount() const { return 3; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  OrtCustomOpInputOutputCharacteristic GetOutputCharacteristic(size_t) const { return INPUT_OUTPUT_REQUIRED; }
};

}  // namespace onnx2burst
