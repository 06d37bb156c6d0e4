// Registration of the onnx2burst custom-op domain. The library does not link libonnxruntime:
// the API table comes from the OrtApiBase that onnxruntime hands to RegisterCustomOps.
#include <mutex>
#include <string>
#include <vector>

#include "burst_if.h"

extern "C" {
#if defined(_WIN32)
__declspec(dllexport)
#else
__attribute__((visibility("default")))
#endif
OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base);
}

OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (!api) {
    const OrtApi* v1 = api_base->GetApi(1);
    const std::string msg = "onnx2burst: this onnxruntime does not offer API version " +
                            std::to_string(ORT_API_VERSION) + ", which the BurstIF kernel was built for";
    return v1->CreateStatus(ORT_FAIL, msg.c_str());
  }
  Ort::InitApi(api);
  static onnx2burst::BurstIFOp op;
  static onnx2burst::BurstIFStepOp step_op;
  static std::mutex mutex;
  static std::vector<Ort::CustomOpDomain> domains;  // must outlive every session that uses them
  try {
    Ort::CustomOpDomain domain{onnx2burst::kDomain};
    domain.Add(&op);
    domain.Add(&step_op);
    Ort::UnownedSessionOptions(options).Add(domain);
    std::lock_guard<std::mutex> lock(mutex);
    domains.push_back(std::move(domain));
  } catch (const std::exception& e) {
    return api->CreateStatus(ORT_FAIL, e.what());
  }
  return nullptr;
}
