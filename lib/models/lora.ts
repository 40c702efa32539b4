/**
 * LoRA files for FLUX.1 transformers: the layouts FLUX LoRAs are shared in, read onto the native adapter parts
 * (native/models/lora.h: a part is a low-rank pair on a block of output rows of one BFL-named linear layer), and the
 * diffusers/PEFT layout written back.
 *
 * - diffusers / PEFT: `transformer.<module>.lora_A.weight` / `.lora_B.weight` (also `base_model.model.` or no prefix,
 *   `.lora.down` / `.lora.up`, `.lora_A.<adapter>.weight`); rank and alpha from the safetensors metadata
 *   `lora_adapter_metadata` (peft's LoraConfig, keys prefixed `transformer.`), an `adapter_config.json` beside the
 *   file, or `<module>.alpha` tensors; without any, alpha = rank (scale 1) as diffusers does.
 * - BFL names with lora_A / lora_B (ComfyUI, ai-toolkit): `[diffusion_model.]double_blocks.0.img_attn.qkv.lora_A.weight`.
 * - kohya / sd-scripts: `lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight` / `.lora_up.weight` / `.alpha`
 *   (scale alpha / rank); fused qkv and linear1 adapters stay fused (one part over all rows: the same ΔW as their
 *   split onto q/k/v/mlp). `lora_transformer_<diffusers module>` keys are read as well.
 * - XLabs: `double_blocks.N.processor.{qkv,proj}_lora{1,2}.{down,up}.weight`, `single_blocks.N.processor.{qkv,proj}_lora.*`
 *   (scale 1).
 * Every key must be understood: an unknown or unmatched key is an error naming it.
 */
import fs from 'node:fs';
import path from 'node:path';
import { X2IError } from '../core/errors.js';
import { Tensor } from '../core/tensor.js';

/** One low-rank pair on rows [row, row + B.rows) of a BFL-named layer: ΔW = scale · B A. */
export interface LoraPart {
  target: string;
  row: number;
  A: Tensor;
  B: Tensor;
  /** alpha / rank. */
  scale: number;
}

/** The sizes LoRA mapping needs from a FLUX config. */
export interface LoraModelShape {
  hidden: number;
  depth: number;
  depthSingle: number;
  guidance: boolean;
}

interface ModuleRows {
  target: string;
  row: number;
  rows: number;
}

/** The BFL linear layers of a FLUX transformer (the names native/models/lora.cc linears() knows). */
export function fluxLinearNames(s: LoraModelShape): string[] {
  const out = ['img_in', 'txt_in', 'time_in.in_layer', 'time_in.out_layer', 'vector_in.in_layer', 'vector_in.out_layer',
    'final_layer.linear', 'final_layer.adaLN_modulation.1'];
  if (s.guidance) out.push('guidance_in.in_layer', 'guidance_in.out_layer');
  for (let i = 0; i < s.depth; i++)
    for (const side of ['img', 'txt'])
      for (const l of ['_mod.lin', '_attn.qkv', '_attn.proj', '_mlp.0', '_mlp.2']) out.push(`double_blocks.${i}.${side}${l}`);
  for (let i = 0; i < s.depthSingle; i++)
    for (const l of ['linear1', 'linear2', 'modulation.lin']) out.push(`single_blocks.${i}.${l}`);
  return out;
}

/** diffusers module name → the BFL layer rows it is (norm_out.linear: two pieces, its halves swapped). */
export function diffusersModules(s: LoraModelShape): Map<string, ModuleRows[]> {
  const h = s.hidden, f = 4 * h;
  const m = new Map<string, ModuleRows[]>();
  const one = (name: string, target: string, row = 0, rows = 0) => m.set(name, [{ target, row, rows }]);
  one('x_embedder', 'img_in');
  one('context_embedder', 'txt_in');
  one('time_text_embed.timestep_embedder.linear_1', 'time_in.in_layer');
  one('time_text_embed.timestep_embedder.linear_2', 'time_in.out_layer');
  if (s.guidance) {
    one('time_text_embed.guidance_embedder.linear_1', 'guidance_in.in_layer');
    one('time_text_embed.guidance_embedder.linear_2', 'guidance_in.out_layer');
  }
  one('time_text_embed.text_embedder.linear_1', 'vector_in.in_layer');
  one('time_text_embed.text_embedder.linear_2', 'vector_in.out_layer');
  one('proj_out', 'final_layer.linear');
  m.set('norm_out.linear', [{ target: 'final_layer.adaLN_modulation.1', row: h, rows: h },
    { target: 'final_layer.adaLN_modulation.1', row: 0, rows: h }]);
  for (let i = 0; i < s.depth; i++) {
    const p = `transformer_blocks.${i}.`, q = `double_blocks.${i}.`;
    ['to_q', 'to_k', 'to_v'].forEach((n, j) => one(`${p}attn.${n}`, `${q}img_attn.qkv`, j * h, h));
    ['add_q_proj', 'add_k_proj', 'add_v_proj'].forEach((n, j) => one(`${p}attn.${n}`, `${q}txt_attn.qkv`, j * h, h));
    one(`${p}attn.to_out.0`, `${q}img_attn.proj`);
    one(`${p}attn.to_add_out`, `${q}txt_attn.proj`);
    one(`${p}ff.net.0.proj`, `${q}img_mlp.0`);
    one(`${p}ff.net.2`, `${q}img_mlp.2`);
    one(`${p}ff_context.net.0.proj`, `${q}txt_mlp.0`);
    one(`${p}ff_context.net.2`, `${q}txt_mlp.2`);
    one(`${p}norm1.linear`, `${q}img_mod.lin`);
    one(`${p}norm1_context.linear`, `${q}txt_mod.lin`);
  }
  for (let i = 0; i < s.depthSingle; i++) {
    const p = `single_transformer_blocks.${i}.`, q = `single_blocks.${i}.`;
    ['to_q', 'to_k', 'to_v'].forEach((n, j) => one(`${p}attn.${n}`, `${q}linear1`, j * h, h));
    one(`${p}proj_mlp`, `${q}linear1`, 3 * h, f);
    one(`${p}proj_out`, `${q}linear2`);
    one(`${p}norm.linear`, `${q}modulation.lin`);
  }
  return m;
}

/** The modules FLUX LoRAs are trained on by default (diffusers' training scripts and the X2I recipe): attention
 * q/k/v/out of both streams, both feed-forward layers of both streams, the single blocks' q/k/v, proj_mlp and
 * proj_out. Not the modulations, embedders or the final layer. */
export function defaultLoraTargets(s: LoraModelShape): string[] {
  const out: string[] = [];
  for (let i = 0; i < s.depth; i++)
    for (const n of ['attn.to_q', 'attn.to_k', 'attn.to_v', 'attn.to_out.0', 'attn.add_q_proj', 'attn.add_k_proj',
      'attn.add_v_proj', 'attn.to_add_out', 'ff.net.0.proj', 'ff.net.2', 'ff_context.net.0.proj', 'ff_context.net.2'])
      out.push(`transformer_blocks.${i}.${n}`);
  for (let i = 0; i < s.depthSingle; i++)
    for (const n of ['attn.to_q', 'attn.to_k', 'attn.to_v', 'proj_mlp', 'proj_out']) out.push(`single_transformer_blocks.${i}.${n}`);
  return out;
}

/** Modules matching name patterns: a plain string matches a module name exactly or as its dotted suffix
 * (`to_q` matches `transformer_blocks.3.attn.to_q`); a RegExp is tested against the full name. */
export function matchModules(s: LoraModelShape, patterns: (string | RegExp)[]): string[] {
  const all = [...diffusersModules(s).keys()];
  const out = new Set<string>();
  for (const p of patterns) {
    const hit = all.filter((n) => typeof p === 'string' ? n === p || n.endsWith(`.${p}`) : p.test(n));
    if (hit.length === 0)
      throw new X2IError(`LoRA target ${String(p)} matches no linear layer of this transformer`, 'ERR_INVALID_ARG');
    hit.forEach((n) => out.add(n));
  }
  return all.filter((n) => out.has(n));
}

type Kind = 'A' | 'B' | 'alpha';
interface Parsed {
  format: 'diffusers' | 'bfl' | 'kohya' | 'xlabs';
  module: string;
  kind: Kind;
}

/** What a key is, or null (an unknown key). `kohyaNames` maps underscore names to BFL or diffusers names. */
function parseKey(key: string, kohya: Map<string, { name: string; diffusers: boolean }>): Parsed | null {
  let k = key;
  let m = /^lora_(unet|transformer)_(.+?)\.(lora_down\.weight|lora_up\.weight|alpha)$/.exec(k);
  if (m) {
    const hit = kohya.get(`${m[1]}:${m[2]}`);
    if (!hit) return null;
    const kind: Kind = m[3] === 'alpha' ? 'alpha' : m[3].startsWith('lora_down') ? 'A' : 'B';
    return { format: hit.diffusers ? 'diffusers' : 'kohya', module: hit.name, kind };
  }
  k = k.replace(/^(diffusion_model\.|model\.diffusion_model\.)/, '');
  m = /^(double_blocks\.\d+|single_blocks\.\d+)\.processor\.(qkv|proj)_lora(1|2)?\.(down|up)\.weight$/.exec(k);
  if (m) {
    const single = m[1].startsWith('single');
    if (single === (m[3] !== undefined)) return null;
    const side = m[3] === '2' ? 'txt' : 'img';
    const module = single ? `${m[1]}.${m[2] === 'qkv' ? 'linear1' : 'linear2'}` : `${m[1]}.${side}_attn.${m[2]}`;
    return { format: 'xlabs', module, kind: m[4] === 'down' ? 'A' : 'B' };
  }
  k = k.replace(/^(transformer\.|base_model\.model\.)/, '');
  m = /^(.+?)\.(lora_A(?:\.[^.]+)?\.weight|lora_B(?:\.[^.]+)?\.weight|lora\.down\.weight|lora\.up\.weight|alpha)$/.exec(k);
  if (m) {
    const kind: Kind = m[2] === 'alpha' ? 'alpha' : /^lora_A|^lora\.down/.test(m[2]) ? 'A' : 'B';
    const bfl = /^(double_blocks|single_blocks|img_in|txt_in|time_in|vector_in|guidance_in|final_layer)/.test(m[1]);
    return { format: bfl ? 'bfl' : 'diffusers', module: m[1], kind };
  }
  return null;
}

/** peft's LoraConfig from safetensors metadata (`lora_adapter_metadata`, keys prefixed `transformer.`) or an
 * adapter_config.json beside the file. */
interface PeftConfig {
  r?: number;
  lora_alpha?: number;
  rank_pattern?: Record<string, number>;
  alpha_pattern?: Record<string, number>;
  use_rslora?: boolean;
}

function peftConfig(metadata: Record<string, string>, file: string | undefined): PeftConfig | undefined {
  const parse = (text: string, where: string): Record<string, unknown> => {
    try {
      const v: unknown = JSON.parse(text);
      if (v && typeof v === 'object' && !Array.isArray(v)) return v as Record<string, unknown>;
    } catch { /* reported below */ }
    throw new X2IError(`${where}: not a JSON object`, 'ERR_BAD_CHECKPOINT');
  };
  let raw: Record<string, unknown> | undefined;
  if (metadata.lora_adapter_metadata !== undefined) {
    const j = parse(metadata.lora_adapter_metadata, `${file ?? 'LoRA'}: metadata 'lora_adapter_metadata'`);
    raw = {};
    for (const [k, v] of Object.entries(j)) raw[k.replace(/^transformer\./, '')] = v;
  } else if (file) {
    const side = path.join(path.dirname(file), 'adapter_config.json');
    if (fs.existsSync(side)) raw = parse(fs.readFileSync(side, 'utf8'), side);
  }
  if (!raw) return undefined;
  const num = (k: string): number | undefined => {
    const v = raw![k];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0)
      throw new X2IError(`${file ?? 'LoRA'}: LoRA config '${k}' must be a positive number, got ${JSON.stringify(v)}`, 'ERR_BAD_CHECKPOINT');
    return v;
  };
  const rec = (k: string): Record<string, number> => {
    const v = raw![k];
    if (v === undefined || v === null) return {};
    if (typeof v !== 'object' || Array.isArray(v) || !Object.values(v).every((x) => typeof x === 'number' && x > 0))
      throw new X2IError(`${file ?? 'LoRA'}: LoRA config '${k}' must map module patterns to positive numbers`, 'ERR_BAD_CHECKPOINT');
    return v as Record<string, number>;
  };
  return { r: num('r'), lora_alpha: num('lora_alpha'), rank_pattern: rec('rank_pattern'), alpha_pattern: rec('alpha_pattern'),
    use_rslora: raw.use_rslora === true };
}

/** peft's pattern lookup, for the literal keys diffusers writes: a pattern matches a module whose name is it or ends
 * with `.<pattern>` (a key is never compiled as a regular expression: metadata comes from the file). */
function patternValue(pattern: Record<string, number> | undefined, module: string): number | undefined {
  for (const [p, v] of Object.entries(pattern ?? {}))
    if (module === p || module.endsWith(`.${p}`)) return v;
  return undefined;
}

/**
 * Reads LoRA tensors (any supported layout) into adapter parts for a transformer of shape `s`. Tensors that end
 * up in parts are kept; the caller owns the returned parts' tensors (and disposes `tensors` as it likes: the parts
 * reference the same Tensor objects, and slices for split modules are new ones listed in `created`).
 */
export async function loraParts(tensors: Record<string, Tensor>, s: LoraModelShape, opts: { metadata?: Record<string, string>;
  file?: string } = {}): Promise<{ parts: LoraPart[]; format: Parsed['format']; created: Tensor[] }> {
  const where = opts.file ?? 'LoRA tensors';
  const modules = diffusersModules(s);
  const bfl = new Set(fluxLinearNames(s));
  const kohya = new Map<string, { name: string; diffusers: boolean }>();
  for (const n of bfl) kohya.set(`unet:${n.replace(/\./g, '_')}`, { name: n, diffusers: false });
  for (const n of modules.keys()) kohya.set(`transformer:${n.replace(/\./g, '_')}`, { name: n, diffusers: true });
  const groups = new Map<string, { format: Parsed['format']; A?: Tensor; B?: Tensor; alpha?: Tensor; keys: string[] }>();
  const formats = new Set<Parsed['format']>();
  for (const [key, t] of Object.entries(tensors)) {
    const p = parseKey(key, kohya);
    if (!p) throw new X2IError(`${where}: unknown LoRA key '${key}' (not a diffusers/PEFT, kohya or XLabs FLUX LoRA key)`, 'ERR_CHECKPOINT_KEY');
    const known = p.format === 'diffusers' ? modules.has(p.module) : bfl.has(p.module);
    if (!known) throw new X2IError(`${where}: LoRA key '${key}' names module '${p.module}', which this transformer does not have ` +
      `(${s.depth} double and ${s.depthSingle} single blocks)`, 'ERR_CHECKPOINT_KEY');
    formats.add(p.format);
    const g = groups.get(`${p.format}:${p.module}`) ?? { format: p.format, keys: [] };
    if (g[p.kind]) throw new X2IError(`${where}: two tensors for ${p.kind} of module '${p.module}' ('${key}' and '${g.keys.join("', '")}')`, 'ERR_CHECKPOINT_KEY');
    g[p.kind] = t;
    g.keys.push(key);
    groups.set(`${p.format}:${p.module}`, g);
  }
  if (groups.size === 0) throw new X2IError(`${where}: no LoRA tensors`, 'ERR_CHECKPOINT_KEY');
  const cfg = peftConfig(opts.metadata ?? {}, opts.file);
  const parts: LoraPart[] = [];
  const created: Tensor[] = [];
  for (const [id, g] of groups) {
    const module = id.slice(id.indexOf(':') + 1);
    if (!g.A || !g.B)
      throw new X2IError(`${where}: module '${module}' has ${g.A ? 'a down (A)' : 'an up (B)'} weight but no ${g.A ? 'up (B)' : 'down (A)'} ` +
        `weight (keys: '${g.keys.join("', '")}')`, 'ERR_CHECKPOINT_KEY');
    if (g.A.shape.length !== 2 || g.B.shape.length !== 2 || g.A.shape[0] !== g.B.shape[1])
      throw new X2IError(`${where}: module '${module}': down ${JSON.stringify(g.A.shape)} and up ${JSON.stringify(g.B.shape)} ` +
        'are not a low-rank pair [r, in] / [out, r]', 'ERR_CHECKPOINT_SHAPE');
    const r = g.A.shape[0];
    let scale = 1;
    if (g.alpha) {
      if (g.alpha.shape.reduce((a, b) => a * b, 1) !== 1)
        throw new X2IError(`${where}: '${module}.alpha' must hold one number, has shape ${JSON.stringify(g.alpha.shape)}`, 'ERR_CHECKPOINT_SHAPE');
      const [v] = await hostFloats(g.alpha);
      if (!Number.isFinite(v) || v <= 0)
        throw new X2IError(`${where}: '${module}.alpha' must be a positive number, got ${v}`, 'ERR_BAD_CHECKPOINT');
      scale = v / r;
    } else if (g.format === 'diffusers' || g.format === 'bfl') {
      const alpha = patternValue(cfg?.alpha_pattern, module) ?? cfg?.lora_alpha;
      const rank = patternValue(cfg?.rank_pattern, module) ?? cfg?.r ?? r;
      if (alpha !== undefined) scale = cfg?.use_rslora ? alpha / Math.sqrt(rank) : alpha / rank;
    }
    if (!Number.isFinite(scale)) throw new X2IError(`${where}: module '${module}': alpha / rank is not finite`, 'ERR_BAD_CHECKPOINT');
    if (g.format === 'diffusers') {
      const rows = modules.get(module)!;
      if (rows.length === 1) parts.push({ target: rows[0].target, row: rows[0].row, A: g.A, B: g.B, scale });
      else {  // norm_out.linear: (scale, shift) halves onto BFL's (shift, scale)
        const half = g.B.shape[0] / 2, r = g.B.shape[1];
        const all = await hostFloats(g.B);
        rows.forEach((x, j) => {
          const b = Tensor.fromArray(all.slice(j * half * r, (j + 1) * half * r), [half, r], { device: g.B!.device });
          created.push(b);
          parts.push({ target: x.target, row: x.row, A: g.A!, B: b, scale });
        });
      }
    } else {
      parts.push({ target: module, row: 0, A: g.A, B: g.B, scale });
    }
  }
  const format = formats.size === 1 ? [...formats][0] : 'diffusers';
  return { parts, format, created };
}

/** A tensor's values as float32 on the host. */
export async function hostFloats(t: Tensor): Promise<Float32Array> {
  const f = t.dtype === 'float32' && t.device === 'cpu' ? t : await t.to({ device: 'cpu', dtype: 'float32' });
  try {
    return new Float32Array(await f.toArray() as Float32Array);
  } finally {
    if (f !== t) f.dispose();
  }
}

/** An adapter's parts as one diffusers/PEFT file: `transformer.<module>.lora_A.weight` / `.lora_B.weight` (float32)
 * and peft's LoraConfig in the metadata `lora_adapter_metadata` (keys prefixed `transformer.`: r and lora_alpha of
 * the most common part, rank_pattern / alpha_pattern for the others, target_modules), as diffusers writes it. A part
 * over several modules (a fused kohya or XLabs adapter) is written as each module's rows with the shared A. */
export async function peftTensors(parts: { target: string; row: number; A: Tensor; B: Tensor; scale: number }[],
  s: LoraModelShape): Promise<{ tensors: Record<string, Tensor>; metadata: Record<string, string>; created: Tensor[] }> {
  const modules = diffusersModules(s);
  type Piece = { part: number; from: number; rows: number; moduleRow: number };
  const byModule = new Map<string, { pieces: Piece[]; moduleRows: number }>();
  parts.forEach((p, i) => {
    const rows = p.B.shape[0];
    let covered = 0;
    for (const [module, list] of modules)
      list.forEach((x, j) => {
        if (x.target !== p.target) return;
        const xStart = x.row, xEnd = x.rows ? x.row + x.rows : p.row + rows;  // a whole layer: the part's rows
        const start = Math.max(p.row, xStart), end = Math.min(p.row + rows, xEnd);
        if (end <= start) return;
        if (!x.rows && p.row !== 0)
          throw new X2IError(`LoRA part on '${p.target}' from row ${p.row} covers part of a layer: not expressible in PEFT`, 'ERR_NOT_SUPPORTED');
        const m = byModule.get(module) ?? { pieces: [], moduleRows: 0 };
        const span = x.rows || rows;
        m.moduleRows = list.length * span;
        m.pieces.push({ part: i, from: start - p.row, rows: end - start, moduleRow: j * span + (start - xStart) });
        byModule.set(module, m);
        covered += end - start;
      });
    if (covered !== rows) throw new X2IError(`LoRA part on '${p.target}' (rows ${p.row}..${p.row + rows}) does not map onto diffusers modules`, 'ERR_NOT_SUPPORTED');
  });
  const tensors: Record<string, Tensor> = {};
  const created: Tensor[] = [];
  const rankOf = new Map<string, number>(), alphaOf = new Map<string, number>();
  for (const [module, m] of byModule) {
    const first = parts[m.pieces[0].part];
    const r = first.A.shape[0];
    const same = m.pieces.every((q) => parts[q.part].A === first.A && parts[q.part].scale === first.scale);
    let A = first.A;
    if (!same) {  // pieces from several parts (norm_out.linear's halves): they must hold the same A and scale
      const a0 = await hostFloats(first.A);
      for (const q of m.pieces.slice(1)) {
        const a = await hostFloats(parts[q.part].A);
        if (parts[q.part].scale !== first.scale || a.length !== a0.length || a.some((v, k) => v !== a0[k]))
          throw new X2IError(`LoRA module '${module}' is covered by parts with different A or scale: not expressible in PEFT`, 'ERR_NOT_SUPPORTED');
      }
    }
    const direct = m.pieces.length === 1 && m.pieces[0].from === 0 && m.pieces[0].moduleRow === 0 &&
      m.pieces[0].rows === first.B.shape[0] && m.moduleRows === first.B.shape[0];
    let B: Tensor;
    if (direct) B = first.B;
    else {
      const out = new Float32Array(m.moduleRows * r);
      for (const q of m.pieces) {
        const b = await hostFloats(parts[q.part].B);
        out.set(b.subarray(q.from * r, (q.from + q.rows) * r), q.moduleRow * r);
      }
      B = Tensor.fromArray(out, [m.moduleRows, r]);
      created.push(B);
    }
    if (A.dtype !== 'float32') { A = await A.to({ dtype: 'float32' }); created.push(A); }
    if (B.dtype !== 'float32') { B = await B.to({ dtype: 'float32' }); created.push(B); }
    tensors[`transformer.${module}.lora_A.weight`] = A;
    tensors[`transformer.${module}.lora_B.weight`] = B;
    rankOf.set(module, r);
    alphaOf.set(module, first.scale * r);
  }
  const mode = <T>(xs: T[]): T => {
    const c = new Map<T, number>();
    for (const x of xs) c.set(x, (c.get(x) ?? 0) + 1);
    return [...c].sort((a, b) => b[1] - a[1])[0][0];
  };
  const r = mode([...rankOf.values()]), alpha = mode([...alphaOf.values()]);
  const rankPattern: Record<string, number> = {}, alphaPattern: Record<string, number> = {};
  for (const [m, v] of rankOf) if (v !== r) rankPattern[m] = v;
  for (const [m, v] of alphaOf) if (v !== alpha) alphaPattern[m] = v;
  const config: Record<string, unknown> = { r, lora_alpha: alpha, rank_pattern: rankPattern, alpha_pattern: alphaPattern,
    target_modules: [...byModule.keys()], lora_dropout: 0, bias: 'none', use_rslora: false, use_dora: false,
    init_lora_weights: true, fan_in_fan_out: false, peft_type: 'LORA' };
  const meta = Object.fromEntries(Object.entries(config).map(([k, v]) => [`transformer.${k}`, v]));
  return { tensors, metadata: { lora_adapter_metadata: JSON.stringify(meta, null, 2), format: 'pt' }, created };
}
