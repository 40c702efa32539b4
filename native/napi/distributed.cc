// NativeProcessGroup: the JS handle of a process group (lib/train/distributed.ts wraps it); the math:
// train/distributed.cc.
#include "napi/bindings.h"
#include "napi/model_wrap.h"
#include "train/distributed.h"

namespace x2i {
namespace {

struct ProcessGroupSpec : ModelSpec<dist::Group> {
  static constexpr const char* jsName = "NativeProcessGroup";
  static constexpr const char* label = "ProcessGroup";
  static constexpr const char* createdBy = "ProcessGroup.init";
  using W = ModelWrap<ProcessGroupSpec>;

  // create({ backend, rank, worldSize, host, port, timeoutMs }) → Promise<NativeProcessGroup> (after the rendezvous)
  static Napi::Value create(const Napi::CallbackInfo& info) {
    return guardAsync(info, [&]() -> Napi::Value {
      if (info.Length() < 1 || !info[0].IsObject()) fail("ERR_INVALID_ARG", "NativeProcessGroup.create(options)");
      auto o = info[0].As<Napi::Object>();
      dist::Options opt;
      opt.backend = o.Get("backend").IsString() ? o.Get("backend").As<Napi::String>().Utf8Value() : "store";
      opt.rank = int(numberOr(o, "rank", 0));
      opt.size = int(numberOr(o, "worldSize", 1));
      opt.host = o.Get("host").IsString() ? o.Get("host").As<Napi::String>().Utf8Value() : "127.0.0.1";
      opt.port = int(numberOr(o, "port", 29500));
      opt.timeout = std::chrono::milliseconds(int64_t(numberOr(o, "timeoutMs", 1800000)));
      return W::build(info.Env(), [=] { return dist::create(opt); });
    });
  }

  // info() → { rank, worldSize, backend }
  static Napi::Value info(W& self, const Napi::CallbackInfo& info) {
    return guard(info, [&]() -> Napi::Value {
      auto g = self.model();
      auto o = Napi::Object::New(info.Env());
      o.Set("rank", g->rank);
      o.Set("worldSize", g->size);
      o.Set("backend", g->backend);
      return o;
    });
  }

  // op(name, tensor?, peer?) → Promise<void>: 'allReduce' | 'allReduceMean' | 'broadcast' (peer = root) | 'send' | 'recv' | 'barrier'
  static Napi::Value op(W& self, const Napi::CallbackInfo& info) {
    return guardAsync(info, [&]() -> Napi::Value {
      auto g = self.model();
      const std::string op = argString(info, 0, "op");
      at::Tensor t = op == "barrier" || op == "close" ? at::Tensor() : TensorWrap::Get(info[1], "tensor");
      const int peer = info.Length() > 2 && info[2].IsNumber() ? info[2].As<Napi::Number>().Int32Value() : 0;
      const bool reduce = op == "allReduce" || op == "allReduceMean";
      if (op != "barrier" && op != "close" && !reduce && peer >= g->size)
        fail("ERR_INVALID_ARG", "ProcessGroup." + op + ": rank " + std::to_string(peer) + " is not in [0, " + std::to_string(g->size) + ")");
      if ((op == "send" || op == "recv") && peer == g->rank) fail("ERR_INVALID_ARG", "ProcessGroup." + op + ": to itself");
      if (op != "barrier" && op != "close" && !reduce && op != "broadcast" && op != "send" && op != "recv")
        fail("ERR_INVALID_ARG", "ProcessGroup: unknown operation '" + op + "'");
      return queue(info.Env(), [=]() mutable { dist::runOp(*g, op, t, peer); },
                   [](Napi::Env env) -> Napi::Value { return env.Undefined(); });
    });
  }

  template <class Self>
  static std::vector<typename Self::PropertyDescriptor> methods() {
    return {Self::template StaticMethod<&create>("create"), Self::template method<&info>("info"),
            Self::template method<&op>("op")};
  }
};

}  // namespace

Napi::Function initProcessGroup(Napi::Env env) { return ModelWrap<ProcessGroupSpec>::Init(env); }

std::shared_ptr<dist::Group> processGroupOf(const Napi::Value& v) { return ModelWrap<ProcessGroupSpec>::Get(v, "ProcessGroup"); }

Napi::Value NcclAvailable(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), dist::ncclAvailable()); }

}  // namespace x2i
