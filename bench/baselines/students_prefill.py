"""Baseline for bench/students.mjs (the GPU machine's python3, same run as x2i, after x2i freed the GPU).

Random bf16 weights at the X2I model zoo's sizes, run by transformers where it has the module and by plain PyTorch
eager where the reference is remote code:
  LM prefill of B x S token ids (two rows right-padded by 64), with and without output_hidden_states:
    transformers' Qwen2Model at Qwen2.5-3B size (InternVL2.5-4B) and Qwen2.5-7B size (MiniCPM-o 2.6), SDPA.
  InternViT-300M + mlp1 on four tiles (plain PyTorch: pre-LN blocks with layer scale, pixel shuffle, MLP).
  SigLIP-400M (transformers' SiglipVisionModel) on one slice + MiniCPM-o's resampler (nn.MultiheadAttention).
  Whisper-medium encoder (transformers' WhisperEncoder, MiniCPM-o's chunked additive mask) + projection + pooling
  on 30 s of log-mel frames.
CUDA events, median of --iters after 3 warm-ups.
    python3 students_prefill.py [--batch 4] [--seq 512] [--tile 448] [--audio-seconds 30] [--iters 10] [--json out.json]
"""
import argparse, json, math, statistics, traceback

import torch
import torch.nn as nn
import torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument("--batch", type=int, default=4)
p.add_argument("--seq", type=int, default=512)
p.add_argument("--tile", type=int, default=448)
p.add_argument("--audio-seconds", type=int, default=30)
p.add_argument("--iters", type=int, default=10)
p.add_argument("--tiny", action="store_true")
p.add_argument("--json")
a = p.parse_args()
dev = "cpu" if a.tiny else "cuda"
dt = torch.float32 if a.tiny else torch.bfloat16
res = {"torch": torch.__version__, "device": "cpu" if a.tiny else torch.cuda.get_device_name(), "errors": {}}
try:
    import transformers
    res["transformers"] = transformers.__version__
except Exception as e:  # report, do not hide
    res["errors"]["import"] = str(e)


def sync():
    if dev == "cuda":
        torch.cuda.synchronize()


def bench(fn):
    for _ in range(3):
        fn()
    sync()
    ts = []
    for _ in range(a.iters):
        if dev == "cuda":
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record(); fn(); e.record(); torch.cuda.synchronize(); ts.append(s.elapsed_time(e))
        else:
            import time
            t0 = time.perf_counter(); fn(); ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


def build(ctor):
    torch.manual_seed(0)
    torch.set_default_dtype(dt)
    try:
        with torch.device(dev):
            return ctor().eval()
    finally:
        torch.set_default_dtype(torch.float32)


def section(name, fn):
    try:
        with torch.inference_mode():
            fn()
    except Exception as e:  # report, do not hide
        res["errors"][name] = "".join(traceback.format_exception(e))[-2500:]
    if dev == "cuda":
        torch.cuda.empty_cache()
    save()


def save():
    if a.json:
        json.dump(res, open(a.json, "w"), indent=1)


B, S = a.batch, a.seq


def prefill(name, hidden, layers, heads, kv, inter, vocab):
    from transformers import Qwen2Config, Qwen2Model
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, rms_norm_eps=1e-6, rope_theta=1e6,
                      max_position_embeddings=32768)
    cfg._attn_implementation = "sdpa"
    model = build(lambda: Qwen2Model(cfg))
    ids = torch.randint(100, vocab - 100, (B, S), device=dev)
    mask = torch.ones_like(ids)
    mask[1::2, S - 64:] = 0
    res[name] = {"all_layers_ms": bench(lambda: model(input_ids=ids, attention_mask=mask, use_cache=False, output_hidden_states=True)),
                 "last_ms": bench(lambda: model(input_ids=ids, attention_mask=mask, use_cache=False))}
    del model


tiny = a.tiny
section("internvl4b_prefill", lambda: prefill("internvl4b_prefill", *((64, 2, 4, 2, 128, 300) if tiny else (2048, 36, 16, 2, 11008, 151674))))
section("minicpmo_prefill", lambda: prefill("minicpmo_prefill", *((128, 2, 4, 2, 256, 300) if tiny else (3584, 28, 28, 4, 18944, 151700))))


# ---- InternViT-300M + pixel shuffle + mlp1 (plain PyTorch: the remote code's math)
class ViTBlock(nn.Module):
    def __init__(self, d, h, f):
        super().__init__()
        self.h = h
        self.norm1, self.norm2 = nn.LayerNorm(d, eps=1e-6), nn.LayerNorm(d, eps=1e-6)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, f), nn.Linear(f, d)
        self.ls1, self.ls2 = nn.Parameter(torch.ones(d)), nn.Parameter(torch.ones(d))

    def forward(self, x):
        T, N, D = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(T, N, 3, self.h, D // self.h).permute(2, 0, 3, 1, 4)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(T, N, D)) * self.ls1
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x)))) * self.ls2


class InternViT(nn.Module):
    def __init__(self, d, layers, h, f, size, llm):
        super().__init__()
        g = size // 14
        self.patch = nn.Conv2d(3, d, 14, 14)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.pos = nn.Parameter(torch.zeros(1, 1 + g * g, d))
        self.blocks = nn.ModuleList(ViTBlock(d, h, f) for _ in range(layers))
        self.mlp1 = nn.Sequential(nn.LayerNorm(4 * d), nn.Linear(4 * d, llm), nn.GELU(), nn.Linear(llm, llm))

    def forward(self, px):
        x = self.patch(px).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], 1, -1), x], 1) + self.pos
        for b in self.blocks:
            x = b(x)
        x = x[:, 1:]
        n, hw, c = x.shape
        g = int(hw ** 0.5)
        x = x.reshape(n, g, g, c).reshape(n, g, g // 2, c * 2).permute(0, 2, 1, 3).reshape(n, g // 2, g // 2, c * 4).permute(0, 2, 1, 3)
        return self.mlp1(x.reshape(n, -1, c * 4))


def internvit():
    d, layers, h, f, llm = (32, 2, 4, 64, 64) if tiny else (1024, 24, 16, 4096, 2048)
    m = build(lambda: InternViT(d, layers, h, f, a.tile, llm))
    px = torch.randn(4, 3, a.tile, a.tile, device=dev, dtype=dt)
    res["internvl4b_vision_ms"] = bench(lambda: m(px))


section("internvl4b_vision", internvit)


# ---- SigLIP-400M (transformers) + MiniCPM-o's resampler
def siglip():
    from transformers import SiglipVisionConfig, SiglipVisionModel
    d, layers, h, f, llm, q = (32, 2, 4, 64, 128, 8) if tiny else (1152, 27, 16, 4304, 3584, 64)
    cfg = SiglipVisionConfig(hidden_size=d, num_hidden_layers=layers, num_attention_heads=h, intermediate_size=f,
                             image_size=a.tile, patch_size=14, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
    cfg._attn_implementation = "sdpa"
    vm = build(lambda: SiglipVisionModel(cfg))
    kv = build(lambda: nn.Linear(d, llm, bias=False))
    attn = build(lambda: nn.MultiheadAttention(llm, max(llm // 128, 1)))
    lns = [build(lambda: nn.LayerNorm(llm, eps=1e-6)) for _ in range(3)]
    query = torch.randn(q, llm, device=dev, dtype=dt)
    proj = torch.randn(llm, llm, device=dev, dtype=dt) * llm ** -0.5
    g = a.tile // 14
    pos = torch.randn(g * g, 1, llm, device=dev, dtype=dt)
    px = torch.randn(1, 3, a.tile, a.tile, device=dev, dtype=dt)

    def run():
        x = vm(pixel_values=px).last_hidden_state
        x = lns[1](kv(x)).permute(1, 0, 2)
        o = attn(lns[0](query).unsqueeze(1), x + pos, x)[0]
        return lns[2](o.permute(1, 0, 2)) @ proj
    res["minicpmo_vision_ms"] = bench(run)


section("minicpmo_vision", siglip)


# ---- Whisper-medium encoder (transformers) with MiniCPM-o's chunked mask, projection, pooling
def whisper():
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder
    d, layers, h, f, llm = (32, 2, 4, 128, 128) if tiny else (1024, 24, 16, 4096, 3584)
    cfg = WhisperConfig(d_model=d, encoder_layers=layers, encoder_attention_heads=h, encoder_ffn_dim=f, num_mel_bins=80,
                        max_source_positions=1500)
    cfg._attn_implementation = "sdpa"
    enc = build(lambda: WhisperEncoder(cfg))
    proj = build(lambda: nn.Sequential(nn.Linear(d, llm), nn.ReLU(), nn.Linear(llm, llm)))
    frames = a.audio_seconds * 100
    feats = torch.randn(1, 80, 3000, device=dev, dtype=dt)  # WhisperEncoder expects the padded 30 s window
    C = 1500
    i = torch.arange(C, device=dev)
    hide = (i.view(C, 1) // 50 + 1) * 50 <= i.view(1, C)
    mask = torch.zeros(1, 1, C, C, device=dev, dtype=dt).masked_fill(hide, float("-inf"))

    def run():
        x = enc(feats, attention_mask=mask).last_hidden_state
        return F.avg_pool1d(proj(x).transpose(1, 2), 2, 2).transpose(1, 2)
    res["minicpmo_audio_ms"] = bench(run)
    res["minicpmo_audio_frames"] = frames


section("minicpmo_audio", whisper)
print(json.dumps({k: v for k, v in res.items() if k != "errors"}, indent=1))
if res["errors"]:
    print("errors:", json.dumps(res["errors"])[:3000])
save()
