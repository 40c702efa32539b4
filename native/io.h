// Checkpoint file I/O entry points (see io.cc).
#pragma once
#include "common.h"

namespace x2i {
Napi::Value ReadSafetensors(const Napi::CallbackInfo& info);
Napi::Value WriteSafetensors(const Napi::CallbackInfo& info);
Napi::Value LoadTorchCheckpoint(const Napi::CallbackInfo& info);
}  // namespace x2i
