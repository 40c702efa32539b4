/** x2i.AlignNet: X2I's bridge from the MLLM's stacked hidden states to FLUX's conditioning (native/models/alignnet.cc). */
import fs from 'node:fs';
import path from 'node:path';
import { X2IError, invalidArg, nativeCall } from '../core/errors.js';
import { loadSafetensors, loadTorchCheckpoint, saveSafetensors } from '../core/io.js';
import { addon } from '../core/native.js';
import type { NativeAlignNet, NativeTensor } from '../core/addon.js';
import { NativeModel, requireNonEmpty } from '../core/model.js';
import { ConfigReader } from '../core/config.js';
import { afterAbortCheck, defaultDtype, type LoadingOptions } from './pretrained.js';
import { resolveModelPath } from '../core/hub.js';
import { Tensor, type DType } from '../core/tensor.js';
import { ProcessGroup } from '../train/distributed.js';

export interface AlignNetLoadOptions extends LoadingOptions {
  /** 'cpu' (default) or 'cuda[:N]'. */
  device?: string;
  /** Default: 'bfloat16' on CUDA, 'float32' on the CPU. */
  dtype?: DType;
  /** `norm_eps` of the LayerNorm (official checkpoints: 1e-6). */
  config?: { norm_eps?: number };
}

export interface AlignNetInfo {
  /** 'conv': Conv2d layer mixer (Qwen2.5-VL, MiniCPM-o, InternVL-4B); 'scale': per-layer scale
   * (InternVL-1B); 'mean': plain mean over layers. */
  variant: 'conv' | 'scale' | 'mean';
  /** C = MLLM layers + 1 (0 for 'mean': any). */
  layers: number;
  inputDim: number;
  sequenceDim: number;
  pooledDim: number;
  kernelSize: number;
}

/** The weights file of a folder (official `.bin`, ComfyUI pickle, safetensors). */
function resolveFile(p: string): string {
  if (!fs.existsSync(p)) throw new X2IError(`${p}: no such file or folder`, 'ERR_FILE_NOT_FOUND');
  if (!fs.statSync(p).isDirectory()) return p;
  const files = fs.readdirSync(p);
  for (const name of ['diffusion_pytorch_model.safetensors', 'alignnet.safetensors', 'model.safetensors',
    'diffusion_pytorch_model.bin', 'pytorch_model.bin'])
    if (files.includes(name)) return path.join(p, name);
  const any = files.filter((f) => f.endsWith('.safetensors') || f.endsWith('.bin') || f.endsWith('.pt') || f.endsWith('.pth'));
  if (any.length === 1) return path.join(p, any[0]);
  throw new X2IError(`${p}: expected one AlignNet weights file (.safetensors, .bin, .pt), found ${any.join(', ') || 'none'}`,
    'ERR_FILE_NOT_FOUND');
}

/** Official names: drops DDP's `module.` and ComfyUI's `state_dict.` prefixes, ignores ComfyUI's config. */
function canonical(w: Record<string, Tensor>): Record<string, Tensor> {
  const out: Record<string, Tensor> = {};
  for (const [k, t] of Object.entries(w)) {
    if (k.startsWith('config.')) { t.dispose(); continue; }
    out[k.replace(/^state_dict\./, '').replace(/^module\./, '')] = t;
  }
  return out;
}


export class AlignNet extends NativeModel<NativeAlignNet> {
  readonly info: Readonly<AlignNetInfo>;
  readonly device: string;
  readonly dtype: DType;

  private constructor(h: NativeAlignNet) {
    super(h, 'AlignNet');
    const { device, dtype, ...info } = h.info();
    this.info = Object.freeze(info);
    this.device = device;
    this.dtype = dtype as DType;
  }

  /**
   * Loads an official X2I checkpoint (`diffusion_pytorch_model.bin`, a torch.save zip with `module.` prefixes),
   * a ComfyUI `{config, state_dict}` pickle, or safetensors; a folder holding one of them (or a Hugging Face repo id
   * in the local cache: resolveModelPath). The variant and all
   * sizes come from the weights.
   */
  static async fromPretrained(p: string, opts: AlignNetLoadOptions = {}): Promise<AlignNet> {
    if (typeof p !== 'string') throw invalidArg('path', 'a folder or file path', p);
    const { device, dtype } = defaultDtype(opts);
    const file = resolveFile(resolveModelPath(p, opts));
    const eps = new ConfigReader({ ...opts.config }, 'options.config').eps('norm_eps', 1e-6);
    const load = { device, dtype, signal: opts.signal, onProgress: opts.onProgress };
    const raw = file.endsWith('.safetensors') ? await loadSafetensors(file, load) : await loadTorchCheckpoint(file, load);
    const w = canonical(raw);
    try {
      const Native = addon().NativeAlignNet;
      const handles = Object.fromEntries(Object.entries(w).map(([k, t]) => [k, t.handle]));
      return new AlignNet(afterAbortCheck(await nativeCall(() => Native.load(handles, eps, file)), opts.signal));
    } finally {
      for (const t of Object.values(w)) t.dispose();
    }
  }


  /**
   * An AlignNet ('conv' variant, as X2I's Qwen2.5-VL-7B checkpoint) of the given sizes with random weights drawn on
   * the device: benchmarks and tests without a checkpoint. Defaults: Qwen2.5-VL-7B → FLUX.1 (layers 29, inputDim
   * 3584, sequenceDim 4096, pooledDim 768, kernelSize 5 as the official Conv2d).
   */
  static async fromConfig(config: Partial<Omit<AlignNetInfo, 'variant'>> & { normEps?: number } = {},
    opts: { device?: string; dtype?: DType; seed?: number } = {}): Promise<AlignNet> {
    const r = new ConfigReader({ layers: 29, inputDim: 3584, sequenceDim: 4096, pooledDim: 768, kernelSize: 5, ...config }, 'config');
    const kernelSize = r.int('kernelSize', { max: 1023 });
    r.check(kernelSize % 2 === 1, `field 'kernelSize' must be odd, found ${kernelSize}`);
    const sizes = { layers: r.layers('layers'), inputDim: r.int('inputDim'), sequenceDim: r.int('sequenceDim'),
      pooledDim: r.int('pooledDim'), kernelSize };
    const eps = r.eps('normEps', 1e-6);
    const { device, dtype } = defaultDtype(opts);
    const Native = addon().NativeAlignNet;
    return new AlignNet(await nativeCall(() => Native.random(sizes, eps, device, dtype, opts.seed ?? 0)));
  }

  /** hiddenStates [B, C, S, H] (embeddings + every MLLM layer) → encoderHiddenStates [B, S, Dseq] (the T5
   * replacement) and pooledProjections [B, Dpooled] (the CLIP replacement, mean over all S tokens). */
  async forward(hiddenStates: Tensor): Promise<{ encoderHiddenStates: Tensor; pooledProjections: Tensor }> {
    if (!(hiddenStates instanceof Tensor)) throw invalidArg('hiddenStates', 'a Tensor', hiddenStates);
    requireNonEmpty('hiddenStates', hiddenStates);
    const x = hiddenStates.handle;
    const r = await this.call((h) => h.forward(x));
    return { encoderHiddenStates: new Tensor(r.encoderHiddenStates), pooledProjections: new Tensor(r.pooledProjections) };
  }

  /** Training: accumulates d⟨grad, output⟩ / d weights for this input (the forward is recomputed from the
   * float32 master weights). */
  async backward(hiddenStates: Tensor, grad: { encoderHiddenStates: Tensor; pooledProjections: Tensor }): Promise<void> {
    if (!(hiddenStates instanceof Tensor)) throw invalidArg('hiddenStates', 'a Tensor', hiddenStates);
    requireNonEmpty('hiddenStates', hiddenStates);
    if (!grad || !(grad.encoderHiddenStates instanceof Tensor) || !(grad.pooledProjections instanceof Tensor))
      throw invalidArg('grad', '{ encoderHiddenStates: Tensor, pooledProjections: Tensor }', grad);
    const [x, gs, gp] = [hiddenStates.handle, grad.encoderHiddenStates.handle, grad.pooledProjections.handle];
    await this.call((h) => h.backward(x, gs, gp));
  }

  /** AdamW (decoupled weight decay) on the float32 masters with the accumulated (averaged) gradients, after
   * clipping their global norm; returns the norm before clipping. With `opts.group` (data parallel), the
   * average is over the micro-batches of every rank (one all-reduce), so every rank takes the same step. */
  async optimizerStep(opts: { lr?: number; beta1?: number; beta2?: number; eps?: number; weightDecay?: number;
    maxGradNorm?: number; group?: ProcessGroup } = {}): Promise<number> {
    const { group, ...o } = opts;
    const g = group ? ProcessGroup.handleOf(group) : undefined;
    return this.call((h) => h.optimizerStep(o, g));
  }

  /** `root`'s weights (float32 masters) on every rank of `group`. */
  async broadcastWeights(group: ProcessGroup, root = 0): Promise<void> {
    const g = ProcessGroup.handleOf(group);
    await this.call((h) => h.broadcastWeights(g, root));
  }

  /** The optimizer state as tensors (step, float32 masters, first and second moments); with `restore`, sets it. */
  trainingState(restore?: { step: number; master: Record<string, Tensor>; expAvg: Record<string, Tensor>;
    expAvgSq: Record<string, Tensor> }): { step: number; master: Record<string, Tensor>; expAvg: Record<string, Tensor>;
    expAvgSq: Record<string, Tensor> } {
    const handles = (r: Record<string, Tensor>) => Object.fromEntries(Object.entries(r).map(([k, t]) => [k, t.handle]));
    const arg = restore ? { step: restore.step, master: handles(restore.master), expAvg: handles(restore.expAvg),
      expAvgSq: handles(restore.expAvgSq) } : undefined;
    const st = this.native().trainingState(arg);
    const wrap = (r: Record<string, NativeTensor>) => Object.fromEntries(Object.entries(r).map(([k, h]) => [k, new Tensor(h)]));
    return { step: st.step, master: wrap(st.master), expAvg: wrap(st.expAvg), expAvgSq: wrap(st.expAvgSq) };
  }

  /** Saves the weights as safetensors under the official names (loadable here and, after prefixing nothing,
   * by the official Python code's state_dict). */
  async save(file: string, metadata: Record<string, string> = {}): Promise<void> {
    const w = Object.fromEntries(Object.entries(this.native().weights()).map(([k, h]) => [k, new Tensor(h)]));
    try {
      await saveSafetensors(file, w, { format: 'pt', 'x2i.model': 'AlignNet', 'x2i.variant': this.info.variant, ...metadata });
    } finally {
      for (const t of Object.values(w)) t.dispose();
    }
  }

}
