"""Same-weights accuracy baseline for bench/flux.mjs (issue 15): PyTorch eager float32 and bf16 of FLUX.1 on the
weights and inputs x2i used in the same run.

The model is flux_torch.Flux (BFL's math, FLUX.1-dev size unless the inputs file says otherwise) with the weights
of x2i's FluxTransformer.fromConfig(config, { seed }) (native/models/flux.cc random()): per linear, in x2i's order,
the weight then the bias, each a float32 uniform(-1/sqrt(in), 1/sqrt(in)) draw from one generator seeded with the
seed (CUDA: a Philox generator at offset 0, as x2i's reseeded default one; CPU: mt19937), QK-norm scales 1. The
bf16 model is the float32 one rounded, as x2i's bf16 weights are the float32 draws rounded. Same LibTorch kernels,
same draws: bit-identical weights, which the run checks: x2i float32 vs PyTorch float32 is ~1e-6 (O(1) otherwise).
Inputs (--inputs, written by bench/flux.mjs): a safetensors file with hidden_states, encoder_hidden_states,
pooled_projections, img_ids, txt_ids (float32), x2i's float32 outputs at t = 1, guidance 4 (x2i_fp32.sample,
.doubleImg, .doubleTxt, .single) and in its metadata the config, the seed and the (t, guidance) pairs.
Cases, each against the float32 model at the same t and guidance (relative error ||a - b|| / ||b|| in float64
over all elements, as x2i.relativeError), for the velocity and the stacked taps (double blocks: the output
projections' outputs before the gates, image and text; single blocks: the raw attention output, text first):
  bf16 at t = 1, guidance 4 (t*1000 and g*1000 exact in bf16: the model's own error);
  bf16 at t = 0.75, guidance 3.5 with t*1000, g*1000 rounded to bf16 (BFL / diffusers: 752, 3504);
  bf16 at t = 0.75, guidance 3.5 with t*1000, g*1000 in float32 (x2i's timestepPrecision 'float32').
    python3 flux_accuracy.py --inputs IN.safetensors --json OUT.json [--device cuda]
    python3 flux_accuracy.py --device cpu --tiny      (no inputs file: made-up inputs, a tiny model; a smoke test)
"""
import argparse, json, math, os, struct, sys, time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from flux_torch import Flux, rope_tables  # noqa: E402  (FLUX.1 in plain PyTorch, shared)

p = argparse.ArgumentParser()
p.add_argument("--inputs")
p.add_argument("--json")
p.add_argument("--device", default="cuda")
p.add_argument("--seed", type=int, default=0)
p.add_argument("--tiny", action="store_true")
a = p.parse_args()
dev = torch.device(a.device)
torch.backends.cuda.matmul.allow_tf32 = False                 # the default, as x2i's: float32 GEMMs without TF32
GiB = 2 ** 30
t0 = time.time()


def read_safetensors(path):                                   # {name: CPU tensor}, metadata (needs neither the
    dtypes = {"F32": torch.float32, "BF16": torch.bfloat16}   # safetensors package nor numpy)
    out = {}
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        for name, e in header.items():
            if name == "__metadata__":
                continue
            b, end = e["data_offsets"]
            buf = bytearray(end - b)
            f.seek(8 + n + b); f.readinto(buf)
            out[name] = torch.frombuffer(buf, dtype=dtypes[e["dtype"]]).reshape(e["shape"])
    return out, header.get("__metadata__", {})


def rel(x, y):                                               # ||x - y|| / ||y|| in float64 (x2i.relativeError), in chunks
    xf, yf = x.reshape(-1), y.reshape(-1)
    num = torch.zeros((), dtype=torch.float64, device=dev); den = num.clone()
    for i in range(0, xf.numel(), 1 << 26):
        xs, ys = xf[i:i + (1 << 26)].to(dev, torch.float64), yf[i:i + (1 << 26)].to(dev, torch.float64)
        num += (xs - ys).pow(2).sum(); den += ys.pow(2).sum()
    return math.sqrt(num.item() / den.item())


def build(cfg, dtype):                                        # uninitialised, on the device
    with torch.device("meta"):
        m = Flux(cfg["hidden"], cfg["heads"], 4 * cfg["hidden"], cfg["depth"], cfg["depth_single"], cfg["in_channels"],
                 cfg["joint_dim"], cfg["pooled_dim"]).to(dtype)
    return m.to_empty(device=dev).eval().requires_grad_(False)


@torch.no_grad()
def x2i_init(m, seed):
    """x2i's random(seed): the same draws in the same order from the same generator (see the docstring)."""
    g = torch.Generator(device=dev); g.manual_seed(seed)
    order = [m.img_in, m.txt_in, m.time_in.in_layer, m.time_in.out_layer, m.guidance_in.in_layer,
             m.guidance_in.out_layer, m.vector_in.in_layer, m.vector_in.out_layer]
    for b in m.double_blocks:
        for s in (b.img, b.txt):                                  # img side first, as x2i
            order += [s.mod, s.qkv, s.proj, s.mlp[0], s.mlp[2]]
    for b in m.single_blocks:
        order += [b.l1, b.l2, b.mod]
    order += [m.final, m.final_mod]
    done = set()
    for lin in order:
        bound = 1.0 / math.sqrt(lin.in_features)
        lin.weight.uniform_(-bound, bound, generator=g); lin.bias.uniform_(-bound, bound, generator=g)
        done |= {id(lin.weight), id(lin.bias)}
    for name, q in m.named_parameters():
        if name.endswith(".scale"):
            q.fill_(1); done.add(id(q))
    assert done == {id(q) for q in m.parameters()}, "a parameter was not initialised"


@torch.inference_mode()
def run(m, x, t, g, t_dtype=None):                           # -> {sample, doubleImg, doubleTxt, single}
    dt = m.img_in.weight.dtype
    B = x["img"].shape[0]
    taps = {"img": [], "txt": [], "single": []}
    full = lambda v: torch.full((B,), v, dtype=torch.float32, device=dev)  # noqa: E731
    out = m(x["img"].to(dt), x["txt"].to(dt), x["pooled"].to(dt), full(t), full(g), x["cos"], x["sin"], taps=taps,
            t_dtype=t_dtype)
    r = {"sample": out}
    for k, kind in (("doubleImg", "img"), ("doubleTxt", "txt"), ("single", "single")):
        r[k] = torch.stack(taps[kind], 1); taps[kind].clear()
    return r


# ---- config, inputs, cases
if a.inputs:
    tensors, meta = read_safetensors(a.inputs)
    cfg, seed, pairs = json.loads(meta["config"]), int(meta["seed"]), json.loads(meta["timesteps"])
else:                                                          # standalone: made-up inputs (FLUX.1-dev or tiny)
    cfg = (dict(hidden=64, heads=2, depth=2, depth_single=2, in_channels=16, joint_dim=32, pooled_dim=16, axes=[8, 12, 12], side=4, text=8)
           if a.tiny else dict(hidden=3072, heads=24, depth=19, depth_single=38, in_channels=64, joint_dim=4096, pooled_dim=768, axes=[16, 56, 56], side=64, text=512))
    seed, pairs = a.seed, {"exact": [1.0, 4.0], "rounded": [0.75, 3.5]}
    gen = torch.Generator().manual_seed(1)
    N, T = cfg["side"] ** 2, cfg["text"]
    img_ids = torch.zeros(N, 3); img_ids[:, 1] = torch.arange(N) // cfg["side"]; img_ids[:, 2] = torch.arange(N) % cfg["side"]
    tensors = {"hidden_states": torch.randn(1, N, cfg["in_channels"], generator=gen).bfloat16().float(),
               "encoder_hidden_states": torch.randn(1, T, cfg["joint_dim"], generator=gen).bfloat16().float(),
               "pooled_projections": torch.randn(1, cfg["pooled_dim"], generator=gen).bfloat16().float(),
               "img_ids": img_ids, "txt_ids": torch.zeros(T, 3)}
x = {"img": tensors.pop("hidden_states").to(dev), "txt": tensors.pop("encoder_hidden_states").to(dev),
     "pooled": tensors.pop("pooled_projections").to(dev)}
x["cos"], x["sin"] = rope_tables(torch.cat((tensors.pop("txt_ids"), tensors.pop("img_ids"))).to(dev), tuple(cfg["axes"]))
x2i32 = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("x2i_fp32.")}   # CPU, compared in chunks
(te, ge), (tr, gr) = pairs["exact"], pairs["rounded"]
result = {"torch": torch.__version__, "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
          "seed": seed, "config": cfg, "cases": {}}

# ---- float32: the references (and x2i float32 against PyTorch float32)
m32 = build(cfg, torch.float32)
x2i_init(m32, seed)
result["weights_checksum"] = {"img_in.weight": m32.img_in.weight.double().sum().item(),
                              "all": sum(q.sum(dtype=torch.float64) for q in m32.parameters()).item()}
print(f"weights (seed {seed}): sum img_in.weight {result['weights_checksum']['img_in.weight']:.9e}, "
      f"all {result['weights_checksum']['all']:.9e}", file=sys.stderr)
ref = {"exact": run(m32, x, te, ge), "rounded": run(m32, x, tr, gr)}
if x2i32:
    result["x2i_fp32_vs_torch_fp32"] = {k: rel(x2i32[k], ref["exact"][k]) for k in ref["exact"]}
    print("x2i float32 vs PyTorch float32:", result["x2i_fp32_vs_torch_fp32"], file=sys.stderr)
    del x2i32, tensors

# ---- bf16: the float32 draws rounded (as x2i), then dropped
m16 = build(cfg, torch.bfloat16)
with torch.no_grad():
    for q16, q32 in zip(m16.parameters(), m32.parameters()):
        q16.copy_(q32)
del m32
if dev.type == "cuda":
    torch.cuda.empty_cache()
for name, which, (t, g), t_dtype in (("bf16", "exact", (te, ge), torch.bfloat16),
                                     ("bf16_rounded_timesteps", "rounded", (tr, gr), torch.bfloat16),
                                     ("bf16_float32_timesteps", "rounded", (tr, gr), None)):
    o = run(m16, x, t, g, t_dtype)
    result["cases"][name] = {"t": t, "guidance": g, "timesteps": "bf16" if t_dtype else "float32",
                             "errors": {k: rel(o[k], ref[which][k]) for k in o}}
    print(name, result["cases"][name], file=sys.stderr)
    del o
if dev.type == "cuda":
    result["peak_reserved_GiB"] = torch.cuda.max_memory_reserved(dev) / GiB
result["seconds"] = time.time() - t0
if a.json:
    with open(a.json, "w") as f:
        json.dump(result, f, indent=2)
else:
    print(json.dumps(result, indent=2))
