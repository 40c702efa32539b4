import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import * as x2i from '../../lib/index.js';
import { tmpDir } from '../helpers.js';

const tmp = tmpDir();
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('x2i demo (the built-in tiny pipeline)', () => {
  it('quick: every phase runs and every file is written', async () => {
    const out = path.join(tmp, 'quick');
    const phases = new Set<string>();
    const live = x2i.memory().tensors;
    const s = await x2i.runDemo({ out, quick: true, onProgress: (e) => phases.add(e.phase) });
    expect(x2i.memory().tensors).toBe(live);  // every tensor of the run is freed
    expect([...phases].sort()).toEqual(['distill', 'generate', 'lora', 'teacher']);
    for (const f of ['before.png', 'after.png', 'lora.png', 'loss.png', 'loss.svg', 'summary.json']) expect(fs.statSync(path.join(out, f)).size).toBeGreaterThan(100);
    const j = JSON.parse(fs.readFileSync(path.join(out, 'summary.json'), 'utf8'));
    for (const k of ['seconds', 'loss', 'agreement', 'teacher', 'heldOut', 'lora']) expect(j).toHaveProperty(k);
    expect(Number.isFinite(j.lora.background.teacher) && Number.isFinite(j.lora.background.student)).toBe(true);
    expect(Number.isFinite(j.agreement.before.ssim) && Number.isFinite(j.agreement.after.ssim)).toBe(true);
    expect(s.heldOut).toHaveLength(8);
    const { default: sharp } = await import('sharp');
    const meta = await sharp(path.join(out, 'after.png')).metadata();
    expect([meta.width, meta.height]).toEqual([2 * 66 + 2, 8 * 66 + 2]);  // teacher | student, 8 held-out prompts
  });

  it('quick, with each other student architecture (InternVL2.5, MiniCPM-o 2.6)', async () => {
    for (const student of ['internvl', 'minicpm-o'] as const) {
      const out = path.join(tmp, `quick-${student}`);
      const s = await x2i.runDemo({ out, quick: true, student });
      expect(s.student).toBe(student);
      expect(Number.isFinite(s.loss.first) && Number.isFinite(s.loss.last)).toBe(true);
      expect(fs.statSync(path.join(out, 'after.png')).size).toBeGreaterThan(100);
    }
    await expect(x2i.runDemo({ out: path.join(tmp, 'never'), quick: true, student: 'llama' as never })).rejects.toThrow(/student/);
  });

  it('npx x2i demo: the teacher learns, distillation helps (SSIM up, loss down by more than half), the LoRA draws its style for teacher and student', () => {
    const out = path.join(tmp, 'full');
    const r = spawnSync(process.execPath, [path.resolve('bin/x2i.js'), 'demo', '--out', out], { encoding: 'utf8', timeout: 900_000 });
    expect(r.status, r.stderr.slice(-2000)).toBe(0);
    const s = JSON.parse(fs.readFileSync(path.join(out, 'summary.json'), 'utf8'));
    expect(s.teacher.lossLast).toBeLessThan(0.1 * s.teacher.lossFirst);
    expect(s.agreement.after.ssim).toBeGreaterThan(s.agreement.before.ssim + 0.1);
    expect(s.loss.last).toBeLessThan(0.5 * s.loss.first);
    expect(r.stdout).toMatch(/teacher–student agreement on 8 held-out prompts: SSIM/);
    // held-out prompts: the style's light background with the adapter, through the teacher and the student alike
    const bg = s.lora.background;
    expect(bg.teacher - bg.without).toBeGreaterThan(0.5 * (bg.target - bg.without));
    expect(bg.student - bg.without).toBeGreaterThan(0.5 * (bg.target - bg.without));
    expect(r.stdout).toMatch(/LoRA \(a light-background style/);
  }, 900_000);
});
