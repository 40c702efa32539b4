#include "sample/euler.h"

#include "core/streams.h"

#include <c10/core/InferenceMode.h>
#ifdef X2I_CUDA_KERNELS
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <array>
#include <cstdio>
#include <iomanip>
#include <optional>
#include <cstdlib>
#include <sstream>

namespace x2i::flux {

// A denoising step's transformer forward captured as one CUDA graph: its ~2000 kernel launches replayed as one
// launch (FluxPipeline's shapes are fixed for a whole generation). The step's inputs are copied into the graph's own
// buffers first; `key` holds everything the capture baked in (shapes, dtypes, the adapters' scales, the weights'
// storage version, LightControl's scale), so a change captures again. Its memory pool (one forward's activations)
// lives as long as the graph.
struct StepGraph {
  std::string key;
  // Fresh: not captured yet; Captured; Failed: eager from now on
  enum State { Fresh, Captured, Failed } state = Fresh;
#ifdef X2I_CUDA_KERNELS
  std::optional<c10::cuda::CUDAStream> stream;  // the warm-up, the capture and the replays run on it
  at::cuda::CUDAGraph graph;
#endif
  Inputs in;     // the static inputs
  at::Tensor v;  // the static output
};

}  // namespace x2i::flux

namespace x2i::sample {
namespace {

#ifdef X2I_CUDA_KERNELS
// The inputs a step's forward reads (each copied into the graph's buffer before a replay).
std::array<at::Tensor*, 8> tensorsOf(flux::Inputs& in) {
  return {&in.hiddenStates, &in.encoderHiddenStates, &in.pooledProjections, &in.timestep, &in.guidance, &in.imgIds,
          &in.txtIds, &in.controlResiduals};
}

// What the capture depends on beyond the input buffers' contents; empty: the step is not graphed (CPU, float64,
// trainable adapters, profiling, X2I_NO_CUDA_GRAPHS).
std::string graphKey(const flux::Model& m, flux::Inputs& p) {
  if (!p.hiddenStates.is_cuda() || p.hiddenStates.scalar_type() == at::kDouble || std::getenv("X2I_NO_CUDA_GRAPHS") ||
      std::getenv("X2I_PROFILE"))
    return {};
  std::ostringstream k;
  k << std::setprecision(17) << &m << '/' << m.weightsVersion << '/' << (std::getenv("X2I_NO_KERNELS") != nullptr);
  for (const at::Tensor* t : tensorsOf(p)) {
    k << '|';
    if (t->defined()) k << t->sizes() << t->scalar_type() << t->device();
  }
  k << '|' << p.controlScale;
  for (const auto& [name, a] : m.adapters) {
    if (a->trainable) return {};
    k << '|' << name << '=' << a->scale << '/' << a->fusedScale;
  }
  return k.str();
}

// The allocator's state after a capture that failed part way (capture_end did not get to end the pool's routing).
void abandonCapture(flux::StepGraph& g, c10::DeviceIndex dev) {
  try { g.graph.capture_end(); } catch (...) {}
  try { c10::cuda::CUDACachingAllocator::endAllocateToPool(dev, g.graph.pool()); } catch (...) {}
  try { c10::cuda::CUDACachingAllocator::releasePool(dev, g.graph.pool()); } catch (...) {}
}

// v = forward(p) through the model's captured step, on the step's own stream. The first forward with a key runs
// eagerly and is then captured (thread-local mode: other threads' CUDA work goes on); the later ones copy p into the
// graph's buffers and replay. A capture that fails (an operation CUDA graphs refuse) leaves the key eager.
at::Tensor graphedForward(const flux::Model& m, flux::Inputs& p, const std::string& key) {
  const c10::DeviceIndex dev = p.hiddenStates.device().index();
  auto& g = m.stepGraph;
  if (!g || g->key != key) {
    g.reset();  // the old graph and its pool go first
    g = std::make_shared<flux::StepGraph>();
    g->key = key;
    g->stream = c10::cuda::getStreamFromPool(false, dev);
  }
  if (g->state == flux::StepGraph::Failed) return flux::forward(m, p);
  const c10::cuda::CUDAStream caller = c10::cuda::getCurrentCUDAStream(dev);
  waitFor(*g->stream, caller);  // the inputs are ready
  at::Tensor v;
  {
    const c10::cuda::CUDAStreamGuard onStream(*g->stream);
    if (g->state == flux::StepGraph::Captured) {
      auto dst = tensorsOf(g->in), src = tensorsOf(p);
      for (size_t i = 0; i < dst.size(); ++i)
        if (dst[i]->defined()) dst[i]->copy_(*src[i]);
      g->graph.replay();
      v = g->v.clone();  // the graph's output buffer is rewritten by the next replay
    } else {
      // first use of this key: an eager forward on the step's stream and on this thread (cuBLAS / cuDNN handles are
      // per thread, workspaces per stream: made here, outside the capture), then the capture for the next steps
      v = flux::forward(m, p);
      g->in = p;
      g->in.loraScales.clear();  // applied already (prepare); the key holds them
      for (at::Tensor* t : tensorsOf(g->in))
        if (t->defined()) *t = t->clone();
      g->stream->synchronize();
      c10::cuda::CUDACachingAllocator::emptyCache();  // the warm-up's cached blocks back before the graph's pool grows
      try {
        g->graph.capture_begin({0, 0}, cudaStreamCaptureModeThreadLocal);
        try {
          g->v = flux::forward(m, g->in);
          g->graph.capture_end();
        } catch (...) {
          abandonCapture(*g, dev);
          throw;
        }
        g->state = flux::StepGraph::Captured;
      } catch (const std::exception& e) {
        std::fprintf(stderr, "x2i: the denoising step could not be captured as a CUDA graph (%s); it runs eagerly\n", e.what());
        g->in = {};
        g->v = at::Tensor();
        g->state = flux::StepGraph::Failed;
      }
    }
  }
  waitFor(caller, *g->stream);
  v.record_stream(caller);
  return v;
}
#endif

}  // namespace

const char* stepGraphState(const flux::Model& m) {
  const char* names[] = {"fresh", "captured", "failed"};
  return m.stepGraph ? names[int(m.stepGraph->state)] : "none";
}

Denoised denoise(const flux::Model& m, const flux::Inputs& in, const std::vector<float>& ts,
                 const std::vector<float>& sig, bool keepSteps) {
  c10::InferenceMode guard;
  flux::Inputs p = flux::prepare(m, [&] { flux::Inputs q = in; q.timestep = at::zeros({in.hiddenStates.size(0)}); return q; }());
  at::Tensor x = p.hiddenStates;
  std::vector<at::Tensor> steps;
  const int64_t B = x.size(0);
#ifdef X2I_CUDA_KERNELS
  const std::string key = graphKey(m, p);
#endif
  for (size_t i = 0; i < ts.size(); ++i) {
    // the pipeline's timestep: t / 1000 in the latents' dtype (the model multiplies by 1000 again); filled on the
    // device (no host copy, no synchronisation inside the loop)
    p.timestep = at::full({B}, ts[i], x.options().dtype(at::kFloat)).to(x.scalar_type()) / 1000;
    p.hiddenStates = x;
#ifdef X2I_CUDA_KERNELS
    at::Tensor v = key.empty() ? flux::forward(m, p) : graphedForward(m, p, key);
#else
    at::Tensor v = flux::forward(m, p);
#endif
    x = (x.to(at::kFloat) + v.to(at::kFloat) * (sig[i + 1] - sig[i])).to(x.scalar_type());
    if (keepSteps) steps.push_back(x);
  }
  Denoised out;
  out.latents = x;
  if (keepSteps) out.steps = at::stack(steps, 0);
  syncDevice(x);
  return out;
}

}  // namespace x2i::sample
