"""PyTorch eager baseline for bench/x2i_step.mjs (the GPU machine's python3, same run as x2i).

The X2I training step as the official code composes it (x2i-method.md §2-3), at real sizes with random bf16
weights, batch 1, 1024² (4096 image tokens), 512 text tokens:
  T5-XXL (transformers T5EncoderModel) + CLIP-L (CLIPTextModel) under no_grad -> teacher conditioning;
  Qwen2.5-VL-7B (transformers, output_hidden_states, 29 states stacked) under no_grad;
  teacher FLUX.1-dev forward under no_grad with forward hooks' features (double blocks: after the output
  projections, before the gates; single blocks: the raw attention output), stacked per kind;
  AlignNet (Conv2d 5x5 over the 29 states, LayerNorm, MLP) -> the student's conditioning;
  the same frozen FLUX forward with grad, the same features, the official loss (z-norm, tau 3, softmax over
  channels, kl_div(log p_T, p_S, 'batchmean'), 76 terms), backward into AlignNet, clip_grad_norm 1.0, AdamW.
And the teacher's generation: T5 + CLIP + 28 Euler steps of FLUX.1-dev at 1024² (no VAE: diffusers is not on
the machine), eager and (--compile) with torch.compile of the transformer. --compile-step times the training step
with torch.compile of the same composition (the transformer for teacher and student, AlignNet and the loss compiled;
the encoders eager), last (each compilation takes minutes: the two flags apart fit a device call each).
The FLUX transformer (flux_torch.py, shared with finetune_step.py) is written out in plain PyTorch (BFL's math: AdaLN, QK-RMSNorm, 3-axis RoPE, joint
attention text-first, GELU-tanh), one module per part, weights frozen.
    python3 x2i_step.py [--steps 5] [--gen-iters 3] [--compile] [--compile-step] [--json out.json]
"""
import argparse, json, math, os, statistics, sys, time, traceback

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from flux_torch import D, H, HD, MLP, Flux, rope_tables  # noqa: E402  (FLUX.1-dev in plain PyTorch, shared)

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=5)
p.add_argument("--gen-iters", type=int, default=3)
p.add_argument("--compile", action="store_true")
p.add_argument("--compile-step", action="store_true")
p.add_argument("--json")
a = p.parse_args()
dev, dt = "cuda", torch.bfloat16
T, N = 512, 4096
GiB = 2 ** 30


class AlignNet(nn.Module):                            # x2i-method.md §1.2, Qwen2.5-VL-7B sizes
    def __init__(self, C=29, Hq=3584):
        super().__init__()
        self.conv = nn.Conv2d(C, 1, 5, padding=2)
        self.ln = nn.LayerNorm(Hq, eps=1e-6)
        self.projector = nn.Sequential(nn.Linear(Hq, 4096, bias=False), nn.GELU(), nn.Linear(4096, 4096, bias=False))
        self.fc = nn.Sequential(nn.GELU(), nn.Linear(4096, 768))
    def forward(self, x):                             # [B, C, S, H] -> prompt_embeds [B, S, 4096], pooled [B, 768]
        seq = self.projector(self.ln(self.conv(x).squeeze(1)))
        return seq, self.fc(seq).mean(1)


def official_loss(teacher, student):                  # x2i-method.md §2.2, in bf16 as the official code
    def normalize(x):
        return (x - x.mean(-1, keepdim=True)) / (1e-7 + x.std(-1, keepdim=True))
    total = 0
    for kind in ("img", "txt", "single"):
        Tk, Sk = torch.stack(teacher[kind], 1), torch.stack(student[kind], 1)
        for i in range(Tk.shape[1]):
            pT = F.softmax(normalize(Tk[:, i]) / 3, -1)
            pS = F.softmax(normalize(Sk[:, i]) / 3, -1)
            term = F.kl_div(torch.log(pT), pS, reduction="batchmean")
            if torch.isfinite(term):
                total = total + term
    return total


def save():                                          # after every phase: a timeout keeps what was measured
    if a.json:
        json.dump(res, open(a.json, "w"), indent=1)


def timed(fn, iters, warm):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter(); fn(); torch.cuda.synchronize(); ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts), ts


res = {"torch": torch.__version__, "device": torch.cuda.get_device_name()}
try:
    import transformers
    from transformers import CLIPTextConfig, CLIPTextModel, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, T5Config, T5EncoderModel
    res["transformers"] = transformers.__version__
    torch.manual_seed(0)
    t0 = time.perf_counter()
    torch.set_default_dtype(dt)
    with torch.device(dev), torch.no_grad():
        flux = Flux().eval().requires_grad_(False)
        t5 = T5EncoderModel(T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                                     feed_forward_proj="gated-gelu", is_encoder_decoder=False)).eval().requires_grad_(False)
        clip = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                            num_hidden_layers=12, max_position_embeddings=77)).eval().requires_grad_(False)
        text = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                    num_key_value_heads=4, rms_norm_eps=1e-6, rope_theta=1e6, max_position_embeddings=32768,
                    rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]})
        vision = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, in_chans=3, in_channels=3, out_hidden_size=3584,
                      patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31])
        qcfg = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **text)
        qcfg._attn_implementation = "sdpa"
        qwen = Qwen2_5_VLForConditionalGeneration(qcfg).eval().requires_grad_(False)
    with torch.device(dev):
        align = AlignNet()                               # bf16 parameters, as the official recipe
    torch.set_default_dtype(torch.float32)
    res["build_s"] = time.perf_counter() - t0
    res["weights_GiB"] = torch.cuda.memory_allocated() / GiB
    opt = torch.optim.AdamW(align.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)

    g = torch.Generator(device="cpu").manual_seed(0)
    t5_ids = torch.randint(0, 32128, (1, T), generator=g).to(dev)
    clip_ids = torch.randint(0, 49407, (1, 77), generator=g).to(dev)
    qwen_ids = torch.randint(0, 150000, (1, T), generator=g).to(dev)
    side = int(N ** 0.5)
    ids = torch.zeros(T + N, 3, device=dev)
    ids[T:, 1] = torch.arange(N, device=dev).div(side, rounding_mode="floor").float()
    ids[T:, 2] = (torch.arange(N, device=dev) % side).float()
    cos, sin = rope_tables(ids)
    ones, guid = torch.ones(1, device=dev), torch.full((1,), 3.5, device=dev)

    def conditioning():
        with torch.no_grad():
            return t5(input_ids=t5_ids).last_hidden_state, clip(input_ids=clip_ids).pooler_output

    def make_step(fl, al, loss_fn, key):             # the step with these modules (eager or compiled)
        def step():
            ehs, pooled = conditioning()
            with torch.no_grad():
                hs = torch.stack(qwen.model(input_ids=qwen_ids, output_hidden_states=True, use_cache=False).hidden_states, 1)
                lat = torch.randn(1, N, 64, device=dev, dtype=dt)
                tt = {"img": [], "txt": [], "single": []}
                fl(lat, ehs, pooled, ones, guid, cos, sin, tt)
            seq, pool = al(hs)
            ss = {"img": [], "txt": [], "single": []}
            fl(lat, seq, pool, ones, guid, cos, sin, ss)
            loss = loss_fn(tt, ss)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(align.parameters(), 1.0)
            opt.step(); opt.zero_grad(set_to_none=True)
            res.setdefault(key, float(loss))
        return step
    step = make_step(flux, align, official_loss, "loss")

    torch.cuda.reset_peak_memory_stats()
    ms, all_ms = timed(step, a.steps, 2)
    res["step"] = {"ms": ms, "all_ms": all_ms, "peak_allocated_GiB": torch.cuda.max_memory_allocated() / GiB}
    save()

    # ---- teacher generation: T5 + CLIP + 28 Euler steps (FLUX.1-dev's shifted schedule at 4096 tokens)
    def sampler(model):
        mu = 0.5 + (1.15 - 0.5) * (N - 256) / (4096 - 256)
        s = torch.linspace(1.0, 1.0 / 28, 28, dtype=torch.float64)
        s = math.exp(mu) / (math.exp(mu) + (1 / s - 1))
        sig = torch.cat([s, torch.zeros(1, dtype=torch.float64)]).tolist()
        def run():
            with torch.no_grad():
                ehs, pooled = conditioning()
                x = torch.randn(1, N, 64, device=dev, dtype=dt)
                for i in range(28):
                    v = model(x, ehs, pooled, torch.full((1,), sig[i], device=dev), guid, cos, sin)
                    x = (x.float() + (sig[i + 1] - sig[i]) * v.float()).to(dt)
        return run
    torch.cuda.reset_peak_memory_stats()
    ms, all_ms = timed(sampler(flux), a.gen_iters, 1)
    res["generate"] = {"ms": ms, "all_ms": all_ms, "peak_allocated_GiB": torch.cuda.max_memory_allocated() / GiB,
                       "note": "no VAE decode (diffusers is not on the machine)"}
    save()
    if a.compile:
        t0 = time.perf_counter()
        cflux = torch.compile(flux, dynamic=False)
        run = sampler(cflux)
        run()
        res["compile_s"] = time.perf_counter() - t0
        ms, all_ms = timed(run, a.gen_iters, 0)
        res["generate_compile"] = {"ms": ms, "all_ms": all_ms}
        save()
    if a.compile_step:
        # ---- the training step, compiled: the same composition, the same optimizer state continuing
        t0 = time.perf_counter()
        cstep = make_step(torch.compile(flux, dynamic=False), torch.compile(align, dynamic=False),
                          torch.compile(official_loss, dynamic=False), "loss_compile")
        cstep()
        res["step_compile_s"] = time.perf_counter() - t0
        torch.cuda.reset_peak_memory_stats()
        ms, all_ms = timed(cstep, a.steps, 1)
        res["step_compile"] = {"ms": ms, "all_ms": all_ms, "peak_allocated_GiB": torch.cuda.max_memory_allocated() / GiB}
except Exception as e:  # report, do not hide
    res["error"] = "".join(traceback.format_exception(e))[-3000:]
print(json.dumps(res, indent=1))
save()
