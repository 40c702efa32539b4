// evaluatePrompts (x2i eval --prompts) end to end on tiny random models: a teacher FluxPipeline on T5 + CLIP, an X2I
// student (x2i.randomServedModel), and a CLIP scorer made of the CLIP fixture (test/fixtures/clip, both towers) with a
// tokenizer that fits its 99-token vocabulary. Each row's CLIP scores equal the scorer on the images the teacher and
// the student give alone for the same seed; the summary holds the means and their ratio; PNGs reach onImages.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as x2i from '../../lib/index.js';
import { ClipScorer, evaluatePrompts } from '../../lib/sample/evaluate.js';

const root = path.resolve(__dirname, '..', '..');
const golden = path.join(root, 'test', 'fixtures', 'golden');
let dir: string;
let teacher: x2i.FluxPipeline, served: Awaited<ReturnType<typeof x2i.randomServedModel>>, clip: ClipScorer;
const own: { dispose(): void }[] = [];

/** CLIP's BPE (the golden clip-like tokenizer.json's layout) over letters only — a–z and a–z</w> — with the fixture
 * config's start and end ids (97, 98: the text tower pools at the end token), within its 99-token vocabulary. */
function lettersTokenizer(bos: number, eos: number): Record<string, unknown> {
  const t = JSON.parse(fs.readFileSync(path.join(golden, 'tokenizers', 'clip-like-tokenizer.json'), 'utf8'));
  const vocab: Record<string, number> = {};
  for (const suffix of ['', '</w>'])
    for (let c = 97; c <= 122; c++) vocab[String.fromCharCode(c) + suffix] = Object.keys(vocab).length;
  vocab['<|startoftext|>'] = bos;
  vocab['<|endoftext|>'] = eos;
  t.model = { ...t.model, vocab, merges: [] };
  t.added_tokens = t.added_tokens.map((a: { content: string }) => ({ ...a, id: vocab[a.content] }));
  t.post_processor = { ...t.post_processor, cls: ['<|startoftext|>', bos], sep: ['<|endoftext|>', eos] };
  return t;
}

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'x2i-eval-'));
  const clipDir = path.join(dir, 'clip');
  fs.cpSync(path.join(root, 'test', 'fixtures', 'clip'), clipDir, { recursive: true });
  // the fixture's random towers put every random image at a negative cosine with every text (CLIP score 0): its
  // visual projection negated, the scores are positive and tell the images apart
  const w = await x2i.loadSafetensors(path.join(clipDir, 'model.safetensors'));
  const vp = w['visual_projection.weight'];
  w['visual_projection.weight'] = x2i.Tensor.fromArray((await vp.toArray() as Float32Array).map((v) => -v), vp.shape);
  vp.dispose();
  await x2i.saveSafetensors(path.join(clipDir, 'model.safetensors'), w);
  for (const t of Object.values(w)) t.dispose();
  const text = JSON.parse(fs.readFileSync(path.join(clipDir, 'config.json'), 'utf8')).text_config;
  fs.writeFileSync(path.join(clipDir, 'tokenizer.json'), JSON.stringify(lettersTokenizer(text.bos_token_id, text.eos_token_id)));
  clip = await ClipScorer.fromPretrained(clipDir);
  const t5 = JSON.parse(fs.readFileSync(path.join(golden, 'tokenizers', 't5-like-tokenizer.json'), 'utf8'));
  const textEncoder2 = await x2i.T5Encoder.fromConfig({ vocab_size: Object.keys(t5.model.vocab).length, d_model: 32, d_kv: 8, d_ff: 64,
    num_layers: 1, num_heads: 4, relative_attention_num_buckets: 32, relative_attention_max_distance: 128, layer_norm_epsilon: 1e-6,
    feed_forward_proj: 'gated-gelu' }, { seed: 1 });
  const transformer = await x2i.FluxTransformer.fromConfig({ in_channels: 16, num_layers: 1, num_single_layers: 1, attention_head_dim: 16,
    num_attention_heads: 2, joint_attention_dim: 32, pooled_projection_dim: 32, guidance_embeds: true, axes_dims_rope: [4, 6, 6] }, { seed: 2 });
  const vae = await x2i.AutoencoderKL.fromConfig({ block_out_channels: [8, 16], down_block_types: ['DownEncoderBlock2D', 'DownEncoderBlock2D'],
    up_block_types: ['UpDecoderBlock2D', 'UpDecoderBlock2D'], layers_per_block: 1, latent_channels: 4, norm_num_groups: 4 }, { seed: 3 });
  const textEncoder = clip.text;  // the teacher's CLIP: the scorer's text tower (hidden 32 = the pooled width)
  own.push(textEncoder2, transformer, vae);
  teacher = new x2i.FluxPipeline({ transformer, vae, textEncoder, textEncoder2,
    tokenizer2: x2i.T5Tokenizer.fromPretrained(path.join(golden, 'tokenizers', 't5-like-tokenizer.json')) });
  served = await x2i.randomServedModel({ seed: 4 });
});

afterAll(() => {
  for (const m of own) m.dispose();
  served?.dispose();
  clip?.dispose();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

describe('evaluatePrompts (x2i eval --prompts)', () => {
  const prompts = ['a red square', 'two blue circles'];
  const gen = { height: 32, width: 32, numInferenceSteps: 2, guidanceScale: 3.5 };

  it('scores teacher and student per prompt as the scorer does on their images alone; PNGs, summary, progress', async () => {
    const seen: number[] = [], pngs: Buffer[] = [];
    const r = await evaluatePrompts({ teacher, student: served.generator as x2i.X2IGenerator, clip, prompts, ...gen, seed: 10,
      studentOptions: { tokenizer: served.tokenizer, maxLength: served.maxLength },
      onPrompt: (i) => { seen.push(i); }, onImages: (_i, t, s) => { pngs.push(t, s); } });
    expect(seen).toEqual([0, 1]);
    expect(r.prompts.map((p) => [p.prompt, p.seed])).toEqual([['a red square', 10], ['two blue circles', 11]]);
    expect(pngs).toHaveLength(4);
    for (const b of pngs) expect(b.subarray(1, 4).toString('latin1')).toBe('PNG');
    for (const [i, row] of r.prompts.entries()) {
      for (const s of [row.clipTeacher, row.clipStudent]) expect(s > 0 && s <= 100).toBe(true);
      expect(row.ssim).toBeGreaterThanOrEqual(-1);
      expect(row.ssim).toBeLessThanOrEqual(1);
      expect(row.psnr).toBeGreaterThan(0);
      // the same images, made alone: the same scores
      const t = await teacher.generate({ ...gen, seed: row.seed, prompt: prompts[i] });
      const s = await (served.generator as x2i.X2IGenerator).generate({ ...gen, seed: row.seed, prompt: prompts[i], tokenizer: served.tokenizer,
        maxLength: served.maxLength });
      expect(row.clipTeacher).toBeCloseTo((await clip.score(t.images, [prompts[i]]))[0], 4);
      expect(row.clipStudent).toBeCloseTo((await clip.score(s.images, [prompts[i]]))[0], 4);
      t.images.dispose();
      s.images.dispose();
    }
    const mean = (k: 'clipTeacher' | 'clipStudent' | 'ssim' | 'psnr') => r.prompts.reduce((a, p) => a + p[k], 0) / r.prompts.length;
    expect(r.summary.n).toBe(2);
    for (const k of ['clipTeacher', 'clipStudent', 'ssim', 'psnr'] as const) expect(r.summary[k]).toBeCloseTo(mean(k), 6);
    expect(r.summary.ratio).toBeCloseTo(mean('clipStudent') / mean('clipTeacher'), 6);
    expect(new Set(r.prompts.flatMap((p) => [p.clipTeacher, p.clipStudent])).size).toBe(4);  // four images, four scores
  }, 120_000);

  it("no ratio where the teacher's CLIP scores are all 0 (the fixture's own visual projection)", async () => {
    const vision = await x2i.ClipVisionEncoder.fromPretrained(path.join(root, 'test', 'fixtures', 'clip'));
    try {
      const r = await evaluatePrompts({ teacher, student: served.generator as x2i.X2IGenerator, clip: new ClipScorer({ text: clip.text, vision }),
        prompts: prompts.slice(0, 1), ...gen, studentOptions: { tokenizer: served.tokenizer, maxLength: served.maxLength } });
      expect(r.summary.clipTeacher).toBe(0);
      expect(r.summary.ratio).toBeNull();
    } finally {
      vision.dispose();
    }
  }, 60_000);

  it('refuses empty prompt lists and stops on an aborted signal', async () => {
    await expect(evaluatePrompts({ teacher, student: served.generator as x2i.X2IGenerator, clip, prompts: [] })).rejects.toThrow(/prompts/);
    const ac = new AbortController();
    ac.abort();
    await expect(evaluatePrompts({ teacher, student: served.generator as x2i.X2IGenerator, clip, prompts, ...gen, signal: ac.signal }))
      .rejects.toThrow(/abort/i);
  });
});
