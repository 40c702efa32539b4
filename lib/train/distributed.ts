/**
 * x2i.ProcessGroup: the ranks of a multi-process (multi-GPU, multi-node) X2I training (native/train/distributed.cc).
 * One process per GPU, as torchrun: the ranks meet at a c10d TCPStore served by rank 0 (`masterAddr:masterPort`),
 * then exchange tensors through NCCL (backend 'nccl': CUDA tensors, NVLink / InfiniBand) or through the store
 * itself (backend 'store': any device via host memory; for CPU machines, tests, and builds without NCCL).
 * `launch()` starts the processes of one node; X2ITrainer's `parallel` option uses the group.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { X2IError, invalidArg, nativeCall } from '../core/errors.js';
import { addon } from '../core/native.js';
import type { NativeProcessGroup, NativeProcessGroupOp } from '../core/addon.js';
import { SerialQueue } from '../core/queue.js';
import { Tensor } from '../core/tensor.js';

type Op = NativeProcessGroupOp;

export interface ProcessGroupOptions {
  /** This process's rank (default: env RANK, else 0). */
  rank?: number;
  /** Processes in the group (default: env WORLD_SIZE, else 1). */
  worldSize?: number;
  /** Where rank 0 serves the rendezvous store (default: env MASTER_ADDR, else 127.0.0.1). */
  masterAddr?: string;
  /** Default: env MASTER_PORT, else 29500. */
  masterPort?: number;
  /** 'nccl' (CUDA tensors; needs a build with NCCL) or 'store' (any device, via host memory). Default: 'nccl'
   * where the build has it and a GPU is present, else 'store'. */
  backend?: 'nccl' | 'store';
  /** How long a rendezvous or an operation may wait for the other ranks (default 30 minutes, as PyTorch). */
  timeoutMs?: number;
}

const envInt = (k: string, d: number) => (process.env[k] !== undefined ? Number(process.env[k]) : d);

export class ProcessGroup {
  readonly rank: number;
  readonly worldSize: number;
  readonly backend: 'nccl' | 'store';
  /** The CUDA device of this rank in a one-process-per-GPU launch: `cuda:${LOCAL_RANK}` (env), else 'cuda'. */
  static localDevice(): string {
    return process.env.LOCAL_RANK !== undefined ? `cuda:${process.env.LOCAL_RANK}` : 'cuda';
  }

  #h: NativeProcessGroup | null;
  #queue = new SerialQueue();

  private constructor(h: NativeProcessGroup) {
    this.#h = h;
    const i = h.info();
    this.rank = i.rank;
    this.worldSize = i.worldSize;
    this.backend = i.backend;
  }

  /** Joins the group: resolves once every rank has joined (rank 0 serves the store). */
  static async init(opts: ProcessGroupOptions = {}): Promise<ProcessGroup> {
    const a = addon();
    const o = {
      rank: opts.rank ?? envInt('RANK', 0), worldSize: opts.worldSize ?? envInt('WORLD_SIZE', 1),
      host: opts.masterAddr ?? process.env.MASTER_ADDR ?? '127.0.0.1', port: opts.masterPort ?? envInt('MASTER_PORT', 29500),
      backend: opts.backend ?? (a.ncclAvailable() && a.cudaDeviceCount() > 0 ? 'nccl' : 'store'), timeoutMs: opts.timeoutMs ?? 1_800_000,
    };
    if (!Number.isSafeInteger(o.worldSize) || o.worldSize < 1) throw invalidArg('worldSize', 'a positive integer', o.worldSize);
    if (!Number.isSafeInteger(o.rank) || o.rank < 0 || o.rank >= o.worldSize) throw invalidArg('rank', `an integer in [0, ${o.worldSize})`, o.rank);
    if (!Number.isSafeInteger(o.port) || o.port < 1 || o.port > 65535) throw invalidArg('masterPort', 'a TCP port', o.port);
    return new ProcessGroup(await nativeCall(() => a.NativeProcessGroup.create(o)));
  }

  #native(): NativeProcessGroup {
    if (!this.#h) throw new X2IError('ProcessGroup was disposed', 'ERR_DISPOSED');
    return this.#h;
  }

  /** @internal The native handle, for the models' collective steps. */
  static handleOf(g: ProcessGroup): NativeProcessGroup {
    if (!(g instanceof ProcessGroup)) throw invalidArg('group', 'a ProcessGroup', g);
    return g.#native();
  }

  #op(name: Op, t?: Tensor, peer?: number): Promise<void> {
    const h = this.#native();
    if (name !== 'barrier' && name !== 'close' && !(t instanceof Tensor)) throw invalidArg(`ProcessGroup.${name}: tensor`, 'a Tensor', t);
    const handle = t?.handle;
    return this.#queue.run(() => nativeCall(() => h.op(name, handle, peer)));
  }

  /** Sums `t` over the ranks, in place on every rank ('mean' divides by worldSize). */
  async allReduce(t: Tensor, op: 'sum' | 'mean' = 'sum'): Promise<void> {
    if (op !== 'sum' && op !== 'mean') throw invalidArg('op', "'sum' or 'mean'", op);
    await this.#op(op === 'sum' ? 'allReduce' : 'allReduceMean', t);
  }

  /** `root`'s `t` into every rank's `t`. */
  broadcast(t: Tensor, root = 0): Promise<void> {
    return this.#op('broadcast', t, root);
  }

  /** To rank `dst`; messages between two ranks arrive in order. */
  send(t: Tensor, dst: number): Promise<void> {
    return this.#op('send', t, dst);
  }

  /** From rank `src` into `t` (whose shape and dtype must be those sent). */
  recv(t: Tensor, src: number): Promise<void> {
    return this.#op('recv', t, src);
  }

  barrier(): Promise<void> {
    return this.#op('barrier');
  }

  /** Leaves the group after the operations in flight; rank 0 (the store's server) waits until every rank has
   * left. Resolves when done (dispose() does the same without waiting). */
  async close(): Promise<void> {
    const h = this.#h;
    this.#h = null;
    if (!h) return;
    try {
      await this.#queue.run(() => nativeCall(() => h.op('close')));
    } finally {
      h.dispose();
    }
  }

  dispose(): void {
    this.close().catch(() => {});
  }

  [Symbol.dispose ?? Symbol.for('nodejs.dispose')](): void {
    this.dispose();
  }
}

export interface LaunchOptions {
  /** Processes on this node (one per GPU). */
  nprocPerNode: number;
  /** Nodes in the job and this node's index (default 1 and 0). */
  nnodes?: number;
  nodeRank?: number;
  masterAddr?: string;
  masterPort?: number;
  args?: string[];
  env?: Record<string, string>;
}

/**
 * Starts `nprocPerNode` Node processes running `script` with torchrun's environment (RANK, LOCAL_RANK,
 * WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT); resolves with their exit codes once all have ended,
 * and ends the others when one fails. Run it on every node with its `nodeRank`.
 */
export function launch(script: string, opts: LaunchOptions): Promise<number[]> {
  const n = opts.nprocPerNode, nnodes = opts.nnodes ?? 1, node = opts.nodeRank ?? 0;
  if (!Number.isSafeInteger(n) || n < 1) throw invalidArg('nprocPerNode', 'a positive integer', n);
  const children: ChildProcess[] = [];
  const codes: number[] = new Array(n).fill(-1);
  return new Promise((resolve) => {
    let left = n;
    for (let i = 0; i < n; i++) {
      const env = { ...process.env, ...opts.env, RANK: String(node * n + i), LOCAL_RANK: String(i), WORLD_SIZE: String(nnodes * n),
        LOCAL_WORLD_SIZE: String(n), MASTER_ADDR: opts.masterAddr ?? process.env.MASTER_ADDR ?? '127.0.0.1',
        MASTER_PORT: String(opts.masterPort ?? process.env.MASTER_PORT ?? 29500) };
      const c = fork(script, opts.args ?? [], { env, stdio: 'inherit' });
      children.push(c);
      c.on('exit', (code, signal) => {
        codes[i] = code ?? (signal ? 128 : 1);
        if (codes[i] !== 0) for (const o of children) if (o !== c && o.exitCode === null) o.kill('SIGTERM');
        if (--left === 0) resolve(codes);
      });
    }
  });
}
