// dtype and device names as x2i spells them ('float32', 'cuda:1', ...), shapes in messages, and waiting for a
// device: the vocabulary every other native file shares.
#pragma once
#include "core/errors.h"

#include <ATen/ATen.h>

#include <string>

// The LibTorch this addon was built against, recorded by the build (CMake passes strings; binding.gyp
// passes bare tokens, stringified here).
#define X2I_STR2(x) #x
#define X2I_STR(x) X2I_STR2(x)
#ifndef X2I_LIBTORCH_VERSION
#define X2I_LIBTORCH_VERSION X2I_STR(X2I_LIBTORCH_VERSION_RAW)
#endif
#ifndef X2I_LIBTORCH_FLAVOUR
#define X2I_LIBTORCH_FLAVOUR X2I_STR(X2I_LIBTORCH_FLAVOUR_RAW)
#endif

namespace x2i {

// dtype names as x2i spells them ('float32', 'bfloat16', ...).
at::ScalarType parseDType(const std::string& name);
std::string dtypeName(at::ScalarType t);
// 'cpu', 'cuda' or 'cuda:N', checked against the devices present.
c10::Device parseDevice(const std::string& name);
std::string deviceName(const c10::Device& d);
// "[2, 3, 4]", for messages that say what shape was found and what was expected.
std::string shapeString(at::IntArrayRef s);

// Waits for the device's queued work (no-op on CPU), so that a job's Promise settles after its results
// exist; the CUDA hooks are absent from CPU builds, hence the runtime dispatch.
void syncDevice(const c10::Device& d);
inline void syncDevice(const at::Tensor& t) {
  if (t.defined()) syncDevice(t.device());
}

}  // namespace x2i
