#include "core/errors.h"

#include <ATen/ATen.h>
#include <c10/core/Allocator.h>
#include <c10/util/Exception.h>
#include <c10/util/Logging.h>

#include <new>

namespace x2i {

Caught translate(std::exception_ptr e) {
  try {
    std::rethrow_exception(e);
  } catch (const Error& err) {
    return {err.code, err.what()};
  } catch (const c10::OutOfMemoryError& err) {
    return {"ERR_OUT_OF_MEMORY", err.what_without_backtrace()};
  } catch (const c10::Error& err) {
    std::string msg = err.what_without_backtrace();
    const char* code = msg.find("CUDA") != std::string::npos ? "ERR_CUDA" : "ERR_TORCH";
    return {code, msg};
  } catch (const std::bad_alloc&) {
    return {"ERR_OUT_OF_MEMORY", "out of host memory"};
  } catch (const std::exception& err) {
    return {"ERR_NATIVE", err.what()};
  } catch (...) {
    return {"ERR_NATIVE", "unknown native exception"};
  }
}

void quietHardwareProbes() {
  struct Swallow : c10::WarningHandler {
    void process(const c10::Warning&) override {}
  } swallow;
  bool available;
  {
    c10::WarningUtils::WarningHandlerGuard guard(&swallow);
    const int level = FLAGS_caffe2_log_level;  // NNPACK's message goes through c10's LOG(WARNING)
    FLAGS_caffe2_log_level = 2;               // errors only
    available = at::_nnpack_available();
    FLAGS_caffe2_log_level = level;
  }
  if (!available) at::globalContext().setUserEnabledNNPACK(false);
}

}  // namespace x2i
