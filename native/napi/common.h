// The N-API plumbing every binding file shares: coded errors as JS errors, guards, the async job that runs
// LibTorch work off the JS thread, argument helpers. Rule (as in sharp): JS values are read into plain C++
// values on the main thread; work() touches no napi; done() builds JS values back on the main thread.
#pragma once
#include "core/dtype.h"
#include "core/errors.h"

#include <napi.h>

#include <functional>
#include <map>
#include <memory>
#include <string>

namespace x2i {

// A JS Error carrying c.message, with c.code as its `code`.
Napi::Error makeError(Napi::Env env, const Caught& c);

// Per-environment data (the main thread and each worker thread load the addon separately): the
// constructors of the classes the addon wraps, by name.
struct AddonData {
  std::map<std::string, Napi::FunctionReference> ctors;
};
inline Napi::FunctionReference& ctorOf(Napi::Env env, const std::string& name) {
  return env.GetInstanceData<AddonData>()->ctors.at(name);
}
inline void setCtor(Napi::Env env, const std::string& name, Napi::Function fn) {
  auto* d = env.GetInstanceData<AddonData>();
  if (!d) {
    d = new AddonData();
    env.SetInstanceData<AddonData>(d);
  }
  d->ctors[name] = Napi::Persistent(fn);
}

// Runs fn on the JS thread and turns C++ exceptions into JS exceptions with a code.
template <class F>
Napi::Value guard(const Napi::CallbackInfo& info, F&& fn) {
  try {
    return fn();
  } catch (const Napi::Error&) {
    throw;
  } catch (...) {
    throw makeError(info.Env(), translate(std::current_exception()));
  }
}

// The same for entry points that return a Promise: a bad argument rejects the Promise, never throws.
template <class F>
Napi::Value guardAsync(const Napi::CallbackInfo& info, F&& fn) {
  try {
    return fn();
  } catch (...) {
    auto d = Napi::Promise::Deferred::New(info.Env());
    try {
      throw;
    } catch (const Napi::Error& e) {
      d.Reject(e.Value());
    } catch (...) {
      d.Reject(makeError(info.Env(), translate(std::current_exception())).Value());
    }
    return d.Promise();
  }
}

// ---- async jobs: work() on a libuv worker thread, done(env) on the JS thread; returns a Promise.
class Job : public Napi::AsyncWorker {
 public:
  using Work = std::function<void()>;
  using Done = std::function<Napi::Value(Napi::Env)>;
  Job(Napi::Env env, Work work, Done done)
      : Napi::AsyncWorker(env, "x2i"), deferred_(Napi::Promise::Deferred::New(env)),
        work_(std::move(work)), done_(std::move(done)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }

 protected:
  void Execute() override;
  void OnOK() override;
  void OnError(const Napi::Error& e) override;

 private:
  Napi::Promise::Deferred deferred_;
  Work work_;
  Done done_;
  Caught caught_;
};

inline Napi::Promise queue(Napi::Env env, Job::Work work, Job::Done done) {
  auto* job = new Job(env, std::move(work), std::move(done));
  auto p = job->Promise();
  job->Queue();
  return p;
}

// Argument helpers with messages that say what was expected and what was found.
std::string argString(const Napi::CallbackInfo& info, size_t i, const char* what);
std::vector<int64_t> argShape(const Napi::CallbackInfo& info, size_t i, const char* what);

}  // namespace x2i
