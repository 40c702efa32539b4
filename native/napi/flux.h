// What the other bindings take from the FLUX and LightControl bindings (napi/flux.cc, napi/lightcontrol.cc): reading
// FluxInputs and unwrapping a NativeFlux or NativeLightControl handle passed as an argument.
#pragma once
#include "models/flux.h"
#include "models/lightcontrol.h"
#include "napi/common.h"

#include <memory>

namespace x2i {

// { hiddenStates, encoderHiddenStates, pooledProjections, timestep, guidance, imgIds, txtIds, controlResiduals?,
// controlScale?, loraScales? } (absent tensors undefined).
flux::Inputs parseFluxInputs(const Napi::Value& v);
// The model of a NativeFlux handle (ERR_INVALID_ARG "expected a <what>" for anything else).
std::shared_ptr<flux::Model> fluxOf(const Napi::Value& v, const char* what);
// The branches of a NativeLightControl handle (napi/lightcontrol.cc).
std::shared_ptr<lightcontrol::Model> lightControlOf(const Napi::Value& v, const char* what);

}  // namespace x2i
