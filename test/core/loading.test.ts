// Loading that reports and aborts (LoadOptions / PretrainedOptions: onProgress, signal, chunkBytes), and models
// whose dispose can be awaited until their memory is free (disposeAsync, Symbol.asyncDispose).
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import * as x2i from '../../lib/index.js';
import { AlignNet, FluxTransformer, Tensor, type LoadProgress } from '../../lib/index.js';
import { afterAbortCheck } from '../../lib/models/pretrained.js';
import { golden, parseSafetensorsBytes, relErr, settleGc, tmpDir } from '../helpers.js';

const tmp = tmpDir();
const flux = path.join(golden, 'flux-transformer');
const fluxWeights = path.join(flux, 'diffusion_pytorch_model.safetensors');
const sharded = path.join(tmp, 'flux-sharded');
const shardFiles = [1, 2, 3].map((i) => path.join(sharded, `diffusion_pytorch_model-0000${i}-of-00003.safetensors`));
let io: Record<string, Tensor>;

beforeAll(async () => {
  // the golden transformer as three shards and their index, as diffusers writes large models
  const w = await x2i.loadSafetensors(fluxWeights);
  const names = Object.keys(w);
  fs.mkdirSync(sharded);
  fs.copyFileSync(path.join(flux, 'config.json'), path.join(sharded, 'config.json'));
  const weightMap: Record<string, string> = {};
  for (const [i, file] of shardFiles.entries()) {
    const part = names.filter((_, k) => k % 3 === i);
    await x2i.saveSafetensors(file, Object.fromEntries(part.map((n) => [n, w[n]])));
    for (const n of part) weightMap[n] = path.basename(file);
  }
  fs.writeFileSync(path.join(sharded, 'diffusion_pytorch_model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }));
  for (const t of Object.values(w)) t.dispose();
  io = await x2i.loadSafetensors(path.join(flux, 'io.safetensors'));
});
afterAll(() => {
  for (const t of Object.values(io)) t.dispose();
  fs.rmSync(tmp, { recursive: true, force: true });
});

/** Bytes and tensor count of safetensors files, read independently of the library. */
function totals(files: string[]): { bytes: number; tensors: number } {
  let bytes = 0, tensors = 0;
  for (const f of files) {
    for (const e of Object.values(parseSafetensorsBytes(fs.readFileSync(f)).header)) { bytes += e.data_offsets[1] - e.data_offsets[0]; tensors++; }
  }
  return { bytes, tensors };
}

/** Progress reports rise monotonically from nothing to the totals, which never change. */
function expectMonotonic(events: LoadProgress[], want: { bytes: number; tensors: number }): void {
  expect(events.length).toBeGreaterThan(1);
  expect(events[0]).toMatchObject({ bytesLoaded: 0, tensorsLoaded: 0 });
  for (const [i, e] of events.entries()) {
    expect(e).toMatchObject({ bytesTotal: want.bytes, tensorsTotal: want.tensors });
    if (i === 0) continue;
    expect(e.bytesLoaded, `report ${i}`).toBeGreaterThan(events[i - 1].bytesLoaded);
    expect(e.tensorsLoaded, `report ${i}`).toBeGreaterThan(events[i - 1].tensorsLoaded);
  }
  expect(events.at(-1)).toMatchObject({ bytesLoaded: want.bytes, tensorsLoaded: want.tensors });
}

const inputs = () => ({ hiddenStates: io.hidden_states, encoderHiddenStates: io.encoder_hidden_states,
  pooledProjections: io.pooled_projections, timestep: io.timestep, guidance: io.guidance, imgIds: io.img_ids, txtIds: io.txt_ids });

/** Live tensor handles and bytes now (no collection: a tensor left undisposed still counts). */
function now(): { tensors: number; bytes: number } {
  const m = x2i.memory();
  return { tensors: m.tensors, bytes: m.bytes };
}
/** The same once finalizers ran: the baseline. */
async function live(): Promise<{ tensors: number; bytes: number }> {
  await settleGc();
  return now();
}

const isAbortError = (e: unknown) => e instanceof DOMException && e.name === 'AbortError';

describe('onProgress', () => {
  it('a sharded folder: one report per shard after the first, up to the totals; the model is the golden one', async () => {
    const events: LoadProgress[] = [];
    await using m = await FluxTransformer.fromPretrained(sharded, { onProgress: (p) => events.push(p) });
    expectMonotonic(events, totals(shardFiles));
    expect(events.length).toBe(1 + shardFiles.length);
    expect(events.slice(1).map((e) => e.file)).toEqual(shardFiles);
    const r = await m.forward(inputs());
    expect(await relErr(r.sample, io.sample)).toBeLessThan(1e-4);
    r.sample.dispose();
  });

  it('chunkBytes: a file read in bounded groups, reported after each; the same tensors in the same order', async () => {
    const events: LoadProgress[] = [];
    const chunkBytes = 16 * 1024;
    const a = await x2i.loadSafetensors(fluxWeights, { chunkBytes, onProgress: (p) => events.push(p) });
    const b = await x2i.loadSafetensors(fluxWeights);
    expectMonotonic(events, totals([fluxWeights]));
    const biggest = Math.max(...Object.values(b).map((t) => t.nbytes));
    expect(events.length).toBeGreaterThan(1 + Math.ceil(totals([fluxWeights]).bytes / (chunkBytes + biggest)));
    for (let i = 1; i < events.length; i++) {
      const step = events[i].bytesLoaded - events[i - 1].bytesLoaded;
      // a group holds at most chunkBytes, unless it is one tensor larger than that
      if (step > chunkBytes) expect(events[i].tensorsLoaded - events[i - 1].tensorsLoaded).toBe(1);
    }
    expect(Object.keys(a)).toEqual(Object.keys(b));
    for (const k of Object.keys(b)) expect(await a[k].toArray(), k).toEqual(await b[k].toArray());
    for (const t of [...Object.values(a), ...Object.values(b)]) t.dispose();
  });

  it('torch.save checkpoints report by storage too', async () => {
    const bin = path.join(golden, 'alignnet', 'diffusion_pytorch_model.bin');
    const events: LoadProgress[] = [];
    const a = await x2i.loadTorchCheckpoint(bin, { chunkBytes: 1, onProgress: (p) => events.push(p) });
    const b = await x2i.loadTorchCheckpoint(bin);
    const n = Object.keys(b).length;
    expect(events.length).toBe(1 + n);  // one storage per tensor in this file
    expect(events.at(-1)).toMatchObject({ file: bin, tensorsLoaded: n, tensorsTotal: n,
      bytesLoaded: Object.values(b).reduce((s, t) => s + t.nbytes, 0) });
    expect(Object.keys(a)).toEqual(Object.keys(b));
    for (const k of Object.keys(b)) expect(await a[k].toArray(), k).toEqual(await b[k].toArray());
    for (const t of [...Object.values(a), ...Object.values(b)]) t.dispose();
  });

  it('every fromPretrained passes signal and onProgress through', async () => {
    const cases: [string, (o: x2i.PretrainedOptions) => Promise<{ disposeAsync(): Promise<void> }>][] = [
      ['FluxTransformer', (o) => FluxTransformer.fromPretrained(flux, o)],
      ['T5Encoder', (o) => x2i.T5Encoder.fromPretrained(path.join(golden, 't5-encoder'), o)],
      ['ClipTextEncoder', (o) => x2i.ClipTextEncoder.fromPretrained(path.join(golden, 'clip-text'), o)],
      ['QwenVLEncoder', (o) => x2i.QwenVLEncoder.fromPretrained(path.join(golden, 'qwen2_5_vl'), o)],
      ['InternVLEncoder', (o) => x2i.InternVLEncoder.fromPretrained(path.join(golden, 'internvl2_5'), o)],
      ['MiniCPMOEncoder', (o) => x2i.MiniCPMOEncoder.fromPretrained(path.join(golden, 'minicpm_o'), o)],
      ['studentFromPretrained', (o) => x2i.studentFromPretrained(path.join(golden, 'qwen2_5_vl'), o)],
      ['AutoencoderKL', (o) => x2i.AutoencoderKL.fromPretrained(path.join(golden, 'vae'), o)],
      ['AlignNet', (o) => AlignNet.fromPretrained(path.join(golden, 'alignnet', 'diffusion_pytorch_model.bin'), o)],
      ['LightControl', (o) => x2i.LightControl.fromPretrained(path.join(golden, 'lightcontrol', 'lightcontrol.bin'), o)],
    ];
    const base = await live();
    for (const [name, load] of cases) {
      const events: LoadProgress[] = [];
      const m = await load({ onProgress: (p) => events.push(p) });
      await m.disposeAsync();
      expect(events.length, name).toBeGreaterThan(1);
      expect(events.at(-1)!.bytesLoaded, name).toBe(events[0].bytesTotal);
      expect(events.at(-1)!.tensorsLoaded, name).toBe(events[0].tensorsTotal);
      // aborted at the last report: everything read is freed, the call rejects with the reason
      const c = new AbortController();
      const reason = new Error(`stop ${name}`);
      await expect(load({ signal: c.signal, onProgress: (p) => { if (p.tensorsLoaded === p.tensorsTotal) c.abort(reason); } }), name)
        .rejects.toBe(reason);
      await expect(load({ signal: AbortSignal.abort() }), name).rejects.toSatisfy(isAbortError);
    }
    expect(now()).toEqual(base);
  });
});

describe('signal', () => {
  it('an abort between shards rejects with an AbortError, reads no further shard and frees what was read', async () => {
    const base = await live();
    const c = new AbortController();
    const events: LoadProgress[] = [];
    const p = FluxTransformer.fromPretrained(sharded, { signal: c.signal, onProgress: (e) => {
      events.push(e);
      if (e.tensorsLoaded > 0) c.abort();
    } });
    await expect(p).rejects.toSatisfy(isAbortError);
    expect(events.map((e) => e.file)).toEqual([shardFiles[0], shardFiles[0]]);
    expect(events[1].tensorsLoaded).toBeGreaterThan(0);
    expect(now()).toEqual(base);
  });

  it('an abort inside a file (between chunks) frees the chunks read; signal.reason is the rejection', async () => {
    const base = await live();
    const c = new AbortController();
    const reason = new Error('client went away');
    let reports = 0;
    const p = x2i.loadSafetensors(fluxWeights, { chunkBytes: 16 * 1024, signal: c.signal,
      onProgress: () => { if (++reports === 3) c.abort(reason); } });
    await expect(p).rejects.toBe(reason);
    expect(reports).toBe(3);
    expect(now()).toEqual(base);
  });

  it('an exception in onProgress stops the load the same way', async () => {
    const base = await live();
    const boom = new Error('progress bar broke');
    await expect(FluxTransformer.fromPretrained(sharded, { onProgress: (e) => { if (e.tensorsLoaded) throw boom; } })).rejects.toBe(boom);
    expect(now()).toEqual(base);
  });

  it('an already aborted signal rejects before anything is read', async () => {
    const base = await live();
    const onProgress = vi.fn();
    await expect(FluxTransformer.fromPretrained(sharded, { signal: AbortSignal.abort(), onProgress })).rejects.toSatisfy(isAbortError);
    await expect(x2i.loadSafetensors(path.join(tmp, 'not-there.safetensors'), { signal: AbortSignal.abort() })).rejects.toSatisfy(isAbortError);
    expect(onProgress).not.toHaveBeenCalled();
    expect(now()).toEqual(base);
  });

  it('a native model finished after the abort is freed (afterAbortCheck)', () => {
    const h = { dispose: vi.fn() };
    expect(afterAbortCheck(h, new AbortController().signal)).toBe(h);
    expect(afterAbortCheck(h)).toBe(h);
    expect(h.dispose).not.toHaveBeenCalled();
    const reason = new Error('late');
    expect(() => afterAbortCheck(h, AbortSignal.abort(reason))).toThrow(reason);
    expect(h.dispose).toHaveBeenCalledTimes(1);
  });

  it('bad options are refused by name', async () => {
    await expect(x2i.loadSafetensors(fluxWeights, { signal: {} as AbortSignal })).rejects.toThrow(/AbortSignal for signal/);
    await expect(x2i.loadSafetensors(fluxWeights, { onProgress: 1 as unknown as () => void })).rejects.toThrow(/function for onProgress/);
    await expect(x2i.loadSafetensors(fluxWeights, { chunkBytes: 0 })).rejects.toThrow(/positive integer for chunkBytes/);
  });
});

describe('disposeAsync and Symbol.asyncDispose', () => {
  // weights of 64 MB each: allocations this large are mapped and unmapped by malloc, so the resident size shows them go
  const big = { layers: 3, inputDim: 4096, sequenceDim: 4096, pooledDim: 24, kernelSize: 1 };
  const rss = () => process.memoryUsage().rss;

  it('resolves after the calls queued before it, with the weights freed', async () => {
    const before = rss();
    const net = await AlignNet.fromConfig(big);
    const grown = rss() - before;
    expect(grown).toBeGreaterThan(100e6);
    const x = await x2i.randn([1, 3, 2, 4096]);
    const pending = net.forward(x);  // queued before the dispose: runs to the end
    const freed = net.disposeAsync();
    expect(net.disposed).toBe(true);
    expect(net.disposeAsync()).toBe(freed);  // idempotent: the same Promise
    await expect(net.forward(x)).rejects.toMatchObject({ code: 'ERR_DISPOSED' });
    await freed;
    const r = await pending;
    expect(r.encoderHiddenStates.shape).toEqual([1, 2, 4096]);
    expect(rss() - before).toBeLessThan(grown / 4);
    for (const t of [x, r.encoderHiddenStates, r.pooledProjections]) t.dispose();
  });

  it('await using frees at the end of the scope', async () => {
    const before = rss();
    let grown = 0;
    let kept: AlignNet;
    {
      await using net = await AlignNet.fromConfig(big);
      kept = net;
      grown = rss() - before;
    }
    expect(kept.disposed).toBe(true);
    expect(grown).toBeGreaterThan(100e6);
    expect(rss() - before).toBeLessThan(grown / 4);
  });
});
