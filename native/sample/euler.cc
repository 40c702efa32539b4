#include "sample/euler.h"

#include <c10/core/InferenceMode.h>
#ifdef X2I_CUDA_KERNELS
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <cstdio>
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
  enum State { Warm, Captured, Failed } state = Warm;  // Warm: one eager run made; Failed: eager from now on
#ifdef X2I_CUDA_KERNELS
  at::cuda::CUDAGraph graph;
#endif
  Inputs in;     // the static inputs
  at::Tensor v;  // the static output
};

}  // namespace x2i::flux

namespace x2i::sample {
namespace {

#ifdef X2I_CUDA_KERNELS
// What the capture depends on beyond the input buffers' contents; empty: the step is not graphed (CPU, float64,
// trainable adapters, profiling, X2I_NO_CUDA_GRAPHS).
std::string graphKey(const flux::Model& m, const flux::Inputs& p) {
  if (!p.hiddenStates.is_cuda() || p.hiddenStates.scalar_type() == at::kDouble || std::getenv("X2I_NO_CUDA_GRAPHS") ||
      std::getenv("X2I_PROFILE"))
    return {};
  std::ostringstream k;
  k << &m << '/' << m.weightsVersion;
  for (const at::Tensor* t : {&p.hiddenStates, &p.encoderHiddenStates, &p.pooledProjections, &p.timestep, &p.guidance,
                              &p.imgIds, &p.txtIds, &p.controlResiduals}) {
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

// v = forward(p) through the model's captured step. The first forward with a key runs eagerly (cuBLAS / cuDNN plans,
// workspaces and kernels are made outside the capture), the second captures and replays, the later ones copy p into
// the graph's buffers and replay. A capture that fails (an operation CUDA graphs refuse) leaves the key eager.
at::Tensor graphedForward(const flux::Model& m, const flux::Inputs& p, const std::string& key) {
  auto& g = m.stepGraph;
  if (!g || g->key != key) {
    g.reset();  // the old graph and its pool go first
    g = std::make_shared<flux::StepGraph>();
    g->key = key;
    return flux::forward(m, p);
  }
  if (g->state == flux::StepGraph::Failed) return flux::forward(m, p);
  if (g->state == flux::StepGraph::Captured) {
    for (auto [dst, src] : {std::pair{&g->in.hiddenStates, &p.hiddenStates}, {&g->in.encoderHiddenStates, &p.encoderHiddenStates},
                            {&g->in.pooledProjections, &p.pooledProjections}, {&g->in.timestep, &p.timestep},
                            {&g->in.guidance, &p.guidance}, {&g->in.imgIds, &p.imgIds}, {&g->in.txtIds, &p.txtIds},
                            {&g->in.controlResiduals, &p.controlResiduals}})
      if (dst->defined()) dst->copy_(*src);
    g->graph.replay();
    return g->v.clone();  // the graph's output buffer is rewritten by the next replay
  }
  g->in = p;
  g->in.loraScales.clear();  // applied already (prepare); the key holds them
  for (at::Tensor* t : {&g->in.hiddenStates, &g->in.encoderHiddenStates, &g->in.pooledProjections, &g->in.timestep,
                        &g->in.guidance, &g->in.imgIds, &g->in.txtIds, &g->in.controlResiduals})
    if (t->defined()) *t = t->clone();
  c10::cuda::getCurrentCUDAStream().synchronize();
  try {
    const c10::cuda::CUDAStreamGuard onSide(c10::cuda::getStreamFromPool(false, p.hiddenStates.device().index()));
    g->graph.capture_begin();
    try {
      g->v = flux::forward(m, g->in);
    } catch (...) {
      try { g->graph.capture_end(); } catch (...) {}
      throw;
    }
    g->graph.capture_end();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "x2i: the denoising step could not be captured as a CUDA graph (%s); it runs eagerly\n", e.what());
    g->graph.reset();
    g->in = {};
    g->v = at::Tensor();
    g->state = flux::StepGraph::Failed;
    return flux::forward(m, p);
  }
  g->state = flux::StepGraph::Captured;
  g->graph.replay();
  return g->v.clone();
}
#endif

}  // namespace

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
