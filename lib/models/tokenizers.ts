/**
 * Tokenizers in Node from local files (no downloads), on @huggingface/tokenizers (the tokenizer.json pipeline)
 * and @huggingface/jinja (chat templates): Qwen2/2.5 (chat template, X2I's prompt, image placeholders, left
 * padding), T5 (`</s>`, right padding with 0) and CLIP (BOS/EOS, padding with EOS; also from vocab.json +
 * merges.txt, as FLUX's `tokenizer/` folder ships it).
 */
import fs from 'node:fs';
import path from 'node:path';
import { Template } from '@huggingface/jinja';
import { Tokenizer } from '@huggingface/tokenizers';
import { X2IError, invalidArg } from '../core/errors.js';
import { Tensor } from '../core/tensor.js';

export interface Encoded {
  /** [B, S] int64 */
  inputIds: Tensor;
  /** [B, S] int64, 1 for tokens and 0 for padding */
  attentionMask: Tensor;
}

/** Anything that tokenizes prompts the way the text encoders expect (ClipTokenizer, T5Tokenizer, or your own). */
export interface PromptTokenizer {
  encode(text: string | string[], opts?: EncodeOptions): Encoded;
}

export interface EncodeOptions {
  /** Length to pad and truncate to. */
  maxLength?: number;
  /** 'max_length' (default): every row maxLength long; 'longest': as long as the longest row; false: no padding
   * (one prompt only). */
  padding?: 'max_length' | 'longest' | false;
}

function readJson(file: string): Record<string, unknown> {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new X2IError(`${file}: no such file`, 'ERR_FILE_NOT_FOUND');
    throw new X2IError(`${file}: not valid JSON (${(e as Error).message})`, 'ERR_TOKENIZER');
  }
}

/** tokenizer.json of a folder (or the file itself), with tokenizer_config.json when present. */
function locate(p: string, file = 'tokenizer.json'): { json: string; dir: string } {
  if (!fs.existsSync(p)) throw new X2IError(`${p}: no such file or folder`, 'ERR_FILE_NOT_FOUND');
  const dir = fs.statSync(p).isDirectory() ? p : path.dirname(p);
  return { json: fs.statSync(p).isDirectory() ? path.join(p, file) : p, dir };
}

function tokenizerFrom(json: Record<string, unknown>, config: Record<string, unknown>, source: string): Tokenizer {
  try {
    return new Tokenizer(json as never, config as never);
  } catch (e) {
    throw new X2IError(`${source}: cannot build the tokenizer (${(e as Error).message})`, 'ERR_TOKENIZER');
  }
}

/** Pads rows to one length on one side and stacks them as int64 tensors. */
function batch(rows: number[][], padId: number, side: 'left' | 'right', length: number): Encoded {
  const B = rows.length;
  const ids = new BigInt64Array(B * length), mask = new BigInt64Array(B * length);
  rows.forEach((r, b) => {
    const off = side === 'left' ? length - r.length : 0;
    for (let i = 0; i < length; i++) {
      const j = i - off;
      const real = j >= 0 && j < r.length;
      ids[b * length + i] = BigInt(real ? r[j] : padId);
      mask[b * length + i] = real ? 1n : 0n;
    }
  });
  return { inputIds: Tensor.fromArray(ids, [B, length]), attentionMask: Tensor.fromArray(mask, [B, length]) };
}

function padLength(rows: number[][], opts: EncodeOptions, defaultMax: number): number {
  const padding = opts.padding ?? 'max_length';
  const longest = Math.max(0, ...rows.map((r) => r.length));
  if (padding === 'max_length') return opts.maxLength ?? defaultMax;
  if (padding === false && rows.length > 1 && rows.some((r) => r.length !== longest))
    throw new X2IError('padding: false needs rows of one length (use "longest" or "max_length")', 'ERR_INVALID_ARG');
  return longest;
}

function texts(t: string | string[]): string[] {
  const a = Array.isArray(t) ? t : [t];
  if (!a.every((x) => typeof x === 'string')) throw invalidArg('text', 'a string or an array of strings', t);
  return a;
}

function tokenId(tok: Tokenizer, token: string, source: string): number {
  const id = tok.token_to_id(token);
  if (id === undefined || id === null) throw new X2IError(`${source}: the vocabulary has no '${token}'`, 'ERR_TOKENIZER');
  return id;
}

// ------------------------------------------------------------------------------------------------ T5
export class T5Tokenizer {
  private constructor(private readonly tok: Tokenizer, readonly eosId: number, readonly padId: number) {}

  /** FLUX's `tokenizer_2/` (tokenizer.json) or a tokenizer.json file. */
  static fromPretrained(p: string): T5Tokenizer {
    const { json, dir } = locate(p);
    const cfgFile = path.join(dir, 'tokenizer_config.json');
    const tok = tokenizerFrom(readJson(json), fs.existsSync(cfgFile) ? readJson(cfgFile) : {}, json);
    return new T5Tokenizer(tok, tokenId(tok, '</s>', json), tokenId(tok, '<pad>', json));
  }

  /** Ids of one text, `</s>` appended. */
  tokenize(text: string): number[] {
    return this.tok.encode(text, { add_special_tokens: true }).ids;
  }

  /** Truncated to maxLength (default 512, `</s>` kept last) and padded right with `<pad>` (0). */
  encode(text: string | string[], opts: EncodeOptions = {}): Encoded {
    const max = opts.maxLength ?? 512;
    const rows = texts(text).map((t) => {
      const ids = this.tok.encode(t, { add_special_tokens: false }).ids.slice(0, max - 1);
      return [...ids, this.eosId];
    });
    return batch(rows, this.padId, 'right', padLength(rows, opts, max));
  }
}

// ------------------------------------------------------------------------------------------------ CLIP
/** The CLIP BPE pipeline around a vocab and merges (what the openai tokenizer.json holds). */
function clipTokenizerJson(vocab: Record<string, number>, merges: string[][]): Record<string, unknown> {
  const special = (content: string) => ({ id: vocab[content], content, single_word: false, lstrip: false, rstrip: false,
    normalized: false, special: true });
  return {
    version: '1.0', truncation: null, padding: null,
    added_tokens: [special('<|startoftext|>'), special('<|endoftext|>')],
    normalizer: { type: 'Sequence', normalizers: [{ type: 'NFC' }, { type: 'Replace', pattern: { Regex: '\\s+' }, content: ' ' },
      { type: 'Lowercase' }] },
    pre_tokenizer: { type: 'Sequence', pretokenizers: [
      { type: 'Split', pattern: { Regex: "'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+" }, behavior: 'Removed', invert: true },
      { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false }] },
    post_processor: { type: 'RobertaProcessing', sep: ['<|endoftext|>', vocab['<|endoftext|>']],
      cls: ['<|startoftext|>', vocab['<|startoftext|>']], trim_offsets: false, add_prefix_space: false },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: { type: 'BPE', dropout: null, unk_token: '<|endoftext|>', continuing_subword_prefix: null, end_of_word_suffix: '</w>',
      fuse_unk: false, byte_fallback: false, ignore_merges: false, vocab, merges },
  };
}

export class ClipTokenizer {
  private constructor(private readonly tok: Tokenizer, readonly bosId: number, readonly eosId: number, readonly padId: number) {}

  /** A tokenizer.json, or a folder with tokenizer.json or with vocab.json + merges.txt (FLUX's `tokenizer/`). */
  static fromPretrained(p: string): ClipTokenizer {
    const { json, dir } = locate(p);
    const cfgFile = path.join(dir, 'tokenizer_config.json');
    const cfg = fs.existsSync(cfgFile) ? readJson(cfgFile) : {};
    let tj: Record<string, unknown>;
    if (fs.existsSync(json)) {
      tj = readJson(json);
    } else {
      const vocabFile = path.join(dir, 'vocab.json'), mergesFile = path.join(dir, 'merges.txt');
      if (!fs.existsSync(vocabFile) || !fs.existsSync(mergesFile))
        throw new X2IError(`${dir}: no tokenizer.json, and no vocab.json + merges.txt to build one from`, 'ERR_FILE_NOT_FOUND');
      const merges = fs.readFileSync(mergesFile, 'utf8').split('\n').filter((l) => l && !l.startsWith('#version'))
        .map((l) => l.split(' '));
      const bad = merges.findIndex((m) => m.length !== 2);
      if (bad >= 0) throw new X2IError(`${mergesFile}: line ${bad + 2} is not a merge ("a b")`, 'ERR_TOKENIZER');
      const vocab = readJson(vocabFile) as Record<string, number>;
      for (const t of ['<|startoftext|>', '<|endoftext|>'])
        if (typeof vocab[t] !== 'number') throw new X2IError(`${vocabFile}: no '${t}'`, 'ERR_TOKENIZER');
      tj = clipTokenizerJson(vocab, merges);
    }
    const tok = tokenizerFrom(tj, cfg, json);
    const eos = tokenId(tok, '<|endoftext|>', json);
    const padToken = typeof cfg.pad_token === 'string' ? cfg.pad_token : '<|endoftext|>';
    return new ClipTokenizer(tok, tokenId(tok, '<|startoftext|>', json), eos, tokenId(tok, padToken, json));
  }

  /** Ids of one text with BOS and EOS. */
  tokenize(text: string): number[] {
    return this.tok.encode(text, { add_special_tokens: true }).ids;
  }

  /** [BOS] + content (truncated to maxLength − 2) + [EOS], padded right with the pad token (EOS) to 77. */
  encode(text: string | string[], opts: EncodeOptions = {}): Encoded {
    const max = opts.maxLength ?? 77;
    const rows = texts(text).map((t) => [this.bosId, ...this.tok.encode(t, { add_special_tokens: false }).ids.slice(0, max - 2), this.eosId]);
    return batch(rows, this.padId, 'right', padLength(rows, opts, max));
  }
}

// ------------------------------------------------------------------------------------------------ Qwen
/** Qwen2-VL / Qwen2.5-VL's chat template (chat_template.json as released). */
export const QWEN_VL_CHAT_TEMPLATE = "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}" +
  "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n" +
  "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n" +
  "{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}" +
  "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}" +
  "<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'video' or 'video' in content %}" +
  "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}" +
  "<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n" +
  "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

export type ChatContent = string | ({ type: 'text'; text: string } | { type: 'image' } | { type: 'video' })[];
export interface ChatMessage {
  role: 'system' | 'user' | 'assistant';
  content: ChatContent;
}

/** The Qwen2-VL / Qwen2.5-VL template rendered directly (an exact equivalent of QWEN_VL_CHAT_TEMPLATE). */
function renderQwenVl(messages: ChatMessage[], addGenerationPrompt: boolean, addVisionId: boolean): string {
  let out = '';
  let images = 0, videos = 0;
  messages.forEach((m, i) => {
    if (i === 0 && m.role !== 'system') out += '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n';
    out += `<|im_start|>${m.role}\n`;
    if (typeof m.content === 'string') {
      out += `${m.content}<|im_end|>\n`;
      return;
    }
    for (const c of m.content as Record<string, unknown>[]) {
      if (c.type === 'image' || 'image' in c || 'image_url' in c) {
        images++;
        out += `${addVisionId ? `Picture ${images}: ` : ''}<|vision_start|><|image_pad|><|vision_end|>`;
      } else if (c.type === 'video' || 'video' in c) {
        videos++;
        out += `${addVisionId ? `Video ${videos}: ` : ''}<|vision_start|><|video_pad|><|vision_end|>`;
      } else if ('text' in c) {
        out += String(c.text);
      }
    }
    out += '<|im_end|>\n';
  });
  if (addGenerationPrompt) out += '<|im_start|>assistant\n';
  return out;
}

/** Python's `repr()` of a str: quote choice, escapes, non-printable characters as \x / \u / \U. */
export function pythonRepr(s: string): string {
  const quote = s.includes("'") && !s.includes('"') ? '"' : "'";
  let out = quote;
  for (const ch of s) {
    const cp = ch.codePointAt(0)!;
    if (ch === '\\') out += '\\\\';
    else if (ch === quote) out += '\\' + quote;
    else if (ch === '\n') out += '\\n';
    else if (ch === '\r') out += '\\r';
    else if (ch === '\t') out += '\\t';
    else if (ch !== ' ' && /[\p{Cc}\p{Cf}\p{Cs}\p{Co}\p{Cn}\p{Zl}\p{Zp}\p{Zs}]/u.test(ch))
      out += cp < 0x100 ? `\\x${cp.toString(16).padStart(2, '0')}` : cp < 0x10000 ? `\\u${cp.toString(16).padStart(4, '0')}`
        : `\\U${cp.toString(16).padStart(8, '0')}`;
    else out += ch;
  }
  return out + quote;
}

export class QwenTokenizer {
  readonly padId: number;
  readonly imagePadId: number;
  readonly videoPadId: number;
  private readonly template: Template | null;  // null: the Qwen-VL template, rendered directly

  private constructor(private readonly tok: Tokenizer, chatTemplate: string, source: string) {
    this.padId = tokenId(tok, '<|endoftext|>', source);
    this.imagePadId = tokenId(tok, '<|image_pad|>', source);
    this.videoPadId = tokenId(tok, '<|video_pad|>', source);
    const qwenVl = chatTemplate.replace(/\s+/g, '') === QWEN_VL_CHAT_TEMPLATE.replace(/\s+/g, '');
    try {
      this.template = qwenVl ? null : new Template(chatTemplate);
    } catch (e) {
      throw new X2IError(`${source}: cannot parse the chat template (${(e as Error).message})`, 'ERR_TOKENIZER');
    }
  }

  /** A Qwen2/2.5(-VL) folder (tokenizer.json; the chat template from `opts.chatTemplate`, chat_template.json or
   * tokenizer_config.json, else the released Qwen2.5-VL one) or a tokenizer.json file. */
  static fromPretrained(p: string, opts: { chatTemplate?: string } = {}): QwenTokenizer {
    const { json, dir } = locate(p);
    const cfgFile = path.join(dir, 'tokenizer_config.json'), tmplFile = path.join(dir, 'chat_template.json');
    const cfg = fs.existsSync(cfgFile) ? readJson(cfgFile) : {};
    const tmpl = fs.existsSync(tmplFile) ? String(readJson(tmplFile).chat_template ?? '') : '';
    const chat = opts.chatTemplate ?? (tmpl || (typeof cfg.chat_template === 'string' ? cfg.chat_template : QWEN_VL_CHAT_TEMPLATE));
    return new QwenTokenizer(tokenizerFrom(readJson(json), cfg, json), chat, json);
  }

  /** Plain ids (Qwen adds no special tokens). */
  tokenize(text: string): number[] {
    return this.tok.encode(text, { add_special_tokens: false }).ids;
  }

  applyChatTemplate(messages: ChatMessage[], opts: { addGenerationPrompt?: boolean; addVisionId?: boolean } = {}): string {
    if (!Array.isArray(messages)) throw invalidArg('messages', 'an array of { role, content }', messages);
    const gen = opts.addGenerationPrompt ?? true, vid = opts.addVisionId ?? false;
    if (!this.template) return renderQwenVl(messages, gen, vid);
    return this.template.render({ messages, add_generation_prompt: gen, add_vision_id: vid });
  }

  /** X2I's training prompt: Python's str() of {'Text input': caption, 'Instruction editing description': 'no',
   * 'image input': 'no'} in the chat template (default system prompt). */
  x2iPrompt(caption: string, opts: { instruction?: string; imageInput?: string } = {}): string {
    const dict = `{'Text input': ${pythonRepr(caption)}, 'Instruction editing description': ${pythonRepr(opts.instruction ?? 'no')}, ` +
      `'image input': ${pythonRepr(opts.imageInput ?? 'no')}}`;
    return this.applyChatTemplate([{ role: 'user', content: dict }]);
  }

  /**
   * Tokenizes chat-templated prompts: each `<|image_pad|>` / `<|video_pad|>` becomes as many tokens as its
   * image or video has merged patches (grid t·h·w / 4, in order), rows are truncated to maxLength (default
   * 512) and padded on the left with `<|endoftext|>`, as X2I's training does.
   */
  encode(prompt: string | string[], opts: EncodeOptions & { imageTokens?: number[][]; videoTokens?: number[][];
    paddingSide?: 'left' | 'right' } = {}): Encoded {
    const max = opts.maxLength ?? 512;
    const rows = texts(prompt).map((p, b) => {
      const counts = { [this.imagePadId]: [...(opts.imageTokens?.[b] ?? [])], [this.videoPadId]: [...(opts.videoTokens?.[b] ?? [])] };
      const ids: number[] = [];
      for (const id of this.tokenize(p)) {
        const list = counts[id];
        if (list === undefined) { ids.push(id); continue; }
        const n = list.length ? list.shift()! : 1;
        for (let i = 0; i < n; i++) ids.push(id);
      }
      return ids.slice(0, max);
    });
    return batch(rows, this.padId, opts.paddingSide ?? 'left', padLength(rows, opts, max));
  }
}

// ------------------------------------------------------------------------------------------------ InternVL2.5

/** InternVL2.5's system message (template `internvl2_5`). */
export const INTERNVL_SYSTEM_MESSAGE = '你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。';

/** InternVL2.5's tokenizer (Qwen2.5's vocabulary with `<img>`, `</img>`, `<IMG_CONTEXT>`) and X2I's prompt for it. */
export class InternVLTokenizer {
  readonly padId: number;
  readonly imgContextId: number;

  private constructor(private readonly tok: Tokenizer, source: string) {
    this.padId = tokenId(tok, '<|endoftext|>', source);
    this.imgContextId = tokenId(tok, '<IMG_CONTEXT>', source);
    for (const t of ['<img>', '</img>', '<|im_start|>', '<|im_end|>']) tokenId(tok, t, source);
  }

  /** An InternVL2.5 folder (tokenizer.json, also under tokenizer/) or a tokenizer.json file. */
  static fromPretrained(p: string): InternVLTokenizer {
    const direct = fs.existsSync(p) && fs.statSync(p).isDirectory() && !fs.existsSync(path.join(p, 'tokenizer.json')) &&
      fs.existsSync(path.join(p, 'tokenizer', 'tokenizer.json')) ? path.join(p, 'tokenizer') : p;
    const { json, dir } = locate(direct);
    const cfgFile = path.join(dir, 'tokenizer_config.json');
    return new InternVLTokenizer(tokenizerFrom(readJson(json), fs.existsSync(cfgFile) ? readJson(cfgFile) : {}, json), json);
  }

  /** Plain ids (no special tokens added; the ones written in the text are parsed). */
  tokenize(text: string): number[] {
    return this.tok.encode(text, { add_special_tokens: false }).ids;
  }

  /**
   * X2I's InternVL prompt (its `gene_token`): the question is Python's str() of {'Text input': text, 'Instruction
   * editing description': instruction ('no')}; each image puts `<image>\n` in front of it and becomes `<img>` +
   * `<IMG_CONTEXT>` × (tokensPerTile · its tiles) + `</img>`, in order; then the `internvl2_5` chat template with its
   * system message and the assistant's turn opened.
   */
  prompt(text: string, opts: { instruction?: string; imageTiles?: number[]; tokensPerTile?: number } = {}): string {
    if (typeof text !== 'string') throw invalidArg('text', 'a string', text);
    const tiles = opts.imageTiles ?? [];
    if (tiles.length && !(Number.isSafeInteger(opts.tokensPerTile) && opts.tokensPerTile! > 0))
      throw invalidArg('tokensPerTile', 'a positive integer (the model\'s tokens per tile)', opts.tokensPerTile);
    if (!tiles.every((n) => Number.isSafeInteger(n) && n > 0)) throw invalidArg('imageTiles', 'positive tile counts', tiles);
    let q = `{'Text input': ${pythonRepr(text)}, 'Instruction editing description': ${pythonRepr(opts.instruction ?? 'no')}}`;
    q = '<image>\n'.repeat(tiles.length) + q;
    for (const n of tiles) q = q.replace('<image>', `<img>${'<IMG_CONTEXT>'.repeat(n * opts.tokensPerTile!)}</img>`);
    return `<|im_start|>system\n${INTERNVL_SYSTEM_MESSAGE}<|im_end|>\n<|im_start|>user\n${q}<|im_end|>\n<|im_start|>assistant\n`;
  }

  /** Rows truncated to maxLength (default 512) and padded on the right with `<|endoftext|>` (X2I's setting:
   * padding 'max_length'; 'longest' or false as for the other tokenizers). */
  encode(prompt: string | string[], opts: EncodeOptions = {}): Encoded {
    const max = opts.maxLength ?? 512;
    const rows = texts(prompt).map((p) => this.tokenize(p).slice(0, max));
    return batch(rows, this.padId, 'right', padLength(rows, opts, max));
  }
}

// ------------------------------------------------------------------------------------------------ MiniCPM-o 2.6

const CHATML_DEFAULT_SYSTEM = "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}" +
  "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}{{ '<|im_start|>' + message['role'] + " +
  "'\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/** MiniCPM-o 2.6's tokenizer (Qwen2's vocabulary with `<unk>`, `<image>`, `<slice>`, `<|audio_start|>`, ...) and its
 * chat template (the folder's chat_template.jinja or tokenizer_config.json, else ChatML with the default system
 * message). */
export class MiniCPMOTokenizer {
  readonly ids: Readonly<Record<'unk' | 'imStart' | 'imEnd' | 'sliceStart' | 'sliceEnd' | 'audioStart' | 'audioEnd', number>>;
  readonly padId: number;
  private readonly template: Template;

  private constructor(private readonly tok: Tokenizer, chatTemplate: string, source: string) {
    this.padId = tokenId(tok, '<|endoftext|>', source);
    this.ids = Object.freeze({ unk: tokenId(tok, '<unk>', source), imStart: tokenId(tok, '<image>', source), imEnd: tokenId(tok, '</image>', source),
      sliceStart: tokenId(tok, '<slice>', source), sliceEnd: tokenId(tok, '</slice>', source),
      audioStart: tokenId(tok, '<|audio_start|>', source), audioEnd: tokenId(tok, '<|audio_end|>', source) });
    try {
      this.template = new Template(chatTemplate);
    } catch (e) {
      throw new X2IError(`${source}: cannot parse the chat template (${(e as Error).message})`, 'ERR_TOKENIZER');
    }
  }

  /** A MiniCPM-o folder (tokenizer.json, also under tokenizer/) or a tokenizer.json file. */
  static fromPretrained(p: string): MiniCPMOTokenizer {
    const sub = fs.existsSync(p) && fs.statSync(p).isDirectory() && !fs.existsSync(path.join(p, 'tokenizer.json')) &&
      fs.existsSync(path.join(p, 'tokenizer', 'tokenizer.json')) ? path.join(p, 'tokenizer') : p;
    const { json, dir } = locate(sub);
    const cfgFile = path.join(dir, 'tokenizer_config.json'), jinja = path.join(dir, 'chat_template.jinja');
    const cfg = fs.existsSync(cfgFile) ? readJson(cfgFile) : {};
    const chat = fs.existsSync(jinja) ? fs.readFileSync(jinja, 'utf8') : typeof cfg.chat_template === 'string' ? cfg.chat_template : CHATML_DEFAULT_SYSTEM;
    return new MiniCPMOTokenizer(tokenizerFrom(readJson(json), cfg, json), chat, json);
  }

  /** One user turn in the chat template, the assistant's turn opened. */
  chat(content: string): string {
    if (typeof content !== 'string') throw invalidArg('content', 'a string', content);
    return this.template.render({ messages: [{ role: 'user', content }], add_generation_prompt: true });
  }

  /** Plain ids (special tokens written in the text are parsed; none added). */
  tokenize(text: string): number[] {
    return this.tok.encode(text, { add_special_tokens: false }).ids;
  }
}
