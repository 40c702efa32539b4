import { describe, expect, it } from 'vitest';
import * as x2i from '../../lib/index.js';
import { Tensor } from '../../lib/index.js';
import { addon } from '../../lib/core/native.js';

describe('async native calls', () => {
  it('keep the event loop ticking while a long native operation runs', async () => {
    using a = await x2i.randn([1200, 1200], { dtype: 'float64', seed: 1 });
    let ticks = 0;
    let running = true;
    const tick = () => { ticks++; if (running) setTimeout(tick, 0); };
    setTimeout(tick, 0);
    const t0 = performance.now();
    let done = 0;
    for (let i = 0; i < 4; i++) {
      using c = await x2i.matmul(a, a); // ~0.1-0.5 s each on 2 cores
      done += c.numel;
    }
    const ms = performance.now() - t0;
    running = false;
    expect(done).toBe(4 * 1200 * 1200);
    expect(ms).toBeGreaterThan(50); // really long enough to starve a blocked loop
    // a blocked loop would tick about 4 times (once per await); a free one ticks about every millisecond
    expect(ticks).toBeGreaterThan(Math.min(40, ms / 10));
  });

  it('a timer fires during a single long call', async () => {
    using a = await x2i.randn([1500, 1500], { dtype: 'float64', seed: 2 });
    let fired = false;
    const timer = setTimeout(() => { fired = true; }, 1);
    const p = x2i.matmul(a, a);
    expect(fired).toBe(false);
    const c = await p;
    c.dispose();
    clearTimeout(timer);
    expect(fired).toBe(true);
  });

  it('runs independent calls concurrently and all of them complete', async () => {
    const ts = await Promise.all([1, 2, 3, 4, 5, 6].map((s) => x2i.randn([64, 64], { seed: s })));
    const prods = await Promise.all(ts.map((t) => x2i.matmul(t, t)));
    expect(prods.every((p) => p.shape[0] === 64)).toBe(true);
    for (const t of [...ts, ...prods]) t.dispose();
  });

  it('disposing a tensor while a call on it is in flight is safe', async () => {
    const a = await x2i.randn([400, 400], { seed: 3 });
    const p = x2i.matmul(a, a);
    const arr = a.toArray();
    a.dispose();
    using c = await p;
    expect(c.shape).toEqual([400, 400]);
    expect((await arr).length).toBe(160000);
  });
});

describe('SerialQueue (calls on one model are serialised)', () => {
  it('runs one call at a time, in order, and survives failures', async () => {
    const q = new x2i.SerialQueue();
    const log: string[] = [];
    let active = 0;
    const job = (name: string, ms: number, fail = false) => q.run(async () => {
      active++;
      expect(active).toBe(1);
      log.push(`start ${name}`);
      await new Promise((r) => setTimeout(r, ms));
      log.push(`end ${name}`);
      active--;
      if (fail) throw new Error(`fail ${name}`);
      return name;
    });
    const results = await Promise.allSettled([job('a', 20), job('b', 1, true), job('c', 5)]);
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
    expect(log).toEqual(['start a', 'end a', 'start b', 'end b', 'start c', 'end c']);
    expect(q.pending).toBe(0);
  });

  it('separate queues run concurrently', async () => {
    const [q1, q2] = [new x2i.SerialQueue(), new x2i.SerialQueue()];
    let overlap = false;
    let active = 0;
    const job = () => async () => {
      active++;
      if (active > 1) overlap = true;
      await new Promise((r) => setTimeout(r, 20));
      active--;
    };
    await Promise.all([q1.run(job()), q2.run(job())]);
    expect(overlap).toBe(true);
  });
});

describe('errors', () => {
  it('native rejections carry a code and the caller\'s stack', async () => {
    using t = Tensor.fromArray(new Float32Array(6), [2, 3]);
    const err = await x2i.matmul(t, t).then(() => null, (e) => e);
    expect(err).toBeInstanceOf(x2i.X2IError);
    expect(err.code).toBe('ERR_TORCH');
    expect(err.message).toMatch(/cannot be multiplied \(2x3 and 2x3\)/);
    expect(err.message).not.toMatch(/Exception raised from|frame #/); // no C++ backtrace
    expect(err.stack).toContain('async.test.ts');
  });

  it('no input from JS aborts the process', async () => {
    const a: Record<string, unknown> = { ...addon() };
    // the probes (addon.testing, lib/testing.ts) take junk as well as the production table
    const fns: [string, unknown][] = [...Object.entries(a), ...Object.entries(addon().testing ?? {})];
    const junk: unknown[] = [undefined, null, 0, -1, 1e300, NaN, 'x', '', {}, [], [-1], [1e20], [[1, 2]],
      new Float32Array(3), Buffer.from('abc'), () => 1, Symbol('s'), 2n ** 70n, { info: 1 }];
    let calls = 0;
    for (const [name, fn] of fns) {
      if (typeof fn !== 'function' || name === 'NativeTensor' || name === 'noop' || name === 'noopAsync') continue;
      for (const x of junk) {
        for (const args of [[x], [x, x], ['/dev/null', x, x, x], [x, 'float32', 'cpu'], [x, [2], 'float32', x]]) {
          calls++;
          try {
            const r = (fn as (...a: unknown[]) => unknown)(...args);
            if (r instanceof Promise) {
              const v = await r.catch((e) => e);
              if (v instanceof Error) expect(typeof (v as { code?: string }).code).toBe('string');
              else if (v && typeof v === 'object') for (const t of Object.values(v)) (t as { dispose?: () => void })?.dispose?.();
            }
          } catch (e) {
            expect(e).toBeInstanceOf(Error);
          }
        }
      }
    }
    const nt = (a.NativeTensor as { fromArray: (...a: unknown[]) => unknown });
    for (const x of junk) {
      for (const args of [[x], [x, x], [new Float32Array(2), x], [new Float32Array(2), [2], x], [new Float32Array(2), [2], 'float32', x]]) {
        calls++;
        try {
          (nt.fromArray(...args) as { dispose?: () => void })?.dispose?.();
        } catch (e) {
          expect(e).toBeInstanceOf(Error);
        }
      }
    }
    expect(() => new (a.NativeTensor as new (...a: unknown[]) => unknown)()).toThrow(/created by x2i/);
    expect(calls).toBeGreaterThan(500);
  });
});

describe('build', () => {
  it('records the LibTorch it was built against', () => {
    const info = x2i.buildInfo();
    expect(info.libtorchVersion).toMatch(/^\d+\.\d+\.\d+/);
    expect(['cpu', 'cuda']).toContain(info.libtorchFlavour.startsWith('cu') ? 'cuda' : info.libtorchFlavour);
    expect(info.cudaBackendRegistered).toBe(info.builtWithCuda);
    expect(x2i.cuda.isAvailable()).toBe(x2i.cuda.deviceCount() > 0);
  });
});

describe('worker threads', () => {
  it('the addon works in worker threads next to the main thread', async () => {
    const { Worker } = await import('node:worker_threads');
    const { pathToFileURL } = await import('node:url');
    const path = await import('node:path');
    const { root } = await import('../helpers.js');
    const dist = pathToFileURL(path.join(root, 'dist', 'index.js')).href;
    const code = `
      const x2i = await import(${JSON.stringify(dist)});
      const t = x2i.Tensor.fromArray(new Float32Array([1, 2, 3, 4]), [2, 2]);
      const p = await x2i.matmul(t, t);
      const v = Array.from(await p.toArray());
      t.dispose(); p.dispose();
      (await import('node:worker_threads')).parentPort.postMessage(v);`;
    const run = () => new Promise<number[]>((resolve, reject) => {
      const w = new Worker(code, { eval: true });
      w.once('message', resolve);
      w.once('error', reject);
    });
    using a = Tensor.fromArray(new Float32Array([1, 0, 0, 1]), [2, 2]);
    const [r1, r2, mine] = await Promise.all([run(), run(), x2i.matmul(a, a)]);
    expect(r1).toEqual([7, 10, 15, 22]);
    expect(r2).toEqual([7, 10, 15, 22]);
    expect(Array.from(await mine.toArray() as Float32Array)).toEqual([1, 0, 0, 1]);
    mine.dispose();
  });
});
