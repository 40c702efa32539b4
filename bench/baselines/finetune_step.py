"""PyTorch eager baseline for bench/finetune.mjs (the GPU machine's python3, same run as x2i, after x2i freed the GPU).

FLUX.1-dev size (flux_torch.py: plain PyTorch, BFL's math), random frozen bf16 weights, batch 1, 1024² (4096 image
tokens), 512 text tokens, conditioning given (random T5 / CLIP-size tensors: no encoders), packed latents given.
  LoRA step: rank 16, alpha 16 on the default targets (lib/models/lora.ts defaultLoraTargets), one PEFT-style
    adapter per diffusers module on the row blocks of BFL's fused layers (flux_torch.LoraLinear: base GEMM, then
    each module's B(A x)·alpha/r as its own small Linears, concatenated, added). As diffusers'
    train_dreambooth_lora_flux.py with --mixed_precision bf16: transformer in bf16, the adapter in float32 (PEFT's
    autocast_adapter_dtype casts bf16 adapters to float32), forward under torch.autocast(bf16) (accelerate's).
    Not emulated: PEFT's cast of each LoRA input to float32 before lora_A (autocast casts it back), which would only
    slow the baseline. Flow matching as x2i's trainer: sigma fixed per step, x_s = (1 - s) x0 + s eps, guidance 3.5,
    loss = mse(v.float(), eps - x0), backward, clip_grad_norm_(adapter, 1.0), AdamW(lr 1e-4, wd 1e-2), zero_grad.
    Eager and with per-block activation checkpointing (use_reentrant=False; diffusers' gradient checkpointing).
  LightControl step: 19 ControlNeXt branches (x2i-method.md §5.1; flux_torch.ControlNeXt), float32 parameters under
    autocast bf16, each run on the hint after its double block and added to the image stream (the official
    lightcontrol_flux.py forward), same loss, AdamW(lr 1e-5) over the branches only; eager and checkpointed.
  Generation: 28 Euler steps at 1024² (FLUX.1-dev's shifted schedule), no VAE, bf16, no grad: no adapter; one
    rank-16 adapter (bf16, unfused: PEFT's forward); the same adapter merged into the weights (PEFT's merge).
Times: median over --steps after 2 warm-ups (generation: median of --gen-iters after 1 warm-up), wall time with a
CUDA synchronisation at each end; peak = torch.cuda.max_memory_allocated over the timed calls (reset after warm-up).
    python3 finetune_step.py [--steps 5] [--gen-steps 28] [--gen-iters 2] [--compile] [--json out.json]
    (--tiny: a tiny model on the CPU, to check the code runs)
"""
import argparse, json, math, os, statistics, sys, time, traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flux_torch as ft  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=5)
p.add_argument("--gen-steps", type=int, default=28)
p.add_argument("--gen-iters", type=int, default=2)
p.add_argument("--compile", action="store_true", help="also time the LoRA step with torch.compile of the transformer")
p.add_argument("--skip", default="", help="comma-separated parts to skip: lora,lora_checkpoint,lightcontrol,lightcontrol_checkpoint,generate")
p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
p.add_argument("--json")
a = p.parse_args()
skip = set(s for s in a.skip.split(",") if s)
GiB = 2 ** 30
if a.tiny:
    dev, dt = "cpu", torch.bfloat16
    cfg = dict(d=32, h=2, mlp=128, depth=2, depth_single=2, in_channels=16, joint_dim=32, pooled_dim=24)
    axes, T, side, C = (4, 6, 6), 8, 2, 16
    lc_cfg = dict(in_channels=(16, 16), out_channels=(16, 32), groups=(4, 8), time_embed_dim=32, embedding_channels=(8, 8, 16),
                  control_out=32)
    n_branches = 2
else:
    dev, dt = "cuda", torch.bfloat16
    cfg = dict()
    axes, T, side, C = (16, 56, 56), 512, 64, 64
    lc_cfg = dict()
    n_branches = 19
N = side * side
joint = cfg.get("joint_dim", 4096)
pooled_dim = cfg.get("pooled_dim", 768)
cuda = dev == "cuda"


def sync():
    if cuda:
        torch.cuda.synchronize()


def reset_peak():
    if cuda:
        torch.cuda.reset_peak_memory_stats()


def peak():
    return torch.cuda.max_memory_allocated() / GiB if cuda else 0.0


def timed(fn, iters, warm):
    for _ in range(warm):
        fn()
    sync()
    reset_peak()
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter(); fn(); sync(); ts.append((time.perf_counter() - t0) * 1e3)
    return {"ms": statistics.median(ts), "all_ms": ts, "peak_allocated_GiB": peak()}


res = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if cuda else "cpu", "tiny": a.tiny}


def save():                                          # after every phase: a timeout keeps what was measured
    if a.json:
        json.dump(res, open(a.json, "w"), indent=1)


def phase(name, fn):
    if name in skip:
        return
    try:
        res[name] = fn()
        print(f"{name}: {json.dumps({k: v for k, v in res[name].items() if k != 'all_ms'})}", flush=True)
    except Exception as e:  # report, do not hide
        res.setdefault("errors", {})[name] = "".join(traceback.format_exception(e))[-3000:]
        print(f"{name} failed:\n{res['errors'][name]}", flush=True)
    finally:
        if cuda:
            torch.cuda.empty_cache()
    save()


try:
    torch.manual_seed(0)
    t0 = time.perf_counter()
    torch.set_default_dtype(dt)                      # built in bf16 directly (no float32 copy of 12 B parameters)
    with torch.device(dev):
        flux = ft.Flux(**cfg).eval().requires_grad_(False)
    torch.set_default_dtype(torch.float32)
    res["build_s"] = time.perf_counter() - t0
    res["weights_GiB"] = torch.cuda.memory_allocated() / GiB if cuda else 0.0
    g = torch.Generator(device="cpu").manual_seed(0)
    x0 = torch.randn(1, N, C, generator=g).to(dev, dt)
    ehs = torch.randn(1, T, joint, generator=g).to(dev, dt)
    pooled = torch.randn(1, pooled_dim, generator=g).to(dev, dt)
    ids = torch.zeros(T + N, 3, device=dev)
    ids[T:, 1] = torch.arange(N, device=dev).div(side, rounding_mode="floor").float()
    ids[T:, 2] = (torch.arange(N, device=dev) % side).float()
    cos, sin = ft.rope_tables(ids, axes)
    guid = torch.full((1,), 3.5, device=dev)
    hint = (torch.rand(1, 3, 16 * side, 16 * side, generator=g) * 2 - 1).to(dev)   # [-1, 1] (the trainer's normalisation)
    hint_bf16 = hint.to(dt)                          # the official script feeds the hint in the weight dtype
    sigmas = [0.3, 0.5, 0.7, 0.9, 0.6, 0.4, 0.8]

    def flow_step(model, params, opt, control=None, checkpoint=False, counter=[0]):
        s = sigmas[counter[0] % len(sigmas)]; counter[0] += 1
        eps = torch.randn(x0.shape, device=dev, dtype=torch.float32)
        xs = ((1 - s) * x0.float() + s * eps).to(dt)
        t = torch.full((1,), s, device=dev)
        with torch.autocast(dev, dtype=torch.bfloat16):
            ctl = control(t) if control is not None else None
            v = model(xs, ehs, pooled, t, guid, cos, sin, control=ctl, checkpoint=checkpoint)
        loss = torch.nn.functional.mse_loss(v.float(), eps - x0.float())
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step(); opt.zero_grad(set_to_none=True)
        return loss, gn

    # ---- LoRA: rank 16 on the default targets, float32 adapter under autocast bf16
    lora_params = ft.add_lora(flux, 16, 16)
    res["lora_parameters"] = sum(p.numel() for p in lora_params)
    opt = torch.optim.AdamW(lora_params, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)

    def lora_run(model, checkpoint):
        last = {}
        def one():
            loss, gn = flow_step(model, lora_params, opt, checkpoint=checkpoint)
            last["loss"], last["gradNorm"] = loss, gn
        r = timed(one, a.steps, 2)
        r["loss"], r["gradNorm"] = float(last["loss"]), float(last["gradNorm"])
        return r
    phase("lora", lambda: lora_run(flux, False))
    phase("lora_checkpoint", lambda: lora_run(flux, True))
    if a.compile and not a.tiny:
        def compiled():
            t0 = time.perf_counter()
            cflux = torch.compile(flux, dynamic=False)
            flow_step(cflux, lora_params, opt)
            sync()
            cs = time.perf_counter() - t0
            r = lora_run(cflux, False)
            r["compile_s"] = cs
            return r
        phase("lora_compile", compiled)
    # take the trained adapter out again (the base Linears back in place)
    del opt
    for m in list(flux.modules()):
        for n, c in list(m.named_children()):
            if isinstance(c, ft.LoraLinear):
                setattr(m, n, c.base)
    lora_params = None

    # ---- LightControl: 19 branches, float32 under autocast bf16, frozen transformer
    def lightcontrol(checkpoint):
        torch.manual_seed(1)
        with torch.device(dev):
            branches = torch.nn.ModuleList(ft.ControlNeXt(**lc_cfg) for _ in range(n_branches))
        params = list(branches.parameters())
        lopt = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
        def control(t):
            t1000 = 1000 * t
            return lambda i, img: branches[i](hint_bf16, t1000) if i < len(branches) else None
        last = {}
        def one():
            last["loss"], last["gradNorm"] = flow_step(flux, params, lopt, control=control, checkpoint=checkpoint)
        try:
            r = timed(one, a.steps, 2)
            r["loss"], r["gradNorm"] = float(last["loss"]), float(last["gradNorm"])
            r["parameters"] = sum(q.numel() for q in params)
            return r
        finally:
            del branches, lopt
    phase("lightcontrol", lambda: lightcontrol(False))
    phase("lightcontrol_checkpoint", lambda: lightcontrol(True))

    # ---- generation: 28 Euler steps at 1024² (FLUX.1-dev's shifted schedule), no VAE; none / unfused / fused adapter
    def sampler():
        steps = a.gen_steps
        mu = 0.5 + (1.15 - 0.5) * (N - 256) / (4096 - 256)
        s = torch.linspace(1.0, 1.0 / steps, steps, dtype=torch.float64)
        s = math.exp(mu) / (math.exp(mu) + (1 / s - 1))
        sig = torch.cat([s, torch.zeros(1, dtype=torch.float64)]).tolist()
        def run():
            with torch.no_grad():
                x = torch.randn(1, N, C, device=dev, dtype=dt)
                for i in range(steps):
                    v = flux(x, ehs, pooled, torch.full((1,), sig[i], device=dev), guid, cos, sin)
                    x = (x.float() + (sig[i + 1] - sig[i]) * v.float()).to(dt)
        return run
    run = sampler()
    phase("generate", lambda: timed(run, a.gen_iters, 1))
    torch.manual_seed(2)
    ft.add_lora(flux, 16, 16, dtype=dt)               # a loaded adapter for inference: bf16 like the model
    for m in ft.lora_modules(flux):                    # small random B (PEFT's init has B = 0)
        for B in m.lora_B:
            torch.nn.init.normal_(B.weight, std=1e-3)
    flux.requires_grad_(False)
    phase("generate_unfused", lambda: timed(run, a.gen_iters, 1))
    for m in ft.lora_modules(flux):
        m.merge()
    phase("generate_fused", lambda: timed(run, a.gen_iters, 1))
except Exception as e:  # report, do not hide
    res["error"] = "".join(traceback.format_exception(e))[-3000:]
print(json.dumps({k: v for k, v in res.items()}, indent=1))
save()
