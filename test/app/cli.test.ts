import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { golden, root, studentAlignNetFile, tmpDir } from '../helpers.js';

const tmp = tmpDir();
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
const x2i = (...args: string[]) => spawnSync(process.execPath, [path.join(root, 'bin', 'x2i.js'), ...args], { encoding: 'utf8' });

it('x2i info, help and unknown commands', () => {
  const info = x2i('info');
  expect(info.status).toBe(0);
  expect(info.stdout).toMatch(/libtorch\s+\d+\.\d+/);
  expect(x2i('help').stdout).toContain('generate');
  expect(x2i('nope').status).toBe(2);
});

it('x2i generate: a PNG from precomputed embeddings through FLUX and its VAE, with a progress bar', async () => {
  const out = path.join(tmp, 'a.png');
  const r = x2i('generate', '--flux', path.join(golden, 'flux-transformer'), '--vae', path.join(golden, 'vae'),
    '--embeds', path.join(golden, 'pipeline', 'io.safetensors'), '--height', '32', '--width', '32', '--steps', '4', '--out', out);
  expect(r.status, r.stderr).toBe(0);
  expect(r.stderr).toContain('4/4 decode');
  const { default: sharp } = await import('sharp');
  const meta = await sharp(out).metadata();
  expect([meta.format, meta.width, meta.height]).toEqual(['png', 32, 32]);
  expect(x2i('generate').status).toBe(2);
  expect(x2i('generate', '--flux', 'x').stderr).toMatch(/give --prompt or --embeds/);
  expect(x2i('generate', '--flux', 'nowhere', '--prompt', 'x', '--mllm', 'm').stderr).toMatch(/student needs --mllm, --alignnet and a prompt/);
});

it('x2i generate: the MiniCPM-o student from a sound, an image and text mixed (--audio, --prompt-image, --video)', async () => {
  const align = await studentAlignNetFile(path.join(tmp, 'alignnet-minicpm.safetensors'), 3, 128, 1);
  const dir = path.join(golden, 'minicpm_o');
  const base = ['generate', '--flux', path.join(golden, 'flux-transformer'), '--vae', path.join(golden, 'vae'), '--mllm', dir, '--alignnet', align,
    '--height', '32', '--width', '32', '--steps', '2'];
  const a = path.join(tmp, 'sound.png'), b = path.join(tmp, 'mixed.png');
  const ra = x2i(...base, '--audio', path.join(root, 'test', 'fixtures', 'audio', 'fox.ogg'), '--out', a);
  expect(ra.status, ra.stderr).toBe(0);
  const rb = x2i(...base, '--audio', path.join(dir, 'mixed_audio.wav'), '--prompt-image', path.join(dir, 'mixed_image.png'),
    '--video', path.join(dir, 'image.png'), '--prompt', 'make it a watercolor', '--out', b);
  expect(rb.status, rb.stderr).toBe(0);
  expect(fs.readFileSync(a).equals(fs.readFileSync(b))).toBe(false);
  expect(x2i('generate', '--flux', 'x', '--audio', a).stderr).toMatch(/--audio is the student's prompt: it needs --mllm/);
  const d = x2i('demo', '--student', 'llama', '--out', path.join(tmp, 'never'));
  expect([d.status, d.stderr.trim()]).toEqual([2, 'x2i demo: --student must be qwen, internvl or minicpm-o, got "llama"']);
});

it('x2i train: AlignNet from precomputed features, checkpoints, resume', async () => {
  const x = await import('../../lib/index.js');
  const feats = path.join(tmp, 'features.safetensors');
  await x.saveSafetensors(feats, { 'teacher.encoder_hidden_states': await x.randn([1, 7, 32], { seed: 1 }),
    'teacher.pooled_projections': await x.randn([1, 24], { seed: 2 }), 'student.hidden_states': await x.randn([1, 5, 7, 32], { seed: 3 }) });
  const out = path.join(tmp, 'run');
  const common = ['--flux', path.join(golden, 'flux-transformer'), '--alignnet', path.join(golden, 'alignnet', 'diffusion_pytorch_model.bin'),
    '--features', feats, '--out', out, '--height', '32', '--width', '32', '--lr', '1e-3', '--checkpoint-every', '2'];
  const r = x2i('train', ...common, '--steps', '3');
  expect(r.status, r.stderr).toBe(0);
  expect(r.stderr).toMatch(/3\/3 loss \d/);
  expect(JSON.parse(fs.readFileSync(path.join(out, 'trainer.json'), 'utf8')).step).toBe(3);
  const again = x2i('train', ...common, '--steps', '5', '--resume');
  expect(again.status, again.stderr).toBe(0);
  expect(JSON.parse(fs.readFileSync(path.join(out, 'trainer.json'), 'utf8')).step).toBe(5);
  expect(x2i('train', '--flux', 'a').status).toBe(2);
  // x2i eval on the trained checkpoint folder
  const json = path.join(tmp, 'eval.json');
  const ev = x2i('eval', '--flux', path.join(golden, 'flux-transformer'), '--vae', path.join(golden, 'vae'), '--alignnet', out,
    '--features', feats, '--height', '32', '--width', '32', '--steps', '2', '--json', json);
  expect(ev.status, ev.stderr).toBe(0);
  expect(ev.stdout).toMatch(/ssim [\d.-]+ +psnr [\d.]+ dB +distillation loss \d/);
  const ej = JSON.parse(fs.readFileSync(json, 'utf8'));
  expect(ej.ssim).toBeGreaterThan(-1);
  expect(ej.ssim).toBeLessThanOrEqual(1);
  // two processes: the split layout (teacher rank 0, student rank 1) and data parallel, through the CLI's launcher
  for (const mode of ['split', 'data']) {
    const dir = path.join(tmp, `run-${mode}`);
    const port = String(29700 + (mode === 'data' ? 1 : 0) + (process.pid % 200) * 2);
    const p = x2i('train', ...common.map((a) => (a === out ? dir : a)), '--steps', '2', '--nproc-per-node', '2', '--parallel', mode,
      '--master-port', port);
    expect(p.status, p.stderr).toBe(0);
    expect(p.stderr).toMatch(/2\/2 loss \d/);  // one rank reports
    expect(JSON.parse(fs.readFileSync(path.join(dir, 'trainer.json'), 'utf8')).parallel).toEqual({ mode, worldSize: 2 });
  }
  expect(x2i('train', ...common, '--nproc-per-node', '2').stderr).toMatch(/needs --parallel data\|split/);
}, 120_000);
