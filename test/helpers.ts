import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'vitest';
import type { FluxInputs, Tensor } from '../lib/index.js';

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const golden = path.join(root, 'test', 'fixtures', 'golden');

/** The distillation loss and its per-block terms against the golden io (relative error ≤ 1e-4), no skipped layer. */
export async function expectGoldenLoss(r: { loss: number; skipped: number; terms: Record<'doubleImg' | 'doubleTxt' | 'single', number[]> },
  d: Record<string, Tensor>): Promise<void> {
  const want = (await d.loss.toArray() as Float32Array)[0];
  expect(Math.abs(r.loss - want) / want).toBeLessThan(1e-4);
  expect(r.skipped).toBe(0);
  for (const [k, key] of [['doubleImg', 'terms.double_img'], ['doubleTxt', 'terms.double_txt'], ['single', 'terms.single']] as const) {
    const ref = Array.from(await d[key].toArray() as Float32Array);
    r.terms[k].forEach((v, i) => expect(Math.abs(v - ref[i]) / ref[i], `${k}[${i}]`).toBeLessThan(1e-4));
  }
}

/** FluxTransformer's inputs from a golden io file's snake_case names (flux-transformer, flux-lora, lightcontrol). */
export function fluxInputsOf(io: Record<string, Tensor>): FluxInputs {
  return { hiddenStates: io.hidden_states, encoderHiddenStates: io.encoder_hidden_states, pooledProjections: io.pooled_projections,
    timestep: io.timestep, guidance: io.guidance, imgIds: io.img_ids, txtIds: io.txt_ids };
}

/** ‖a − b‖ / ‖b‖ of two float32 tensors of one shape, computed here (independently of the addon's relativeError). */
export async function relErr(a: Tensor, b: Tensor): Promise<number> {
  expect(a.shape).toEqual(b.shape);
  const [x, y] = [await a.toArray(), await b.toArray()] as Float32Array[];
  let num = 0, den = 0;
  for (let i = 0; i < x.length; i++) { num += (x[i] - y[i]) ** 2; den += y[i] ** 2; }
  return Math.sqrt(num / den);
}

export function tmpDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'x2i-test-'));
}

/** An independent, minimal reading of the safetensors format, used to check the library against. */
export function parseSafetensorsBytes(buf: Buffer): {
  headerLength: number;
  header: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  metadata?: Record<string, string>;
  data: Buffer;
} {
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
  const metadata = header.__metadata__;
  delete header.__metadata__;
  return { headerLength: n, header, metadata, data: buf.subarray(8 + n) };
}

/** Builds a safetensors file from a raw header object and data bytes (for malformed-file tests). */
export function rawSafetensors(header: unknown, data: Buffer, headerLength?: number): Buffer {
  const json = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(headerLength ?? json.length));
  return Buffer.concat([len, json, data]);
}

export function goldenIoFiles(): string[] {
  return fs.readdirSync(golden).filter((d) => fs.existsSync(path.join(golden, d, 'io.safetensors')))
    .map((d) => path.join(golden, d, 'io.safetensors'));
}

/** Collects garbage until finalizers have run, so that x2i.memory() counts only reachable tensors. */
export async function settleGc(): Promise<void> {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (!gc) throw new Error('run the tests with --expose-gc');
  for (let i = 0; i < 3; i++) {
    gc();
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** A small random AlignNet (5 layers of 32 wide → 32 / 24) as safetensors in `dir` (made once per folder): the
 * student of the tiny golden FLUX in the trainer tests. */
export async function alignNetFile(dir: string): Promise<string> {
  const { Tensor, randn, saveSafetensors } = await import('../lib/index.js');
  const f = path.join(dir, 'init.safetensors');
  if (fs.existsSync(f)) return f;
  const r = (shape: number[], seed: number, s = 1) => randn(shape, { seed }).then(async (t) => {
    const v = (await t.toArray() as Float32Array).map((x) => x * s);
    t.dispose();
    return Tensor.fromArray(v, shape);
  });
  await saveSafetensors(f, {
    'conv.weight': await r([1, 5, 5, 5], 1, 0.1), 'conv.bias': await r([1], 2, 0.1),
    'mlp.layernorm.weight': Tensor.fromArray(new Float32Array(32).fill(1), [32]), 'mlp.layernorm.bias': await r([32], 3, 0.1),
    'mlp.projector.0.weight': await r([32, 32], 4, 0.2), 'mlp.projector.2.weight': await r([32, 32], 5, 0.2),
    'mlp.fc.1.weight': await r([24, 32], 6, 0.2), 'mlp.fc.1.bias': await r([24], 7, 0.1),
  });
  return f;
}

/** A random AlignNet safetensors file for a student of `layers` stacked states of `hidden` channels into the tiny
 * golden FLUX's conditioning (32-wide sequence, 24 pooled): standard normal weights from seeds seed..seed+6. */
export async function studentAlignNetFile(file: string, layers: number, hidden: number, seed: number): Promise<string> {
  const { Tensor, randn, saveSafetensors } = await import('../lib/index.js');
  const r = (shape: number[], k: number) => randn(shape, { seed: seed + k });
  await saveSafetensors(file, {
    'conv.weight': await r([1, layers, 5, 5], 0), 'conv.bias': await r([1], 1),
    'mlp.layernorm.weight': Tensor.fromArray(new Float32Array(hidden).fill(1), [hidden]), 'mlp.layernorm.bias': await r([hidden], 2),
    'mlp.projector.0.weight': await r([32, hidden], 3), 'mlp.projector.2.weight': await r([32, 32], 4),
    'mlp.fc.1.weight': await r([24, 32], 5), 'mlp.fc.1.bias': await r([24], 6),
  });
  return file;
}

/** Every file under a folder with its bytes (base64), to prove a checkpoint was not touched. */
export function snapshot(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p); else out[path.relative(dir, p)] = fs.readFileSync(p).toString('base64');
    }
  };
  walk(dir);
  return out;
}

