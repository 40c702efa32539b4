"""FLUX.1 (BFL's math) in plain PyTorch, shared by the PyTorch baselines of the benchmarks (x2i_step.py,
finetune_step.py): AdaLN, QK-RMSNorm, 3-axis RoPE, joint attention text-first, GELU-tanh; one module per part.
The sizes default to FLUX.1-dev (D = 3072, 24 heads of 128, MLP 12288, 19 double / 38 single blocks); smaller ones
are constructor arguments (the baselines' --tiny CPU checks).
Also: LoRA on the fused BFL layers as PEFT runs it on diffusers' modules (LoraLinear), and LightControl's
ControlNeXt branch (x2i-method.md §5.1) in plain PyTorch.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

D, H, HD, MLP = 3072, 24, 128, 12288


class RMSNorm(nn.Module):
    def __init__(self, d):
        super().__init__(); self.scale = nn.Parameter(torch.ones(d))
    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype) * self.scale


def rope_tables(ids, axes=(16, 56, 56)):             # ids [L, 3] -> cos, sin [L, HD/2]
    ang = torch.cat([ids[:, i:i + 1].double() / (10000 ** (torch.arange(0, d, 2, device=ids.device, dtype=torch.float64) / d))
                     for i, d in enumerate(axes)], -1)
    return ang.cos().float(), ang.sin().float()


def rope(x, cos, sin):                               # adjacent pairs (2m, 2m+1)
    xf = x.float(); x0, x1 = xf[..., 0::2], xf[..., 1::2]
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), -1).flatten(-2).type_as(x)


def heads(t, h=H):                                   # [B, L, 3D] -> 3 x [B, H, L, HD]
    B, L, _ = t.shape
    return t.view(B, L, 3, h, -1).permute(2, 0, 3, 1, 4)


def modulate(x, shift, scale):
    return F.layer_norm(x, (x.shape[-1],), eps=1e-6) * (1 + scale) + shift


def timestep_embedding(t, dim=256, t_dtype=None):     # t in [0, 1] (x 1000 inside, as BFL)
    """t_dtype None: t·1000 in float32 (exact); a dtype: t rounded to it and ×1000 in it before the float32
    sinusoids, as BFL and diffusers do with the model's dtype (bf16: t = 0.75 -> 752, guidance 3.5 -> 3504)."""
    half = dim // 2
    f = torch.exp(-math.log(10000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    t1000 = 1000.0 * t.float() if t_dtype is None else (t.to(t_dtype) * 1000).float()
    args = t1000[:, None] * f[None]
    return torch.cat([torch.cos(args), torch.sin(args)], -1)


class MLPEmbedder(nn.Module):
    def __init__(self, i, h):
        super().__init__(); self.in_layer = nn.Linear(i, h); self.out_layer = nn.Linear(h, h)
    def forward(self, x):
        return self.out_layer(F.silu(self.in_layer(x)))


class Stream(nn.Module):
    def __init__(self, d=D, h=H, mlp=MLP):
        super().__init__()
        self.mod = nn.Linear(d, 6 * d); self.qkv = nn.Linear(d, 3 * d); self.qn = RMSNorm(d // h); self.kn = RMSNorm(d // h)
        self.proj = nn.Linear(d, d); self.mlp = nn.Sequential(nn.Linear(d, mlp), nn.GELU(approximate="tanh"), nn.Linear(mlp, d))


class DoubleBlock(nn.Module):
    def __init__(self, d=D, h=H, mlp=MLP):
        super().__init__(); self.h = h; self.img = Stream(d, h, mlp); self.txt = Stream(d, h, mlp)
    def forward(self, img, txt, vec, cos, sin, taps=None):
        qs, ks, vs, mods = [], [], [], []
        for st, x in ((self.txt, txt), (self.img, img)):
            m = st.mod(F.silu(vec))[:, None].chunk(6, -1); mods.append(m)
            q, k, v = heads(st.qkv(modulate(x, m[0], m[1])), self.h)
            qs.append(st.qn(q)); ks.append(st.kn(k)); vs.append(v)
        q, k, v = torch.cat(qs, 2), torch.cat(ks, 2), torch.cat(vs, 2)
        o = F.scaled_dot_product_attention(rope(q, cos, sin), rope(k, cos, sin), v).transpose(1, 2).flatten(2)
        Tn = txt.shape[1]
        out = []
        for kind, st, x, ao, m in (("txt", self.txt, txt, o[:, :Tn], mods[0]), ("img", self.img, img, o[:, Tn:], mods[1])):
            pr = st.proj(ao)
            if taps is not None: taps[kind].append(pr)      # the official hook: after to_out / to_add_out, pre-gate
            x = x + m[2] * pr
            out.append(x + m[5] * st.mlp(modulate(x, m[3], m[4])))
        return out[1], out[0]


class SingleBlock(nn.Module):
    def __init__(self, d=D, h=H, mlp=MLP):
        super().__init__()
        self.d, self.h, self.mlp_dim = d, h, mlp
        self.mod = nn.Linear(d, 3 * d); self.l1 = nn.Linear(d, 3 * d + mlp); self.l2 = nn.Linear(d + mlp, d)
        self.qn = RMSNorm(d // h); self.kn = RMSNorm(d // h)
    def forward(self, x, vec, cos, sin, taps=None):
        sh, sc, g = self.mod(F.silu(vec))[:, None].chunk(3, -1)
        qkv, mlp = self.l1(modulate(x, sh, sc)).split([3 * self.d, self.mlp_dim], -1)
        q, k, v = heads(qkv, self.h)
        o = F.scaled_dot_product_attention(rope(self.qn(q), cos, sin), rope(self.kn(k), cos, sin), v).transpose(1, 2).flatten(2)
        if taps is not None: taps["single"].append(o)       # the raw attention output, text first
        return x + g * self.l2(torch.cat((o, F.gelu(mlp, approximate="tanh")), -1))


class Flux(nn.Module):
    """FLUX.1; forward(img, txt, pooled, t, g, cos, sin, taps=None, control=None, checkpoint=False, t_dtype=None):
    control(i, img) -> a residual added to the image stream after double block i (LightControl) or None;
    checkpoint: torch.utils.checkpoint per block (use_reentrant=False), as diffusers' gradient checkpointing;
    t_dtype: where t·1000 and g·1000 are computed (timestep_embedding; None: float32, exact)."""
    def __init__(self, d=D, h=H, mlp=MLP, depth=19, depth_single=38, in_channels=64, joint_dim=4096, pooled_dim=768):
        super().__init__()
        self.img_in = nn.Linear(in_channels, d); self.txt_in = nn.Linear(joint_dim, d)
        self.time_in = MLPEmbedder(256, d); self.guidance_in = MLPEmbedder(256, d); self.vector_in = MLPEmbedder(pooled_dim, d)
        self.double_blocks = nn.ModuleList(DoubleBlock(d, h, mlp) for _ in range(depth))
        self.single_blocks = nn.ModuleList(SingleBlock(d, h, mlp) for _ in range(depth_single))
        self.final_mod = nn.Linear(d, 2 * d); self.final = nn.Linear(d, in_channels)
    def forward(self, img, txt, pooled, t, g, cos, sin, taps=None, control=None, checkpoint=False, t_dtype=None):
        vec = (self.time_in(timestep_embedding(t, t_dtype=t_dtype).to(img.dtype))
               + self.guidance_in(timestep_embedding(g, t_dtype=t_dtype).to(img.dtype)) + self.vector_in(pooled))
        img, txt = self.img_in(img), self.txt_in(txt)
        ck = checkpoint and torch.is_grad_enabled()
        for i, b in enumerate(self.double_blocks):
            if ck:
                img, txt = torch.utils.checkpoint.checkpoint(b, img, txt, vec, cos, sin, use_reentrant=False)
            else:
                img, txt = b(img, txt, vec, cos, sin, taps)
            if control is not None:
                r = control(i, img)
                if r is not None:
                    img = img + r
        x = torch.cat((txt, img), 1)
        for b in self.single_blocks:
            x = torch.utils.checkpoint.checkpoint(b, x, vec, cos, sin, use_reentrant=False) if ck else b(x, vec, cos, sin, taps)
        shift, scale = self.final_mod(F.silu(vec))[:, None].chunk(2, -1)
        return self.final(modulate(x[:, txt.shape[1]:], shift, scale))


# ---------------------------------------------------------------- LoRA, as PEFT runs it on diffusers' FLUX modules
class LoraLinear(nn.Module):
    """A frozen BFL Linear with one PEFT LoRA per diffusers module on its row block: BFL's qkv = diffusers' to_q /
    to_k / to_v (3 blocks of D rows), linear1 = to_q / to_k / to_v / proj_mlp; other layers one block of all rows.
    y = W x + b + cat_j(B_j(A_j x)) * alpha / r, each A_j / B_j its own bias-free nn.Linear (dropout 0), run eagerly
    one after the other as PEFT's lora.Linear.forward does (A: kaiming-uniform(a=√5), B: zeros, PEFT's init)."""
    def __init__(self, base, blocks, rank=16, alpha=16, dtype=None):
        super().__init__()
        self.base = base
        self.blocks = list(blocks)
        self.scaling = alpha / rank
        dev = base.weight.device
        self.lora_A = nn.ModuleList(nn.Linear(base.in_features, rank, bias=False, device=dev, dtype=dtype) for _ in self.blocks)
        self.lora_B = nn.ModuleList(nn.Linear(rank, n, bias=False, device=dev, dtype=dtype) for n in self.blocks)
        for b in self.lora_B:
            nn.init.zeros_(b.weight)
        self.merged = False
    def forward(self, x):
        y = self.base(x)
        if self.merged:
            return y
        d = [B(A(x)) * self.scaling for A, B in zip(self.lora_A, self.lora_B)]
        return y + (torch.cat(d, -1) if len(d) > 1 else d[0])
    @torch.no_grad()
    def merge(self):                                   # PEFT's merge_and_unload: W += scale * B A, block by block
        row = 0
        for A, B, n in zip(self.lora_A, self.lora_B, self.blocks):
            self.base.weight[row:row + n] += (self.scaling * (B.weight.float() @ A.weight.float())).to(self.base.weight.dtype)
            row += n
        self.merged = True


def add_lora(flux, rank=16, alpha=16, dtype=None):
    """PEFT-style adapters on the default FLUX targets (lib/models/lora.ts defaultLoraTargets): double blocks
    to_q/k/v (img qkv), add_q/k/v_proj (txt qkv), to_out.0 / to_add_out (proj), ff.net.0.proj / ff.net.2 and
    ff_context.* (mlp.0 / mlp.2); single blocks to_q/k/v + proj_mlp (linear1), proj_out (linear2). The LoRA
    parameters, in `dtype` (default float32, as PEFT's autocast_adapter_dtype leaves them)."""
    params = []
    def wrap(parent, name, blocks):
        w = LoraLinear(getattr(parent, name), blocks, rank, alpha, dtype or torch.float32)
        w.lora_A.requires_grad_(True); w.lora_B.requires_grad_(True)
        setattr(parent, name, w)
        params.extend(w.lora_A.parameters()); params.extend(w.lora_B.parameters())
        return w
    for b in flux.double_blocks:
        for st in (b.img, b.txt):
            d = st.qkv.in_features
            wrap(st, "qkv", [d, d, d])
            wrap(st, "proj", [st.proj.out_features])
            wrap(st.mlp, "0", [st.mlp[0].out_features])
            wrap(st.mlp, "2", [st.mlp[2].out_features])
    for b in flux.single_blocks:
        wrap(b, "l1", [b.d, b.d, b.d, b.mlp_dim])
        wrap(b, "l2", [b.d])
    return params


def lora_modules(flux):
    return [m for m in flux.modules() if isinstance(m, LoraLinear)]


# ---------------------------------------------------------------- LightControl (x2i-method.md §5.1)
class ResnetBlock2D(nn.Module):                      # diffusers' ResnetBlock2D (default args, output_scale_factor 1)
    def __init__(self, cin, cout, temb, groups):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=1e-6); self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb, cout)
        self.norm2 = nn.GroupNorm(groups, cout, eps=1e-6); self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None
    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.conv_shortcut(x) if self.conv_shortcut is not None else x) + h


class ControlNeXt(nn.Module):
    """One LightControl branch (the official ControlNeXtModel, default args): hint [B, 3, H, W] in [-1, 1] and
    t' = 1000 * timestep -> tokens [B, (H/16)(W/16), D]."""
    def __init__(self, in_channels=(128, 128), out_channels=(128, 256), groups=(4, 8), time_embed_dim=256,
                 embedding_channels=(64, 64, 128), control_out=D, time_proj=128, emb_groups=2, mid_groups=8):
        super().__init__()
        self.time_proj = time_proj
        self.time_embedding = nn.Sequential(nn.Linear(time_proj, time_embed_dim), nn.SiLU(), nn.Linear(time_embed_dim, time_embed_dim))
        e0, e1, e2 = embedding_channels
        self.embedding = nn.Sequential(
            nn.Conv2d(3, e0, 3, stride=2, padding=1), nn.GroupNorm(emb_groups, e0), nn.ReLU(),
            nn.Conv2d(e0, e1, 3, padding=1), nn.GroupNorm(emb_groups, e1), nn.ReLU(),
            nn.Conv2d(e1, e2, 3, padding=1), nn.GroupNorm(emb_groups, e2), nn.ReLU())
        self.down_res = nn.ModuleList(ResnetBlock2D(in_channels[i], out_channels[i], time_embed_dim, groups[i]) for i in range(2))
        self.down_sample = nn.ModuleList(nn.Conv2d(out_channels[i], out_channels[i], 3, stride=2, padding=1) for i in range(2))
        c = out_channels[1]
        self.mid = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.GroupNorm(mid_groups, c),
                                 nn.Conv2d(c, c, 3, padding=1), nn.GroupNorm(mid_groups, c))
        self.out = nn.Conv2d(c, control_out, 2, stride=2)
    def forward(self, hint, t1000):
        half = self.time_proj // 2                     # diffusers Timesteps(128, flip_sin_to_cos=True, shift 0)
        f = torch.exp(-math.log(10000) * torch.arange(half, device=hint.device, dtype=torch.float32) / half)
        a = t1000.float()[:, None] * f[None]
        temb = self.time_embedding(torch.cat([torch.cos(a), torch.sin(a)], -1).to(hint.dtype))
        x = self.embedding(hint)
        for res, down in zip(self.down_res, self.down_sample):
            x = down(res(x, temb))
        x = x + self.mid(x)
        return self.out(x).flatten(2).transpose(1, 2)
