"""A diagnostic probe for the fine-tuning benchmark (bench/finetune.mjs), not a benchmark: where PyTorch spends a
LightControl step and what a LoRA layer's GEMM forms cost, on the GPU machine's python3 (CUDA events, medians).
  sdpa:        SDPA at FLUX's shape [1, 24, 4608, 128] bf16, forward and forward+backward per backend.
  lora_gemm:   one adapted layer's forward at 4608 tokens: the frozen GEMM alone; the low-rank term added in the
               frozen GEMM's epilogue (x2i's form: u = x D^T, acc = b + k u U^T, addmm(acc, x, W^T)); the rank
               columns appended to the GEMM's K dimension ([x | k u] [W | U]^T) with x copied into that buffer or
               already there; the weight as a strided view.
  lightcontrol: the 19 official ControlNeXt branches (flux_torch.ControlNeXt) forward+backward on a 1024^2 hint:
               float32 under autocast, bf16, channels-last, and the 19 as one set of grouped convolutions; the CUDA
               kernels' times by torch.profiler.
  frozen:      the plain-PyTorch FLUX.1-dev-size forward and forward+backward (to the input) per SDPA backend, and
               with PEFT-style LoRA (flux_torch.add_lora).
    OUT=dir PROBE=sdpa,lightcontrol python3 finetune_probe.py   (writes dir/finetune-probe.json; PROBE: the sections)
"""
import json, math, os, statistics, sys, time, traceback
import torch, torch.nn as nn, torch.nn.functional as F
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flux_torch as ft
OUT = os.environ.get("OUT", ".")
dev, dt = "cuda", torch.bfloat16
res = {}
def save():
    json.dump(res, open(os.path.join(OUT, "finetune-probe.json"), "w"), indent=1)
def timeit(fn, iters=5, warm=2):
    for _ in range(warm): fn()
    torch.cuda.synchronize(); ts = []
    for _ in range(iters):
        s = torch.cuda.Event(enable_timing=True); e = torch.cuda.Event(enable_timing=True)
        s.record(); fn(); e.record(); torch.cuda.synchronize(); ts.append(s.elapsed_time(e))
    return statistics.median(ts)
def section(name, fn):
    if name not in os.environ.get("PROBE", name): return
    try:
        t0 = time.time(); fn(); print(f"== {name} done in {time.time()-t0:.1f}s", flush=True)
    except Exception:
        res.setdefault("errors", {})[name] = traceback.format_exc()[-2000:]; print(traceback.format_exc(), flush=True)
    torch.cuda.empty_cache(); save()

def topk(prof, k=25):
    rows = []
    for e in sorted(prof.key_averages(), key=lambda e: -e.device_time_total)[:k]:
        rows.append([e.key[:110], round(e.device_time_total / 1e3, 2), e.count])
    return rows

# ---------------------------------------------------------------- A: LightControl branches
class Grouped(nn.Module):
    """The 19 branches as one: grouped convolutions (each branch its own channel group), GroupNorm over all groups."""
    def __init__(self, brs, cl=False):
        super().__init__()
        with torch.no_grad():
            self._build(brs, cl)
        for t in self.params:
            t.requires_grad_(True)
        if cl:
            for t in self.params:
                if t.dim() == 4: t.data = t.data.contiguous(memory_format=torch.channels_last)
    def _build(self, brs, cl):
        self.n = n = len(brs); b0 = brs[0]; self.cl = cl
        cat = lambda f: torch.cat([f(b) for b in brs], 0).to(dt)
        self.tw1 = torch.stack([b.time_embedding[0].weight for b in brs]).to(dt); self.tb1 = torch.stack([b.time_embedding[0].bias for b in brs]).to(dt)
        self.tw2 = torch.stack([b.time_embedding[2].weight for b in brs]).to(dt); self.tb2 = torch.stack([b.time_embedding[2].bias for b in brs]).to(dt)
        self.emb = [(cat(lambda b: b.embedding[i].weight), cat(lambda b: b.embedding[i].bias), cat(lambda b: b.embedding[i+1].weight), cat(lambda b: b.embedding[i+1].bias), b0.embedding[i+1].num_groups * n) for i in (0, 3, 6)]
        self.res = []
        for j in range(2):
            g = lambda f: cat(lambda b: f(b.down_res[j]))
            r0 = b0.down_res[j]
            self.res.append(dict(n1=(g(lambda r: r.norm1.weight), g(lambda r: r.norm1.bias), r0.norm1.num_groups * n),
                                 c1=(g(lambda r: r.conv1.weight), g(lambda r: r.conv1.bias)),
                                 tw=torch.stack([r.down_res[j].time_emb_proj.weight for r in brs]).to(dt), tb=g(lambda r: r.time_emb_proj.bias),
                                 n2=(g(lambda r: r.norm2.weight), g(lambda r: r.norm2.bias), r0.norm2.num_groups * n),
                                 c2=(g(lambda r: r.conv2.weight), g(lambda r: r.conv2.bias)),
                                 sc=(g(lambda r: r.conv_shortcut.weight), g(lambda r: r.conv_shortcut.bias)) if r0.conv_shortcut is not None else None,
                                 ds=(cat(lambda b: b.down_sample[j].weight), cat(lambda b: b.down_sample[j].bias))))
        m = lambda i: (cat(lambda b: b.mid[i].weight), cat(lambda b: b.mid[i].bias))
        self.mid = [m(0), m(2) + (b0.mid[2].num_groups * n,), m(3), m(4) + (b0.mid[4].num_groups * n,)]
        self.out = (cat(lambda b: b.out.weight), cat(lambda b: b.out.bias))
        self.half = b0.time_proj // 2
        self.params = [t for t in self._all() if t is not None]
    def _all(self):
        out = [self.tw1, self.tb1, self.tw2, self.tb2]
        for e in self.emb: out += list(e[:4])
        for r in self.res:
            out += [*r["n1"][:2], *r["c1"], r["tw"], r["tb"], *r["n2"][:2], *r["c2"], *(r["sc"] or (None, None)), *r["ds"]]
        out += [*self.mid[0], *self.mid[1][:2], *self.mid[2], *self.mid[3][:2], *self.out]
        return out
    def conv(self, x, wb, stride=1, pad=1, groups=None):
        return F.conv2d(x, wb[0], wb[1], stride, pad, 1, self.n if groups is None else groups)
    def forward(self, hint, t1000):
        n = self.n; B = hint.shape[0]
        half = self.half
        f = torch.exp(-math.log(10000) * torch.arange(half, device=hint.device, dtype=torch.float32) / half)
        a = t1000.float()[:, None] * f[None]
        t0 = torch.cat([torch.cos(a), torch.sin(a)], -1).to(dt)                       # [B, 128]
        temb = torch.baddbmm(self.tb1[:, None], t0.expand(n, B, -1), self.tw1.transpose(1, 2))   # [n, B, T]
        temb = torch.baddbmm(self.tb2[:, None], F.silu(temb), self.tw2.transpose(1, 2))
        st = F.silu(temb)
        x = hint.to(dt)
        if self.cl: x = x.contiguous(memory_format=torch.channels_last)
        for i, (w, b, gw, gb, G) in enumerate(self.emb):
            x = F.conv2d(x, w, b, 2 if i == 0 else 1, 1, 1, 1 if i == 0 else n)
            x = F.relu(F.group_norm(x, G, gw, gb, 1e-5))
        for r in self.res:
            h = self.conv(F.silu(F.group_norm(x, r["n1"][2], r["n1"][0], r["n1"][1], 1e-6)), r["c1"])
            tp = torch.baddbmm(r["tb"].view(n, 1, -1), st, r["tw"].transpose(1, 2))    # [n, B, co]
            h = h + tp.permute(1, 0, 2).reshape(B, -1, 1, 1)
            h = self.conv(F.silu(F.group_norm(h, r["n2"][2], r["n2"][0], r["n2"][1], 1e-6)), r["c2"])
            x = (self.conv(x, r["sc"], 1, 0) if r["sc"] else x) + h
            x = self.conv(x, r["ds"], 2, 1)
        h = F.group_norm(F.relu(self.conv(x, self.mid[0])), self.mid[1][2], self.mid[1][0], self.mid[1][1], 1e-5)
        x = x + F.group_norm(self.conv(h, self.mid[2]), self.mid[3][2], self.mid[3][0], self.mid[3][1], 1e-5)
        o = self.conv(x, self.out, 2, 0)                                                # [B, n*D, h, w]
        return o.view(B, n, -1, o.shape[-2] * o.shape[-1]).transpose(2, 3)             # [B, n, hw, D]

def lightcontrol():
    torch.manual_seed(1)
    with torch.device(dev):
        brs = nn.ModuleList(ft.ControlNeXt() for _ in range(19))
    hint = (torch.rand(1, 3, 1024, 1024, device=dev) * 2 - 1)
    t1000 = torch.full((1,), 500.0, device=dev)
    gout = torch.randn(1, 19, 4096, 3072, device=dev, dtype=dt)
    r = res.setdefault("lightcontrol", {})
    def eager_autocast():
        with torch.autocast("cuda", dtype=dt):
            o = torch.stack([b(hint.to(dt), t1000) for b in brs], 1)
        o.backward(gout)
    brs16 = nn.ModuleList(ft.ControlNeXt() for _ in range(19)).to(dev, dt)
    def bf16():
        o = torch.stack([b(hint.to(dt), t1000) for b in brs16], 1); o.backward(gout)
    torch.backends.cudnn.benchmark = False
    r["eager_autocast_ms"] = timeit(eager_autocast); print(r, flush=True)
    r["bf16_ms"] = timeit(bf16); print(r, flush=True)
    with torch.no_grad():
        r["bf16_fwd_ms"] = timeit(lambda: [b(hint.to(dt), t1000) for b in brs16])
    from torch.profiler import profile, ProfilerActivity
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        bf16(); torch.cuda.synchronize()
    r["bf16_profile"] = topk(p)
    print(json.dumps(r["bf16_profile"], indent=0), flush=True)
    save()
    g = Grouped(brs)
    def grouped():
        o = g(hint, t1000); o.backward(gout)
    # check grouped == separate (bf16 tolerance)
    with torch.no_grad():
        ref = torch.stack([b(hint.to(dt), t1000) for b in brs16], 1).float()
        got = g(hint, t1000).float()
        r["grouped_relerr"] = float((got - ref).norm() / ref.norm())
    r["grouped_ms"] = timeit(grouped); print(r, flush=True)
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        grouped(); torch.cuda.synchronize()
    r["grouped_profile"] = topk(p)
    save()
    torch.backends.cudnn.benchmark = True
    r["grouped_bench_ms"] = timeit(grouped, 5, 3); print(r, flush=True)
    gcl = Grouped(brs, cl=True)
    def grouped_cl():
        o = gcl(hint, t1000); o.backward(gout)
    r["grouped_cl_bench_ms"] = timeit(grouped_cl, 5, 3); print(r, flush=True)
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        grouped_cl(); torch.cuda.synchronize()
    r["grouped_cl_profile"] = topk(p)
    brs16cl = brs16.to(memory_format=torch.channels_last)
    def bf16cl():
        o = torch.stack([b(hint.to(dt).contiguous(memory_format=torch.channels_last), t1000) for b in brs16cl], 1); o.backward(gout)
    r["bf16_cl_bench_ms"] = timeit(bf16cl, 5, 3); print(r, flush=True)
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        bf16cl(); torch.cuda.synchronize()
    r["bf16_cl_profile"] = topk(p)
    torch.backends.cudnn.benchmark = False

# ---------------------------------------------------------------- B: SDPA backends at the FLUX shape
def sdpa():
    from torch.nn.attention import sdpa_kernel, SDPBackend
    r = res.setdefault("sdpa", {})
    q, k, v = (torch.randn(1, 24, 4608, 128, device=dev, dtype=dt, requires_grad=True) for _ in range(3))
    go = torch.randn(1, 4608, 3072, device=dev, dtype=dt)
    r["default_choice"] = int(torch._fused_sdp_choice(q, k, v))
    for name, be in [("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION)]:
        try:
            with sdpa_kernel([be]):
                r[name + "_fwd_ms"] = timeit(lambda: F.scaled_dot_product_attention(q, k, v), 10, 3)
                def fb():
                    o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
                    o.backward(go)
                r[name + "_fwdbwd_ms"] = timeit(fb, 10, 3)
        except Exception as e:
            r[name + "_error"] = str(e)[:300]
        print(r, flush=True)

# ---------------------------------------------------------------- C: LoRA GEMM forms (forward, no grad)
def lora_gemm():
    r = res.setdefault("lora_gemm", {})
    M = 4608
    shapes = [("qkv", 3072, 9216, 48, 38), ("proj", 3072, 3072, 16, 38), ("mlp0", 3072, 12288, 16, 38), ("mlp2", 12288, 3072, 16, 38),
              ("linear1", 3072, 21504, 64, 38), ("linear2", 15360, 3072, 16, 38)]
    tot = {"base": 0, "current": 0, "aug_copy": 0, "aug_nocopy": 0, "w_view": 0}
    for name, fin, fout, rank, count in shapes:
        x = torch.randn(M, fin, device=dev, dtype=dt); W = torch.randn(fout, fin, device=dev, dtype=dt) * 0.02
        D = torch.randn(rank, fin, device=dev, dtype=dt) * 0.02; U = torch.randn(fout, rank, device=dev, dtype=dt) * 0.02
        b = torch.randn(fout, device=dev, dtype=dt)
        Waug = torch.cat([W, U], 1).contiguous(); xaug = torch.empty(M, fin + rank, device=dev, dtype=dt)
        xaug[:, :fin].copy_(x)
        Wv = Waug[:, :fin]
        def base(): return torch.addmm(b, x, W.t())
        def current():
            acc = torch.addmm(b, torch.mm(x, D.t()), U.t()); return torch.addmm(acc, x, W.t())
        def aug_copy():
            xaug[:, :fin].copy_(x); torch.mm(x, D.t(), out=xaug[:, fin:]); return torch.addmm(b, xaug, Waug.t())
        def aug_nocopy():
            torch.mm(xaug[:, :fin], D.t(), out=xaug[:, fin:]); return torch.addmm(b, xaug, Waug.t())
        def w_view(): return torch.addmm(b, x, Wv.t())
        # correctness of the aug forms
        ref = current().float(); got = aug_copy().float()
        row = {"relerr_aug": float((got - ref).norm() / ref.norm())}
        for fn in ("base", "current", "aug_copy", "aug_nocopy", "w_view"):
            ms = timeit(locals()[fn], 20, 5); row[fn] = ms; tot[fn] += ms * count
        row["tflops_base"] = 2 * M * fin * fout / row["base"] / 1e9
        r[name] = row; print(name, row, flush=True)
    r["per_forward_ms_est"] = tot

# ---------------------------------------------------------------- C2: unfused LoRA forms in generation
def lora_forms():
    """Per adapted layer of one FLUX.1-dev forward at 1024^2 (img 4096, txt 512, single 4608 tokens), each form run
    10x back to back per timing: base GEMM; x2i's current form; N-augmented ([W; D] stacked: u comes out of the
    frozen GEMM as extra columns, then y += k u U^T in place on the strided view); the weight merged per call into a
    scratch weight (W + k U D, then the GEMM); and for mlp0 the same followed by the tanh GELU."""
    r = res.setdefault("lora_forms", {})
    layers = []
    for M, cnt, pre in ((4096, 19, "d_img_"), (512, 19, "d_txt_")):
        layers += [(pre + "qkv", M, 3072, 9216, 48, cnt), (pre + "proj", M, 3072, 3072, 16, cnt),
                   (pre + "mlp0", M, 3072, 12288, 16, cnt), (pre + "mlp2", M, 12288, 3072, 16, cnt)]
    layers += [("s_linear1", 4608, 3072, 21504, 64, 38), ("s_linear2", 4608, 15360, 3072, 16, 38)]
    forms = ("base", "current", "naug", "wmerge", "best")
    tot = {f: 0.0 for f in forms}
    k = 0.8
    for name, M, fin, fout, R, cnt in layers:
        x = torch.randn(M, fin, device=dev, dtype=dt); W = torch.randn(fout, fin, device=dev, dtype=dt) * 0.02
        D = torch.randn(R, fin, device=dev, dtype=dt) * 0.02; U = torch.randn(fout, R, device=dev, dtype=dt) * 0.02
        b = torch.randn(fout, device=dev, dtype=dt)
        S = torch.cat([W, D], 0).contiguous(); bS = torch.cat([b, torch.zeros(R, device=dev, dtype=dt)])
        Wtmp = torch.empty_like(W)
        gelu = name.endswith("mlp0")
        act = (lambda y: F.gelu(y, approximate="tanh")) if gelu else (lambda y: y)
        def base(): return act(torch.addmm(b, x, W.t()))
        def current():
            acc = torch.addmm(b, torch.mm(x, D.t()), U.t(), alpha=k); return act(torch.addmm(acc, x, W.t()))
        def naug():
            y = torch.addmm(bS, x, S.t()); o = y[:, :fout]; o.addmm_(y[:, fout:], U.t(), alpha=k); return act(o)
        def wmerge():
            torch.addmm(W, U, D, alpha=k, out=Wtmp); return act(torch.addmm(b, x, Wtmp.t()))
        ref = act((x.float() @ (W.float() + k * U.float() @ D.float()).t() + b.float()))
        row = {}
        for fn in ("current", "naug", "wmerge"):
            got = locals()[fn]().float(); row["relerr_" + fn] = float((got - ref).norm() / ref.norm())
        fns = {"base": base, "current": current, "naug": naug, "wmerge": wmerge}
        for f, fn in fns.items():
            ms = timeit(lambda: [fn() for _ in range(10)], 10, 3) / 10; row[f] = ms; tot[f] += ms * cnt
        row["best"] = min(row["naug"], row["wmerge"]); tot["best"] += row["best"] * cnt
        r[name] = row; print(name, {a: round(v, 4) for a, v in row.items()}, flush=True)
        del x, W, D, U, S, Wtmp
    tot["overhead_current"] = tot["current"] / tot["base"] - 1
    tot["overhead_naug"] = tot["naug"] / tot["base"] - 1
    tot["overhead_best"] = tot["best"] / tot["base"] - 1
    r["per_forward_ms"] = tot; print(tot, flush=True)

# ---------------------------------------------------------------- D: frozen FLUX fwd+bwd floor (eager), flash vs cudnn
def frozen():
    from torch.nn.attention import sdpa_kernel, SDPBackend
    r = res.setdefault("frozen", {})
    torch.manual_seed(0)
    torch.set_default_dtype(dt)
    with torch.device(dev):
        flux = ft.Flux().eval().requires_grad_(False)
    torch.set_default_dtype(torch.float32)
    side, T, N = 64, 512, 4096
    g = torch.Generator(device="cpu").manual_seed(0)
    x0 = torch.randn(1, N, 64, generator=g).to(dev, dt)
    ehs = torch.randn(1, T, 4096, generator=g).to(dev, dt)
    pooled = torch.randn(1, 768, generator=g).to(dev, dt)
    ids = torch.zeros(T + N, 3, device=dev)
    ids[T:, 1] = torch.arange(N, device=dev).div(side, rounding_mode="floor").float()
    ids[T:, 2] = (torch.arange(N, device=dev) % side).float()
    cos, sin = ft.rope_tables(ids, (16, 56, 56))
    guid = torch.full((1,), 3.5, device=dev); t = torch.full((1,), 0.5, device=dev)
    def fwd():
        with torch.no_grad(): flux(x0, ehs, pooled, t, guid, cos, sin)
    def fwdbwd():
        x = x0.clone().requires_grad_(True)
        v = flux(x, ehs, pooled, t, guid, cos, sin)
        v.float().square().mean().backward()
    for name, bes in [("default", None), ("flash", [SDPBackend.FLASH_ATTENTION]), ("cudnn", [SDPBackend.CUDNN_ATTENTION])]:
        try:
            if bes is None:
                r[name + "_fwd_ms"] = timeit(fwd, 3, 1); r[name + "_fwdbwd_ms"] = timeit(fwdbwd, 3, 1)
            else:
                with sdpa_kernel(bes):
                    r[name + "_fwd_ms"] = timeit(fwd, 3, 1); r[name + "_fwdbwd_ms"] = timeit(fwdbwd, 3, 1)
        except Exception as e:
            r[name + "_error"] = str(e)[:300]
        print(r, flush=True); save()
    # eager LoRA (as the baseline) fwd+bwd with flash vs cudnn
    params = ft.add_lora(flux, 16, 16)
    def lorafb():
        with torch.autocast("cuda", dtype=dt):
            v = flux(x0, ehs, pooled, t, guid, cos, sin)
        v.float().square().mean().backward()
        for p_ in params: p_.grad = None
    for name, bes in [("lora_default", None), ("lora_flash", [SDPBackend.FLASH_ATTENTION]), ("lora_cudnn", [SDPBackend.CUDNN_ATTENTION])]:
        try:
            if bes is None: r[name + "_ms"] = timeit(lorafb, 3, 1)
            else:
                with sdpa_kernel(bes): r[name + "_ms"] = timeit(lorafb, 3, 1)
        except Exception as e:
            r[name + "_error"] = str(e)[:300]
        print(r, flush=True); save()

res["device"] = torch.cuda.get_device_name(); res["torch"] = torch.__version__; res["cudnn"] = torch.backends.cudnn.version()
section("sdpa", sdpa)
section("lora_gemm", lora_gemm)
section("lora_forms", lora_forms)
section("lightcontrol", lightcontrol)
section("frozen", frozen)
save()
