// Errors with a stable code (ERR_*): thrown anywhere in the native code, they reach JS as `error.code` and
// `error.message` (napi/common.h turns a Caught into a JS error).
#pragma once
#include <exception>
#include <stdexcept>
#include <string>

namespace x2i {

struct Error : std::runtime_error {
  std::string code;
  Error(std::string code, const std::string& msg) : std::runtime_error(msg), code(std::move(code)) {}
};
[[noreturn]] inline void fail(const std::string& code, const std::string& msg) { throw Error(code, msg); }

struct Caught {
  std::string code, message;
};
// Turns any in-flight exception (x2i::Error, c10::Error, OOM, std::exception, ...) into code + message.
Caught translate(std::exception_ptr e);

// LibTorch's one-time hardware warnings kept out of the user's terminal: NNPACK is probed once with warnings
// swallowed and switched off where this CPU cannot run it ("Could not initialize NNPACK! Reason: Unsupported
// hardware." on every process otherwise). Called once when the addon loads.
void quietHardwareProbes();

}  // namespace x2i
