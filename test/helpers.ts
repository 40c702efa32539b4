import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const golden = path.join(root, 'test', 'fixtures', 'golden');

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
