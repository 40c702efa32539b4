/**
 * `x2i.createServer`: the HTTP generation service (and `x2i serve`'s body), on Fastify.
 *
 * It wraps generators the caller built — an `X2IGenerator` (the student: prompt text in any language, prompt images)
 * and/or a `FluxPipeline` with its text encoders (the teacher) — behind:
 *
 *   POST /v1/generate          JSON (or multipart/form-data) in; the image's bytes out (PNG by default), or JSON
 *                              (`accept: application/json` or `"response": "json"`: base64 + seed, size, timings)
 *   POST /v1/generate/stream   the same request; Server-Sent Events: `queued`, `start`, one `progress` per denoising
 *                              step, then `result` (the JSON response) or `error` (also `POST /v1/generate?stream=1`)
 *   GET  /health               { status, models, devices } (503 while shutting down)
 *   GET  /metrics              Prometheus text: queue length, in-flight, requests by status, latency histogram,
 *                              images generated and per second, denoising steps, batches, tensor and GPU memory
 *
 * Work goes into one bounded queue per device (the transformer's): over `maxQueue` waiting requests a request gets
 * 429 with `Retry-After`. One batch runs at a time per device; compatible requests (one model, the same size, steps,
 * guidance and LoRA scales, no init image) that wait together — or arrive within `batchWindowMs` of the first — run
 * as one batch of up to `maxBatch`: each request's conditioning and seeded noise are stacked along the batch
 * dimension and `FluxPipeline.generate` denoises them in one forward per step. A client that disconnects is dropped
 * from the queue, or, once its batch runs, the batch stops at the next step boundary when every request in it has
 * gone (the pipeline checks its AbortSignal before each step). `close()` refuses new and queued work with 503, lets
 * the running batches finish, then closes the listener. Every tensor a request makes is disposed when it ends; the
 * images are encoded (PNG, JPEG, WebP) on the host after their batch has left the device.
 *
 * A request alone gives exactly the bytes of `generate()` with the same options and seed; in a batch its image agrees
 * with that up to float rounding (the batched matrix products round differently): `maxBatch: 1` for byte-exact
 * reproducibility. Image answers carry `x-x2i-seed`, `x-x2i-batch-size` and `server-timing` (queue, encode, generate,
 * image, total). Errors are `{ error: { code, field, message } }` with 400 (naming the field), 404, 413, 415, 429,
 * 500 or 503.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { FastifyInstance, FastifyReply, FastifyRequest, FastifyServerOptions } from 'fastify';
import type {} from '@fastify/multipart';  // its request.parts() / isMultipart() types
import { X2IError, nativeCall } from '../core/errors.js';
import { addon } from '../core/native.js';
import { LIMITS, finiteOption, imageSide, integerOption, parseNumberArg, positiveInt, seedOption } from '../core/options.js';
import { Tensor, cuda, memory, randn } from '../core/tensor.js';
import type { TypedArray } from '../core/native.js';
import { type FluxPipeline, encodeRgb, imagesToRgb } from '../sample/pipeline.js';
import type { X2IGenerator } from '../sample/generator.js';
import type { StudentEncodeOptions, StudentPrompt } from '../models/students.js';
import type { RgbImage } from '../models/qwen_vision.js';

/** What the service runs: the X2I student (`X2IGenerator`) or the teacher (`FluxPipeline` with `textEncoder` and
 * `textEncoder2`: the service takes prompts as text). */
export type ServedGenerator = X2IGenerator | FluxPipeline;

/** Defaults of the requests that leave a field out. */
export interface GenerationDefaults {
  /** Default 1024. */
  height?: number;
  /** Default 1024. */
  width?: number;
  /** Default 28. */
  numInferenceSteps?: number;
  /** Default 3.5. */
  guidanceScale?: number;
}

/** A generator with what the service needs to run it. */
export interface ServedModel {
  generator: ServedGenerator;
  /** The student's tokenizer (default: the one in its MLLM folder). */
  tokenizer?: StudentEncodeOptions['tokenizer'];
  /** The student's prompt length in tokens (default 512, X2I's). */
  maxLength?: number;
  defaults?: GenerationDefaults;
}

export interface ServerOptions {
  /** One model (named 'default'), or give `models`. */
  generator?: ServedGenerator | ServedModel;
  /** Named models (a request picks one with `"model"`; default: the first). Models on one device share its queue. */
  models?: Record<string, ServedGenerator | ServedModel>;
  /** Default '127.0.0.1' (loopback only; '0.0.0.0' to serve every interface). */
  host?: string;
  /** Default 8080; 0 picks a free port (see `server.port`). */
  port?: number;
  /** Listen on host:port (default true). false: mount `server.handler` in an existing node:http / Express /
   * Connect app instead. Ignored with `app`. */
  listen?: boolean;
  /** An existing Fastify app to add the routes to (under `prefix`), before it listens; `close()` then drains the
   * service's work but leaves the app to its owner. */
  app?: FastifyInstance;
  /** Route prefix in `app` (e.g. '/x2i'). Default none. */
  prefix?: string;
  /** Requests that may wait per device, besides the running batch (default 16); more get 429 + Retry-After. */
  maxQueue?: number;
  /** Requests per batch (default 4; 1 turns batching off: then every image is byte-for-byte the one a lone request
   * gives; batched images agree with it up to float rounding). */
  maxBatch?: number;
  /** How long the first request of a possible batch waits for compatible ones, in ms (default 10). Requests that
   * queue while the device is busy batch without waiting. */
  batchWindowMs?: number;
  /** Largest request body in bytes, JSON or multipart (default 32 MiB): more gets 413. */
  bodyLimit?: number;
  /** Largest image side in pixels, of the requested size and of every input image (default 2048). */
  maxImageSide?: number;
  /** Largest pixel count, of the requested size and of every input image (default 2048 × 2048). */
  maxPixels?: number;
  /** Largest `numInferenceSteps` (default 100). */
  maxSteps?: number;
  /** A folder whose files requests may name as `{ "path": "..." }` images; the resolved real path (symlinks
   * followed) must stay inside it. Default: none (paths are refused). */
  fileRoot?: string;
  /** Fastify's logger (default false). */
  logger?: FastifyServerOptions['logger'];
  /** Called when a generation request has been answered (an access log). */
  onResponse?: (e: RequestLog) => void;
}

/** One answered generation request (`ServerOptions.onResponse`). */
export interface RequestLog {
  /** The request's id (also in the stream's events); undefined when it was refused before it queued. */
  id?: number;
  /** The model that ran it. */
  model?: string;
  /** The HTTP status (499: the client left first). */
  status: number;
  /** Whether it was a Server-Sent-Events stream. */
  stream: boolean;
  /** The request's batch size, once it ran. */
  batchSize?: number;
  /** From its arrival to its answer. */
  ms: number;
  /** The error's code for a status ≥ 400. */
  error?: string;
}

/** Counters and gauges of the service (what /metrics shows). */
export interface ServerStats {
  uptimeSeconds: number;
  closing: boolean;
  devices: Record<string, { queued: number; inFlight: number; capacity: number; batches: number; abortedBatches: number }>;
  /** Generation requests answered, by HTTP status (499: the client left first). */
  requests: Record<string, number>;
  imagesGenerated: number;
  /** Images per second over the last minute. */
  imagesPerSecond: number;
  denoiseSteps: number;
  /** Denoising steps that finished after their batch was aborted (every client gone): at most one per aborted batch. */
  stepsAfterAbort: number;
  /** Requests whose client left while queued / while their batch ran. */
  abortedRequests: { queued: number; running: number };
  /** Requests that ran in a batch of more than one. */
  batchedRequests: number;
}

export interface X2IServer {
  /** `http://host:port` once listening; undefined with `listen: false` or `app`. */
  readonly url: string | undefined;
  readonly port: number | undefined;
  /** The Fastify instance that holds the routes (yours with `app`). */
  readonly app: FastifyInstance;
  /** A Node request listener that serves the routes (node:http, Express, Connect), e.g.
   * `expressApp.use('/x2i', server.handler)`; mount it before any body parser. */
  readonly handler: (req: IncomingMessage, res: ServerResponse) => void;
  /** The served models by name. */
  readonly models: readonly string[];
  readonly closing: boolean;
  stats(): ServerStats;
  /** The Prometheus text of /metrics. */
  metrics(): string;
  /** Refuses new and queued requests (503), waits for the running batches, then closes the listener (not an `app`
   * you passed). Idempotent. The models stay yours to dispose. */
  close(): Promise<void>;
  /** `close()`, for `await using server = await createServer(...)`. */
  [Symbol.asyncDispose](): Promise<void>;
}

const asyncDisposeSymbol: typeof Symbol.asyncDispose = Symbol.asyncDispose ?? Symbol.for('nodejs.asyncDispose');

// ------------------------------------------------------------------------------------------------ errors

/** An HTTP error with the service's JSON body `{ error: { code, field, message } }`. */
class HttpError extends Error {
  constructor(readonly status: number, readonly code: string, message: string, readonly field: string | null = null,
    readonly headers: Record<string, string> = {}) {
    super(message);
  }

  body() {
    return { error: { code: this.code, field: this.field, message: this.message } };
  }
}

const bad = (field: string | null, message: string, code = 'invalid_field') => new HttpError(400, code, message, field);
const CLIENT_GONE = () => new HttpError(499, 'client_closed', 'the client closed the connection');
const SHUTTING_DOWN = () => new HttpError(503, 'shutting_down', 'the service is shutting down', null, { 'retry-after': '5', connection: 'close' });

/** Runs a lib/core/options validator; its X2IError becomes a 400 naming the field. */
function checked<T>(field: string, fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    if (e instanceof X2IError) throw bad(field, e.message);
    throw e;
  }
}

function toHttpError(e: unknown): HttpError {
  if (e instanceof HttpError) return e;
  const err = e as { code?: string; statusCode?: number; message?: string; name?: string };
  const msg = err?.message ?? String(e);
  switch (err?.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
    case 'FST_REQ_FILE_TOO_LARGE':
      return new HttpError(413, 'body_too_large', `the request body is larger than the service takes (${msg})`);
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return new HttpError(415, 'unsupported_media_type', 'send application/json or multipart/form-data');
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return bad(null, 'the JSON body is empty', 'invalid_json');
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
      return bad(null, `the body is not valid JSON (${msg})`, 'invalid_json');
    case 'FST_PARTS_LIMIT':
    case 'FST_FILES_LIMIT':
    case 'FST_FIELDS_LIMIT':
      return new HttpError(413, 'body_too_large', msg);
    case 'FST_INVALID_MULTIPART_CONTENT_TYPE':
      return bad(null, msg, 'invalid_multipart');
    default:
      break;
  }
  if (err instanceof SyntaxError || err?.name === 'SyntaxError') return bad(null, `the body is not valid JSON (${msg})`, 'invalid_json');
  if (e instanceof X2IError && e.code === 'ERR_INVALID_ARG') return bad(null, msg);
  const status = err?.statusCode;
  if (typeof status === 'number' && status >= 400 && status < 500) return new HttpError(status, 'bad_request', msg);
  return new HttpError(500, 'generation_failed', msg);
}

// ------------------------------------------------------------------------------------------------ models

interface ModelEntry {
  name: string;
  kind: 'student' | 'teacher';
  student?: X2IGenerator;
  pipeline: FluxPipeline;
  tokenizer?: StudentEncodeOptions['tokenizer'];
  maxLength: number;
  defaults: Required<GenerationDefaults>;
  /** Image sides must be multiples of this (2 × the VAE's factor; FLUX: 16). */
  multiple: number;
  device: string;
}

function isStudent(g: unknown): g is X2IGenerator {
  return typeof g === 'object' && g !== null && 'mllm' in g && 'alignNet' in g && 'pipeline' in g &&
    typeof (g as X2IGenerator).encode === 'function';
}
function isPipeline(g: unknown): g is FluxPipeline {
  return typeof g === 'object' && g !== null && 'transformer' in g && 'vae' in g && typeof (g as FluxPipeline).generate === 'function';
}

function modelEntry(name: string, m: ServedGenerator | ServedModel, maxSteps: number): ModelEntry {
  const served: ServedModel = isStudent(m) || isPipeline(m) ? { generator: m } : m as ServedModel;
  const where = `createServer: model '${name}'`;
  if (!served || typeof served !== 'object' || !(isStudent(served.generator) || isPipeline(served.generator)))
    throw new X2IError(`${where}: expected an X2IGenerator, a FluxPipeline or { generator, tokenizer?, maxLength?, defaults? }`, 'ERR_INVALID_ARG');
  const g = served.generator;
  const student = isStudent(g) ? g : undefined;
  const pipeline = student ? student.pipeline : g as FluxPipeline;
  if (!student && (!pipeline.textEncoder || !pipeline.textEncoder2))
    throw new X2IError(`${where}: a FluxPipeline needs textEncoder (CLIP) and textEncoder2 (T5): the service takes prompts as text`,
      'ERR_INVALID_ARG');
  const multiple = 2 * pipeline.vaeScaleFactor;
  const d = served.defaults ?? {};
  const defaults = {
    height: d.height === undefined ? 1024 : imageSide(`${where}: defaults.height`, d.height, multiple),
    width: d.width === undefined ? 1024 : imageSide(`${where}: defaults.width`, d.width, multiple),
    numInferenceSteps: d.numInferenceSteps === undefined ? Math.min(28, maxSteps) : positiveInt(`${where}: defaults.numInferenceSteps`, d.numInferenceSteps, maxSteps),
    guidanceScale: d.guidanceScale === undefined ? 3.5 : finiteOption(`${where}: defaults.guidanceScale`, d.guidanceScale, { min: 0, max: 100 }),
  };
  const maxLength = served.maxLength === undefined ? 512 : positiveInt(`${where}: maxLength`, served.maxLength, 1 << 20);
  return { name, kind: student ? 'student' : 'teacher', student, pipeline, tokenizer: served.tokenizer, maxLength, defaults, multiple,
    device: pipeline.transformer.device };
}

// ------------------------------------------------------------------------------------------------ requests

type OutputFormat = 'png' | 'jpeg' | 'webp';
const MIME: Record<OutputFormat, string> = { png: 'image/png', jpeg: 'image/jpeg', webp: 'image/webp' };

/** A validated request. */
interface GenRequest {
  model: ModelEntry;
  prompt: string | StudentPrompt;
  seed: number;
  height: number;
  width: number;
  numInferenceSteps: number;
  guidanceScale: number;
  loraScales?: Record<string, number>;
  image?: Buffer;
  mask?: Buffer;
  strength?: number;
  format: OutputFormat;
  json: boolean;
}

/** The request fields (JSON keys; multipart field names). */
const FIELDS = new Set(['prompt', 'promptImages', 'image', 'mask', 'strength', 'seed', 'height', 'width', 'numInferenceSteps',
  'guidanceScale', 'loraScales', 'model', 'response', 'format']);
const NUMERIC = new Set(['strength', 'seed', 'height', 'width', 'numInferenceSteps', 'guidanceScale']);
const MAX_PROMPT_CHARS = 16_384;
const MAX_PROMPT_IMAGES = 16;

interface Uploads {
  image?: Buffer;
  mask?: Buffer;
  promptImages: Buffer[];
}

interface Limits {
  bodyLimit: number;
  maxImageSide: number;
  maxPixels: number;
  maxSteps: number;
  /** The real path of fileRoot. */
  fileRoot?: string;
}

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;
const BASE64URL = /^[A-Za-z0-9_-]*={0,2}$/;

/** An image given in JSON: base64 (or a data: URL) or { path } under fileRoot. */
async function imageRef(field: string, ref: unknown, limits: Limits): Promise<Buffer> {
  if (typeof ref === 'string') {
    let s = ref;
    const data = /^data:([a-z]+\/[a-z0-9.+-]+)?(;[a-z0-9-]+=[^;,]*)*;base64,/i.exec(s);
    if (data) s = s.slice(data[0].length);
    s = s.replace(/\s+/g, '');
    if (s.length === 0) throw bad(field, `${field}: the image is empty`, 'invalid_image');
    if (!BASE64.test(s) && !BASE64URL.test(s))
      throw bad(field, `${field}: expected base64 image bytes (or a data: URL, or { "path": ... }), found characters outside base64`, 'invalid_image');
    return Buffer.from(s, BASE64.test(s) ? 'base64' : 'base64url');
  }
  if (ref !== null && typeof ref === 'object' && !Array.isArray(ref)) {
    const keys = Object.keys(ref);
    const extra = keys.find((k) => k !== 'path');
    if (extra !== undefined) throw bad(`${field}.${extra}`, `${field}: unknown field '${extra}' (an image is base64 text or { "path": ... })`, 'unknown_field');
    return readUnderRoot(`${field}.path`, (ref as { path?: unknown }).path, limits);
  }
  throw bad(field, `${field}: expected base64 image bytes (a string) or { "path": ... }, found ${ref === null ? 'null' : Array.isArray(ref) ? 'an array' : typeof ref}`);
}

/** A file named by a request: only under fileRoot, its real path (every symlink followed, checked again on the open
 * descriptor) inside the root's. */
async function readUnderRoot(field: string, p: unknown, limits: Limits): Promise<Buffer> {
  if (!limits.fileRoot) throw new HttpError(400, 'path_not_allowed', `${field}: this service takes no server-side paths (start it with fileRoot)`, field);
  if (typeof p !== 'string' || p === '' || p.includes('\0')) throw bad(field, `${field}: expected a file path (a non-empty string)`);
  const root = limits.fileRoot;
  const inside = (real: string) => real === root || real.startsWith(root.endsWith(path.sep) ? root : root + path.sep);
  const notFound = () => bad(field, `${field}: ${JSON.stringify(p)}: no such file under the file root`, 'file_not_found');
  let real: string;
  try {
    real = await fs.promises.realpath(path.resolve(root, p));
  } catch {
    throw notFound();
  }
  if (!inside(real)) throw new HttpError(400, 'path_not_allowed', `${field}: ${JSON.stringify(p)} resolves outside the file root`, field);
  let fh: fs.promises.FileHandle;
  try {
    fh = await fs.promises.open(real, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  } catch {
    throw notFound();
  }
  try {
    // the path was swapped for a link between realpath and open: what the descriptor opened must be inside too
    let opened = real;
    try {
      opened = await fs.promises.readlink(`/proc/self/fd/${fh.fd}`);
    } catch { /* no /proc: the realpath check stands */ }
    if (!inside(opened)) throw new HttpError(400, 'path_not_allowed', `${field}: ${JSON.stringify(p)} resolves outside the file root`, field);
    const st = await fh.stat();
    if (!st.isFile()) throw bad(field, `${field}: ${JSON.stringify(p)} is not a file`);
    if (st.size > limits.bodyLimit) throw bad(field, `${field}: the file has ${st.size} bytes, more than the service takes (${limits.bodyLimit})`, 'image_too_large');
    return await fh.readFile();
  } finally {
    await fh.close();
  }
}

/** An image's size as it will be read (EXIF orientation applied), checked against the limits. */
async function imageSize(field: string, buf: Buffer, limits: Limits): Promise<{ width: number; height: number }> {
  if (buf.length === 0) throw bad(field, `${field}: the image is empty`, 'invalid_image');
  const { default: sharp } = await import('sharp');
  let meta: import('sharp').Metadata;
  try {
    meta = await sharp(buf).metadata();
  } catch (e) {
    throw bad(field, `${field}: cannot decode the image (${(e as Error).message})`, 'invalid_image');
  }
  if (!meta.width || !meta.height || !['png', 'jpeg', 'webp', 'gif', 'tiff', 'avif', 'heif'].includes(String(meta.format)))
    throw bad(field, `${field}: expected a PNG, JPEG or WebP image, found ${meta.format ?? 'unknown data'}`, 'invalid_image');
  const swap = (meta.orientation ?? 1) >= 5;
  const width = swap ? meta.height : meta.width, height = swap ? meta.width : meta.height;
  if (width > limits.maxImageSide || height > limits.maxImageSide)
    throw bad(field, `${field}: ${width}×${height} pixels; the largest side the service takes is ${limits.maxImageSide}`, 'image_too_large');
  if (width * height > limits.maxPixels)
    throw bad(field, `${field}: ${width}×${height} = ${width * height} pixels; the service takes at most ${limits.maxPixels}`, 'image_too_large');
  return { width, height };
}

/** Decoded RGB pixels of a prompt image (EXIF orientation applied, alpha flattened on white). */
async function rgbImage(field: string, buf: Buffer): Promise<RgbImage> {
  const { default: sharp } = await import('sharp');
  try {
    const { data, info } = await sharp(buf).rotate().flatten({ background: '#ffffff' }).removeAlpha().toColourspace('srgb').raw()
      .toBuffer({ resolveWithObject: true });
    return { data: new Uint8Array(data.buffer, data.byteOffset, data.length), width: info.width, height: info.height };
  } catch (e) {
    throw bad(field, `${field}: cannot decode the image (${(e as Error).message})`, 'invalid_image');
  }
}

function typeName(v: unknown): string {
  return v === null ? 'null' : Array.isArray(v) ? 'an array' : typeof v;
}

/** Checks a request body (and its multipart uploads) against the model it names; every failure names the field. */
async function parseRequest(body: unknown, uploads: Uploads, accept: string | undefined, models: Map<string, ModelEntry>,
  limits: Limits): Promise<GenRequest> {
  if (body === null || typeof body !== 'object' || Array.isArray(body))
    throw bad(null, `the request body must be a JSON object, found ${typeName(body)}`, 'invalid_body');
  const b = body as Record<string, unknown>;
  for (const k of Object.keys(b))
    if (!FIELDS.has(k)) throw bad(k, `unknown field '${k}' (the fields: ${[...FIELDS].join(', ')})`, 'unknown_field');
  // the model
  let model: ModelEntry;
  if (b.model === undefined) model = models.values().next().value!;
  else {
    if (typeof b.model !== 'string' || !models.has(b.model))
      throw bad('model', `model: expected one of ${[...models.keys()].map((n) => JSON.stringify(n)).join(', ')}, found ${JSON.stringify(b.model)}`);
    model = models.get(b.model)!;
  }
  // the output
  let json = false;
  if (b.response !== undefined) {
    if (b.response !== 'image' && b.response !== 'json') throw bad('response', `response: expected "image" or "json", found ${JSON.stringify(b.response)}`);
    json = b.response === 'json';
  } else if (accept) {
    const types = accept.split(',').map((s) => s.split(';')[0].trim().toLowerCase());
    json = types.includes('application/json') && !types.some((t) => t.startsWith('image/'));
  }
  let format: OutputFormat = 'png';
  if (b.format !== undefined) {
    if (b.format !== 'png' && b.format !== 'jpeg' && b.format !== 'webp') throw bad('format', `format: expected "png", "jpeg" or "webp", found ${JSON.stringify(b.format)}`);
    format = b.format;
  }
  // the prompt
  if (b.prompt !== undefined && typeof b.prompt !== 'string') throw bad('prompt', `prompt: expected a string, found ${typeName(b.prompt)}`);
  const text = b.prompt as string | undefined;
  if (text !== undefined && text.length > MAX_PROMPT_CHARS)
    throw bad('prompt', `prompt: ${text.length} characters; the service takes at most ${MAX_PROMPT_CHARS}`);
  const refs: unknown[] = [];
  if (b.promptImages !== undefined) {
    if (!Array.isArray(b.promptImages)) throw bad('promptImages', `promptImages: expected an array of images, found ${typeName(b.promptImages)}`);
    refs.push(...b.promptImages);
  }
  const promptImageBytes: [string, Buffer][] = [];
  for (const [i, r] of refs.entries()) promptImageBytes.push([`promptImages[${i}]`, await imageRef(`promptImages[${i}]`, r, limits)]);
  uploads.promptImages.forEach((buf, i) => promptImageBytes.push([`promptImages[${refs.length + i}]`, buf]));
  if (promptImageBytes.length > MAX_PROMPT_IMAGES)
    throw bad('promptImages', `promptImages: ${promptImageBytes.length} images; the service takes at most ${MAX_PROMPT_IMAGES}`);
  if (promptImageBytes.length && model.kind === 'teacher')
    throw bad('promptImages', `promptImages: model '${model.name}' is the teacher (FLUX's text encoders): it reads text only`);
  if (text === undefined && !promptImageBytes.length)
    throw bad('prompt', model.kind === 'student' ? 'prompt: required (a string; or give promptImages)' : 'prompt: required (a string)', 'missing_field');
  // the numbers
  const num = (k: string) => b[k];
  const steps = num('numInferenceSteps') === undefined ? model.defaults.numInferenceSteps
    : checked('numInferenceSteps', () => positiveInt('numInferenceSteps', num('numInferenceSteps'), limits.maxSteps));
  const guidanceScale = num('guidanceScale') === undefined ? model.defaults.guidanceScale
    : checked('guidanceScale', () => finiteOption('guidanceScale', num('guidanceScale'), { min: 0, max: 100 }));
  const seed = num('seed') === undefined ? crypto.randomInt(0, 2 ** 32) : checked('seed', () => seedOption('seed', num('seed')));
  const side = (k: 'height' | 'width') => num(k) === undefined ? undefined : checked(k, () => {
    const v = imageSide(k, num(k), model.multiple);
    if (v > limits.maxImageSide) throw new X2IError(`${k}: expected at most ${limits.maxImageSide} (the service's largest side), got ${v}`);
    return v;
  });
  let height = side('height'), width = side('width');
  let strength: number | undefined;
  if (num('strength') !== undefined) strength = checked('strength', () => finiteOption('strength', num('strength'), { min: 0, max: 1, minExclusive: true }));
  // LoRA adapters loaded on the transformer, by name
  let loraScales: Record<string, number> | undefined;
  if (b.loraScales !== undefined) {
    if (b.loraScales === null || typeof b.loraScales !== 'object' || Array.isArray(b.loraScales))
      throw bad('loraScales', `loraScales: expected an object of adapter name → scale, found ${typeName(b.loraScales)}`);
    const loaded = model.pipeline.transformer.loraAdapters;
    loraScales = {};
    for (const [k, v] of Object.entries(b.loraScales)) {
      if (!Object.prototype.hasOwnProperty.call(loaded, k))
        throw bad(`loraScales.${k}`, `loraScales: no adapter '${k}' on model '${model.name}' (loaded: ${Object.keys(loaded).join(', ') || 'none'})`);
      loraScales[k] = checked(`loraScales.${k}`, () => finiteOption(`loraScales.${k}`, v, { min: -100, max: 100 }));
    }
  }
  // image-to-image and inpainting
  const one = async (k: 'image' | 'mask') => {
    if (b[k] !== undefined && uploads[k]) throw bad(k, `${k}: given twice (a JSON field and an upload)`);
    return b[k] !== undefined ? imageRef(k, b[k], limits) : uploads[k];
  };
  const image = await one('image'), mask = await one('mask');
  if (!image && mask) throw bad('mask', 'mask: inpainting needs the image to inpaint (the field image)');
  if (!image && strength !== undefined) throw bad('strength', 'strength: image-to-image needs an image (the field image)');
  if (image) {
    const size = await imageSize('image', image, limits);
    // diffusers: the image's size, down to a multiple of 2 × the VAE's factor
    const m = model.multiple;
    height ??= Math.floor(size.height / m) * m;
    width ??= Math.floor(size.width / m) * m;
    if (height < m || width < m) throw bad('image', `image: ${size.width}×${size.height} is smaller than the model's ${m}×${m} minimum`, 'invalid_image');
    if (mask) await imageSize('mask', mask, limits);
    const s = strength ?? 0.6;
    if (Math.floor(steps * s) < 1)
      throw bad('strength', `strength: ${s} × numInferenceSteps ${steps} leaves no step to run (⌊steps · strength⌋ must be at least 1)`);
  }
  height ??= model.defaults.height;
  width ??= model.defaults.width;
  if (height * width > limits.maxPixels)
    throw bad('height', `height × width: ${height}×${width} = ${height * width} pixels; the service takes at most ${limits.maxPixels}`);
  const images: RgbImage[] = [];
  for (const [field, buf] of promptImageBytes) {
    await imageSize(field, buf, limits);
    images.push(await rgbImage(field, buf));
  }
  const prompt: string | StudentPrompt = images.length ? { ...(text !== undefined ? { text } : {}), images } : text!;
  return { model, prompt, seed, height, width, numInferenceSteps: steps, guidanceScale, loraScales, image, mask, strength, format, json };
}

/** Multipart: the JSON request in a field named `request` and/or one text field per request field (numbers as
 * decimal text, loraScales as JSON); files in `image`, `mask`, `promptImages` (repeatable). */
async function readMultipart(req: FastifyRequest, limits: Limits): Promise<{ body: Record<string, unknown>; uploads: Uploads }> {
  const fields: Record<string, unknown> = Object.create(null);
  const uploads: Uploads = { promptImages: [] };
  let json: unknown, total = 0;
  const tooLarge = () => new HttpError(413, 'body_too_large', `the request body is larger than the service takes (${limits.bodyLimit} bytes)`);
  for await (const part of req.parts({ limits: { fileSize: limits.bodyLimit, fieldSize: limits.bodyLimit, files: MAX_PROMPT_IMAGES + 2,
    fields: 64, parts: 96 } })) {
    if (part.type === 'file') {
      const buf = await part.toBuffer();
      total += buf.length;
      if (total > limits.bodyLimit) throw tooLarge();
      const k = part.fieldname;
      if (k === 'image' || k === 'mask') {
        if (uploads[k]) throw bad(k, `${k}: uploaded twice`);
        uploads[k] = buf;
      } else if (k === 'promptImages') {
        uploads.promptImages.push(buf);
      } else {
        throw bad(k, `unknown upload '${k}' (files go in image, mask or promptImages)`, 'unknown_field');
      }
      continue;
    }
    const k = part.fieldname, v = String(part.value);
    total += v.length;
    if (total > limits.bodyLimit) throw tooLarge();
    if (k === 'request') {
      try {
        json = JSON.parse(v);
      } catch (e) {
        throw bad('request', `request: not valid JSON (${(e as Error).message})`, 'invalid_json');
      }
      continue;
    }
    if (!FIELDS.has(k)) throw bad(k, `unknown field '${k}' (the fields: ${[...FIELDS].join(', ')})`, 'unknown_field');
    if (k in fields) throw bad(k, `${k}: given twice`);
    if (NUMERIC.has(k)) fields[k] = checked(k, () => parseNumberArg(k, v));
    else if (k === 'loraScales' || k === 'promptImages' || k === 'image' || k === 'mask') {
      try {
        fields[k] = k === 'loraScales' || v.trimStart().startsWith('{') || v.trimStart().startsWith('[') ? JSON.parse(v) : v;
      } catch (e) {
        throw bad(k, `${k}: not valid JSON (${(e as Error).message})`, 'invalid_json');
      }
    } else fields[k] = v;
  }
  let body: Record<string, unknown> = { ...fields };
  if (json !== undefined) {
    if (json === null || typeof json !== 'object' || Array.isArray(json))
      throw bad('request', `request: expected a JSON object, found ${typeName(json)}`, 'invalid_body');
    for (const k of Object.keys(fields)) if (k in (json as object)) throw bad(k, `${k}: given twice (in request and as a field)`);
    body = { ...(json as Record<string, unknown>), ...fields };
  }
  return { body, uploads };
}

// ------------------------------------------------------------------------------------------------ the queue and the batches

interface JobResult {
  image: Buffer;
  format: OutputFormat;
  width: number;
  height: number;
  seed: number;
  batchSize: number;
  timings: { queueMs: number; encodeMs: number; generateMs: number; imageMs: number };
}

interface Job {
  id: number;
  req: GenRequest;
  /** Requests with the same key may share a batch; null: never batched (an init image). */
  key: string | null;
  state: 'queued' | 'running' | 'encoding' | 'done';
  gone: boolean;
  enqueuedAt: number;
  startedAt: number;
  encodeMs: number;
  batch?: Batch;
  onStart?: (batchSize: number, job: Job) => void;
  onProgress?: (step: number, total: number) => void;
  promise: Promise<JobResult>;
  settle(r: JobResult | HttpError): void;
}

interface Batch {
  jobs: Job[];
  ac: AbortController;
}

function batchKey(r: GenRequest): string | null {
  if (r.image) return null;
  const lora = r.loraScales ? Object.entries(r.loraScales).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)) : [];
  return JSON.stringify([r.model.name, r.height, r.width, r.numInferenceSteps, r.guidanceScale, lora]);
}

/** Tensors of one shape but the first dim, stacked along it (through the host: conditioning and noise are small
 * next to a denoising step). */
async function catBatch(ts: Tensor[]): Promise<Tensor> {
  const arrays = await Promise.all(ts.map((t) => t.toArray()));
  const n = arrays.reduce((s, a) => s + a.length, 0);
  const out = new (arrays[0].constructor as new (n: number) => TypedArray)(n);
  let off = 0;
  for (const a of arrays) {
    (out as Float32Array).set(a as Float32Array, off);
    off += a.length;
  }
  const rows = ts.reduce((s, t) => s + t.shape[0], 0);
  return Tensor.fromArray(out as Float32Array, [rows, ...ts[0].shape.slice(1)], { dtype: ts[0].dtype as 'float32', device: ts[0].device });
}

/** The packed noise FluxPipeline draws for a batch of one from `seed`: [1, (h/2)(w/2), 4C]. */
async function packedNoise(pipe: FluxPipeline, r: GenRequest): Promise<Tensor> {
  const f = pipe.vaeScaleFactor;
  const lh = 2 * Math.floor(r.height / (f * 2)), lw = 2 * Math.floor(r.width / (f * 2));
  const C = Number(pipe.transformer.config.in_channels ?? 64) / 4;
  const noise = await randn([1, C, lh, lw], { seed: r.seed, device: pipe.transformer.device, dtype: pipe.transformer.dtype });
  try {
    const ops = addon();
    return new Tensor(await nativeCall(() => ops.packLatents(noise.handle)));
  } finally {
    noise.dispose();
  }
}

/** The conditioning of one request: the student's AlignNet(MLLM) or the teacher's T5 + CLIP. */
async function conditioning(m: ModelEntry, prompt: string | StudentPrompt): Promise<{ seq: Tensor; pooled: Tensor }> {
  if (m.student) {
    const c = await m.student.encode(prompt, { maxLength: m.maxLength, tokenizer: m.tokenizer });
    return { seq: c.encoderHiddenStates, pooled: c.pooledProjections };
  }
  const c = await m.pipeline.encodePrompt(prompt as string);
  return { seq: c.promptEmbeds, pooled: c.pooledPromptEmbeds };
}

const LATENCY_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300];

class Metrics {
  readonly started = performance.now();
  requests = new Map<number, number>();
  latency = { buckets: LATENCY_BUCKETS.map(() => 0), sum: 0, count: 0 };
  queueWait = { sum: 0, count: 0 };
  images = 0;
  steps = 0;
  stepsAfterAbort = 0;
  batchedRequests = 0;
  batchSizes = { sum: 0, count: 0 };
  aborted = { queued: 0, running: 0 };
  /** Completion times of the last minute's images. */
  recent: number[] = [];

  count(status: number): void {
    this.requests.set(status, (this.requests.get(status) ?? 0) + 1);
  }

  observe(seconds: number): void {
    LATENCY_BUCKETS.forEach((b, i) => { if (seconds <= b) this.latency.buckets[i]++; });
    this.latency.sum += seconds;
    this.latency.count++;
  }

  imageDone(): void {
    this.images++;
    const t = performance.now();
    this.recent.push(t);
    while (this.recent.length && this.recent[0] < t - 60_000) this.recent.shift();
  }

  imagesPerSecond(): number {
    const t = performance.now();
    while (this.recent.length && this.recent[0] < t - 60_000) this.recent.shift();
    const window = Math.min(60, Math.max(1e-3, (t - this.started) / 1000));
    return this.recent.length / window;
  }
}

interface ServiceConfig extends Limits {
  maxQueue: number;
  maxBatch: number;
  batchWindowMs: number;
}

/** One device: its bounded queue and the batch that runs on it. */
class DeviceWorker {
  readonly queue: Job[] = [];
  running: Batch | null = null;
  batches = 0;
  abortedBatches = 0;
  /** Running mean of a batch's seconds, for Retry-After. */
  batchSeconds = 0;
  #timer: NodeJS.Timeout | undefined;
  #idle: (() => void)[] = [];
  /** Images being encoded (after their batch left the device). */
  #encoding = new Set<Promise<void>>();

  constructor(readonly device: string, private readonly cfg: ServiceConfig, private readonly metrics: Metrics,
    private readonly isClosing: () => boolean) {}

  get inFlight(): number {
    return this.running ? this.running.jobs.filter((j) => j.state === 'running').length : 0;
  }

  /** A 429 with Retry-After (the queue's batches at the running mean batch time) when the queue is full. */
  checkCapacity(): void {
    if (this.queue.length < this.cfg.maxQueue) return;
    const wait = Math.max(1, Math.ceil(((this.queue.length + 1) / this.cfg.maxBatch + 1) * (this.batchSeconds || 1)));
    throw new HttpError(429, 'queue_full', `the queue of device ${this.device} is full (${this.cfg.maxQueue} waiting); retry after ${wait} s`,
      null, { 'retry-after': String(wait) });
  }

  submit(job: Job): void {
    this.checkCapacity();
    this.queue.push(job);
    this.pump();
  }

  /** A queued job whose client left: out of the queue. */
  drop(job: Job): boolean {
    const i = this.queue.indexOf(job);
    if (i < 0) return false;
    this.queue.splice(i, 1);
    return true;
  }

  /** Rejects every queued job (shutdown). */
  refuseQueued(): void {
    clearTimeout(this.#timer);
    for (const j of this.queue.splice(0)) {
      j.state = 'done';
      j.settle(SHUTTING_DOWN());
    }
  }

  /** Resolves when no batch runs and no image is being encoded. */
  idle(): Promise<void> {
    if (!this.running && this.#encoding.size === 0) return Promise.resolve();
    return new Promise((r) => this.#idle.push(r));
  }

  #notify(): void {
    if (!this.running && this.#encoding.size === 0) for (const r of this.#idle.splice(0)) r();
  }

  pump(): void {
    if (this.running || this.queue.length === 0) return;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    const head = this.queue[0];
    let jobs = [head];
    if (head.key !== null && this.cfg.maxBatch > 1) {
      jobs = [head, ...this.queue.slice(1).filter((j) => j.key === head.key).slice(0, this.cfg.maxBatch - 1)];
      const wait = head.enqueuedAt + this.cfg.batchWindowMs - performance.now();
      if (jobs.length < this.cfg.maxBatch && wait > 0 && !this.isClosing()) {
        this.#timer = setTimeout(() => this.pump(), Math.ceil(wait));
        return;
      }
    }
    for (const j of jobs) this.queue.splice(this.queue.indexOf(j), 1);
    const batch: Batch = { jobs, ac: new AbortController() };
    this.running = batch;
    const t0 = performance.now();
    this.run(batch).catch(() => undefined).finally(() => {
      this.running = null;
      this.batches++;
      const s = (performance.now() - t0) / 1000;
      this.batchSeconds = this.batchSeconds ? 0.8 * this.batchSeconds + 0.2 * s : s;
      this.#notify();
      this.pump();
    });
  }

  /** A running job whose client left: the batch stops at the next step once all of its jobs have. */
  leave(job: Job): void {
    job.gone = true;
    const b = job.batch;
    if (b && this.running === b && b.jobs.every((j) => j.gone || j.state === 'done') && !b.ac.signal.aborted) {
      b.ac.abort(CLIENT_GONE());
      this.abortedBatches++;
    }
  }

  private async run(batch: Batch): Promise<void> {
    const started = performance.now();
    for (const j of batch.jobs) {
      j.state = 'running';
      j.batch = batch;
      j.startedAt = started;
      this.metrics.queueWait.sum += (started - j.enqueuedAt) / 1000;
      this.metrics.queueWait.count++;
      j.onStart?.(batch.jobs.length, j);
    }
    const m = batch.jobs[0].req.model;
    const owned: Tensor[] = [];
    try {
      // each request's conditioning
      const live: { job: Job; seq: Tensor; pooled: Tensor }[] = [];
      for (const job of batch.jobs) {
        if (job.gone) continue;
        const t = performance.now();
        try {
          const c = await conditioning(m, job.req.prompt);
          owned.push(c.seq, c.pooled);
          job.encodeMs = performance.now() - t;
          live.push({ job, ...c });
        } catch (e) {
          const h = toHttpError(e);
          job.state = 'done';
          job.settle(h.status === 400 && h.field === null ? bad('prompt', `prompt: ${h.message}`) : h);
        }
      }
      // one generate per conditioning shape (one, unless a model pads prompts to different lengths)
      const groups = new Map<string, typeof live>();
      for (const x of live) {
        const k = x.seq.shape.slice(1).join(',') + '|' + x.pooled.shape.slice(1).join(',');
        groups.set(k, [...(groups.get(k) ?? []), x]);
      }
      for (const group of groups.values()) await this.generate(m, batch, group, owned);
    } finally {
      for (const t of owned) t.dispose();
      for (const j of batch.jobs) {
        if (j.state === 'done' || j.state === 'encoding') continue;
        j.state = 'done';
        j.settle(j.gone ? CLIENT_GONE() : new HttpError(500, 'generation_failed', 'no result'));
      }
    }
  }

  private async generate(m: ModelEntry, batch: Batch, group: { job: Job; seq: Tensor; pooled: Tensor }[], owned: Tensor[]): Promise<void> {
    const jobs = group.map((g) => g.job).filter((j) => !j.gone);
    if (!jobs.length || batch.ac.signal.aborted) return;
    const g = group.filter((x) => !x.job.gone);
    const r = g[0].job.req, B = g.length;
    const own = (t: Tensor) => (owned.push(t), t);
    const seq = B === 1 ? g[0].seq : own(await catBatch(g.map((x) => x.seq)));
    const pooled = B === 1 ? g[0].pooled : own(await catBatch(g.map((x) => x.pooled)));
    let latents: Tensor | undefined;
    if (B > 1) {
      const noise: Tensor[] = [];
      for (const x of g) noise.push(own(await packedNoise(m.pipeline, x.job.req)));
      latents = own(await catBatch(noise));
      this.metrics.batchedRequests += B;
    }
    this.metrics.batchSizes.sum += B;
    this.metrics.batchSizes.count++;
    const t0 = performance.now();
    let out: Awaited<ReturnType<FluxPipeline['generate']>> | undefined;
    try {
      out = await m.pipeline.generate({ promptEmbeds: seq, pooledPromptEmbeds: pooled, latents, seed: B === 1 ? r.seed : undefined,
        height: r.height, width: r.width, numInferenceSteps: r.numInferenceSteps, guidanceScale: r.guidanceScale, loraScales: r.loraScales,
        ...(r.image ? { image: r.image, mask: r.mask, strength: r.strength } : {}),
        signal: batch.ac.signal,
        onProgress: (p) => {
          if (p.phase !== 'denoise') return;
          this.metrics.steps++;
          if (batch.ac.signal.aborted) this.metrics.stepsAfterAbort++;
          for (const x of g) if (!x.job.gone) x.job.onProgress?.(p.step, p.total);
        } });
      const generateMs = performance.now() - t0;
      const [, , H, W] = out.images.shape;
      const pixels = await imagesToRgb(out.images);
      // the device is free from here: the images are encoded on the host while the next batch runs
      for (const [i, x] of g.entries()) {
        const job = x.job;
        if (job.gone) continue;
        job.state = 'encoding';
        const ti = performance.now();
        const done = encodeRgb(pixels[i], job.req.format).then((image) => {
          this.metrics.imageDone();
          job.settle(job.gone ? CLIENT_GONE() : { image, format: job.req.format, width: W, height: H, seed: job.req.seed, batchSize: B,
            timings: { queueMs: job.startedAt - job.enqueuedAt, encodeMs: job.encodeMs, generateMs, imageMs: performance.now() - ti } });
        }, (e) => job.settle(toHttpError(e))).finally(() => {
          job.state = 'done';
          this.#encoding.delete(done);
          this.#notify();
        });
        this.#encoding.add(done);
      }
    } catch (e) {
      const err = batch.ac.signal.aborted ? CLIENT_GONE() : toHttpError(e);
      for (const x of g) if (x.job.state === 'running') { x.job.state = 'done'; x.job.settle(x.job.gone ? CLIENT_GONE() : err); }
    } finally {
      out?.images.dispose();
      out?.stepLatents?.dispose();
    }
  }
}

// ------------------------------------------------------------------------------------------------ the service

function optionInt(name: string, v: unknown, dflt: number, min: number, max: number): number {
  return v === undefined ? dflt : integerOption(`createServer: ${name}`, v, { min, max });
}

/**
 * Starts the generation service over the generators you built (see the module's comment for the endpoints).
 * Resolves once it listens (or, with `listen: false` / `app`, once the routes are ready).
 */
export async function createServer(options: ServerOptions): Promise<X2IServer> {
  if (options === null || typeof options !== 'object') throw new X2IError('createServer: expected an options object { generator | models, ... }', 'ERR_INVALID_ARG');
  const maxSteps = optionInt('maxSteps', options.maxSteps, 100, 1, LIMITS.inferenceSteps);
  const given: [string, ServedGenerator | ServedModel][] = [];
  if (options.generator !== undefined) given.push(['default', options.generator]);
  if (options.models !== undefined) {
    if (options.models === null || typeof options.models !== 'object') throw new X2IError('createServer: models must be an object of name → model', 'ERR_INVALID_ARG');
    for (const [k, v] of Object.entries(options.models)) {
      if (given.some(([n]) => n === k)) throw new X2IError(`createServer: two models named '${k}'`, 'ERR_INVALID_ARG');
      given.push([k, v]);
    }
  }
  if (!given.length) throw new X2IError('createServer: give a generator (X2IGenerator or FluxPipeline) or models', 'ERR_INVALID_ARG');
  const models = new Map(given.map(([n, m]) => [n, modelEntry(n, m, maxSteps)]));
  const cfg: ServiceConfig = {
    maxQueue: optionInt('maxQueue', options.maxQueue, 16, 0, 1_000_000),
    maxBatch: optionInt('maxBatch', options.maxBatch, 4, 1, 1024),
    batchWindowMs: optionInt('batchWindowMs', options.batchWindowMs, 10, 0, 60_000),
    bodyLimit: optionInt('bodyLimit', options.bodyLimit, 32 * 2 ** 20, 1024, 2 ** 31),
    maxImageSide: optionInt('maxImageSide', options.maxImageSide, 2048, 16, LIMITS.imageSide),
    maxPixels: optionInt('maxPixels', options.maxPixels, 2048 * 2048, 256, LIMITS.imageSide ** 2),
    maxSteps,
  };
  if (options.fileRoot !== undefined) {
    if (typeof options.fileRoot !== 'string' || options.fileRoot === '') throw new X2IError('createServer: fileRoot must be a folder path', 'ERR_INVALID_ARG');
    let st: fs.Stats;
    try {
      cfg.fileRoot = fs.realpathSync(options.fileRoot);
      st = fs.statSync(cfg.fileRoot);
    } catch {
      throw new X2IError(`createServer: fileRoot ${JSON.stringify(options.fileRoot)}: no such folder`, 'ERR_FILE_NOT_FOUND');
    }
    if (!st.isDirectory()) throw new X2IError(`createServer: fileRoot ${JSON.stringify(options.fileRoot)} is not a folder`, 'ERR_INVALID_ARG');
  }
  const host = options.host ?? '127.0.0.1';
  if (typeof host !== 'string' || host === '') throw new X2IError(`createServer: host must be a host name or address, got ${JSON.stringify(host)}`, 'ERR_INVALID_ARG');
  const port = optionInt('port', options.port, 8080, 0, 65535);
  if (options.prefix !== undefined && (typeof options.prefix !== 'string' || !/^\/[A-Za-z0-9._~\-/]*$/.test(options.prefix)))
    throw new X2IError(`createServer: prefix must be a path like '/x2i', got ${JSON.stringify(options.prefix)}`, 'ERR_INVALID_ARG');

  const metrics = new Metrics();
  let closing = false;
  const workers = new Map<string, DeviceWorker>();
  for (const m of models.values())
    if (!workers.has(m.device)) workers.set(m.device, new DeviceWorker(m.device, cfg, metrics, () => closing));
  let nextId = 1;

  const { default: Fastify } = await import('fastify');
  const { default: multipart } = await import('@fastify/multipart');
  const owns = !options.app;
  const app: FastifyInstance = options.app ?? Fastify({ logger: options.logger ?? false, bodyLimit: cfg.bodyLimit,
    forceCloseConnections: 'idle', return503OnClosing: true });

  // the listener's connections and their requests in flight, for close()
  const sockets = new Map<import('node:net').Socket, number>();
  if (owns) {
    app.server.on('connection', (socket: import('node:net').Socket) => {
      sockets.set(socket, 0);
      socket.once('close', () => sockets.delete(socket));
    });
    app.server.on('request', (req: IncomingMessage, res: ServerResponse) => {
      const socket = req.socket;
      sockets.set(socket, (sockets.get(socket) ?? 0) + 1);
      res.once('close', () => { if (sockets.has(socket)) sockets.set(socket, Math.max(0, sockets.get(socket)! - 1)); });
    });
  }

  const submit = (req: GenRequest, hooks: Pick<Job, 'onStart' | 'onProgress'> = {}): Job => {
    let settle!: (r: JobResult | HttpError) => void;
    const promise = new Promise<JobResult>((resolve, reject) => {
      settle = (r) => (r instanceof HttpError ? reject(r) : resolve(r));
    });
    promise.catch(() => undefined);  // handled by the route; never an unhandled rejection
    const job: Job = { id: nextId++, req, key: batchKey(req), state: 'queued', gone: false, enqueuedAt: performance.now(), startedAt: 0,
      encodeMs: 0, promise, settle, ...hooks };
    workers.get(req.model.device)!.submit(job);
    return job;
  };

  /** The client left: drop the job from its queue, or let its batch stop at the next step. */
  const abandon = (job: Job) => {
    if (job.state === 'done' || job.gone) return;
    if (job.state === 'encoding') { job.gone = true; return; }  // its image is dropped
    const w = workers.get(job.req.model.device)!;
    if (job.state === 'queued') {
      job.gone = true;
      if (w.drop(job)) {
        metrics.aborted.queued++;
        job.state = 'done';
        job.settle(CLIENT_GONE());
      }
      return;
    }
    metrics.aborted.running++;
    w.leave(job);
  };

  const resultJson = (job: Job, r: JobResult, received: number) => ({
    image: r.image.toString('base64'), format: r.format, mimeType: MIME[r.format], width: r.width, height: r.height, seed: r.seed,
    model: job.req.model.name, numInferenceSteps: job.req.numInferenceSteps, guidanceScale: job.req.guidanceScale, batchSize: r.batchSize,
    timings: { ...roundAll(r.timings), totalMs: round(performance.now() - received) },
  });

  const generate = async (request: FastifyRequest, reply: FastifyReply, stream: boolean) => {
    const received = performance.now();
    let status = 500, counted = false, job: Job | undefined, errorCode: string | undefined, batchSize: number | undefined;
    try {
      if (closing) throw SHUTTING_DOWN();
      const type = String(request.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
      if (type !== '' && type !== 'application/json' && !request.isMultipart())
        throw new HttpError(415, 'unsupported_media_type', `send application/json or multipart/form-data, not ${type}`);
      // a full queue refuses before any image is read or decoded
      const named = (request.body as { model?: unknown } | undefined)?.model;
      const target = typeof named === 'string' && models.has(named) ? models.get(named)! : models.values().next().value!;
      if (!request.isMultipart()) workers.get(target.device)!.checkCapacity();
      const { body, uploads } = request.isMultipart() ? await readMultipart(request, cfg)
        : { body: request.body, uploads: { promptImages: [] } as Uploads };
      const req = await parseRequest(body, uploads, request.headers.accept, models, cfg);
      if (closing) throw SHUTTING_DOWN();
      // a stream's events from the moment the job exists (it may start at once); sent once the stream is open
      let open = false;
      const early: [string, unknown][] = [];
      const res = reply.raw;
      const send = (event: string, data: unknown) => {
        if (!open) early.push([event, data]);
        else if (!res.writableEnded && !res.destroyed) res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
      };
      const hooks = stream ? { onStart: (n: number, started: Job) => send('start', { id: started.id, batchSize: n }),
        onProgress: (step: number, total: number) => send('progress', { step, total }) } : {};
      const j = job = submit(req, hooks);  // may refuse with 429
      res.on('close', () => { if (!res.writableFinished) abandon(j); });
      if (stream) {
        reply.hijack();
        res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache, no-transform',
          'x-accel-buffering': 'no', ...(closing ? { connection: 'close' } : {}) });
        const w = workers.get(req.model.device)!;
        open = true;
        send('queued', { id: j.id, position: w.queue.indexOf(j) + 1, seed: req.seed });
        for (const [event, data] of early.splice(0)) send(event, data);
        const ping = setInterval(() => { if (!res.writableEnded && !res.destroyed) res.write(': ping\n\n'); }, 15_000);
        try {
          const r = await j.promise;
          batchSize = r.batchSize;
          send('result', resultJson(j, r, received));
          status = 200;
          metrics.observe((performance.now() - received) / 1000);
        } catch (e) {
          const h = toHttpError(e);
          status = j.gone ? 499 : h.status;
          errorCode = h.code;
          send('error', h.body());
        } finally {
          clearInterval(ping);
          metrics.count(status);
          counted = true;
          res.end();
        }
        return reply;
      }
      let r: JobResult;
      try {
        r = await j.promise;
      } catch (e) {
        if (!j.gone) throw e;
        errorCode = 'client_closed';
        status = 499;  // nobody to answer
        reply.hijack();
        if (!res.destroyed) res.destroy();
        return reply;
      }
      status = 200;
      batchSize = r.batchSize;
      metrics.observe((performance.now() - received) / 1000);
      const t = { ...r.timings, totalMs: performance.now() - received };
      reply.header('x-x2i-seed', String(r.seed)).header('x-x2i-batch-size', String(r.batchSize))
        .header('server-timing', Object.entries(t).map(([k, v]) => `${k.replace(/Ms$/, '')};dur=${round(v)}`).join(', '));
      if (closing) reply.header('connection', 'close');
      if (req.json) return reply.type('application/json; charset=utf-8').send(resultJson(j, r, received));
      return reply.type(MIME[r.format]).send(r.image);
    } catch (e) {
      const h = toHttpError(e);
      status = h.status;
      errorCode = h.code;
      throw h;
    } finally {
      if (!counted) metrics.count(status);
      if (options.onResponse) {
        try {
          options.onResponse({ id: job?.id, model: job?.req.model.name, status, stream, batchSize, ms: performance.now() - received,
            ...(errorCode ? { error: errorCode } : {}) });
        } catch { /* a logger's error is not the request's */ }
      }
    }
  };

  const routes = async (scope: FastifyInstance) => {
    await scope.register(multipart, { limits: { fileSize: cfg.bodyLimit, fieldSize: cfg.bodyLimit } });
    scope.setErrorHandler((err, request, reply) => {
      const h = toHttpError(err);
      if (h.status >= 500 && options.logger) request.log.error(err);
      if (request.routeOptions?.url?.includes('/v1/generate') && !(err instanceof HttpError)) {  // refused before the route ran
        metrics.count(h.status);
        try {
          options.onResponse?.({ status: h.status, stream: request.routeOptions.url.endsWith('/stream'), ms: reply.elapsedTime, error: h.code });
        } catch { /* a logger's error is not the request's */ }
      }
      void reply.code(h.status).headers(h.headers).send(h.body());
    });
    if (owns || options.prefix) {
      scope.setNotFoundHandler((request, reply) => {
        void reply.code(404).send(new HttpError(404, 'not_found', `no route ${request.method} ${request.url}`).body());
      });
    }
    const gen = { bodyLimit: cfg.bodyLimit };
    scope.post('/v1/generate', gen, (request, reply) => {
      const q = request.query as Record<string, unknown> | undefined;
      return generate(request, reply, q?.stream === '1' || q?.stream === 'true');
    });
    scope.post('/v1/generate/stream', gen, (request, reply) => generate(request, reply, true));
    scope.get('/health', async (_request, reply) => {
      const body = {
        status: closing ? 'shutting_down' : 'ok',
        uptimeSeconds: round((performance.now() - metrics.started) / 1000),
        models: Object.fromEntries([...models.values()].map((m) => [m.name, { kind: m.kind, device: m.device, dtype: m.pipeline.transformer.dtype,
          defaults: m.defaults, loraAdapters: Object.keys(m.pipeline.transformer.loraAdapters) }])),
        devices: stats().devices,
      };
      return reply.code(closing ? 503 : 200).send(body);
    });
    scope.get('/metrics', async (_request, reply) => reply.type('text/plain; version=0.0.4; charset=utf-8').send(metricsText()));
  };

  function stats(): ServerStats {
    return {
      uptimeSeconds: (performance.now() - metrics.started) / 1000,
      closing,
      devices: Object.fromEntries([...workers.values()].map((w) => [w.device, { queued: w.queue.length, inFlight: w.inFlight,
        capacity: cfg.maxQueue, batches: w.batches, abortedBatches: w.abortedBatches }])),
      requests: Object.fromEntries([...metrics.requests].map(([k, v]) => [String(k), v])),
      imagesGenerated: metrics.images,
      imagesPerSecond: metrics.imagesPerSecond(),
      denoiseSteps: metrics.steps,
      stepsAfterAbort: metrics.stepsAfterAbort,
      abortedRequests: { ...metrics.aborted },
      batchedRequests: metrics.batchedRequests,
    };
  }

  let cudaCache: { at: number; values: Map<string, import('../core/native.js').CudaMemoryInfo> } | undefined;
  function metricsText(): string {
    const s = stats();
    const out: string[] = [];
    const metric = (name: string, type: 'gauge' | 'counter' | 'histogram', help: string, rows: [string, number][]) => {
      out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
      for (const [labels, v] of rows) out.push(`${name}${labels} ${Number.isFinite(v) ? v : 0}`);
    };
    const dev = (d: string) => `{device="${esc(d)}"}`;
    const ws = [...workers.values()];
    metric('x2i_up', 'gauge', 'Whether the service takes requests (0 while shutting down).', [['', closing ? 0 : 1]]);
    metric('x2i_queue_length', 'gauge', 'Requests waiting, per device.', ws.map((w) => [dev(w.device), w.queue.length]));
    metric('x2i_queue_capacity', 'gauge', 'Requests that may wait per device (maxQueue).', ws.map((w) => [dev(w.device), cfg.maxQueue]));
    metric('x2i_in_flight_requests', 'gauge', 'Requests being generated, per device.', ws.map((w) => [dev(w.device), w.inFlight]));
    metric('x2i_requests_total', 'counter', 'Generation requests answered, by HTTP status (499: the client left first).',
      [...metrics.requests].sort(([a], [b]) => a - b).map(([k, v]) => [`{code="${k}"}`, v]));
    out.push('# HELP x2i_request_duration_seconds Time from a generation request to its image, successful requests.',
      '# TYPE x2i_request_duration_seconds histogram');
    LATENCY_BUCKETS.forEach((b, i) => out.push(`x2i_request_duration_seconds_bucket{le="${b}"} ${metrics.latency.buckets[i]}`));
    out.push(`x2i_request_duration_seconds_bucket{le="+Inf"} ${metrics.latency.count}`,
      `x2i_request_duration_seconds_sum ${metrics.latency.sum}`, `x2i_request_duration_seconds_count ${metrics.latency.count}`);
    out.push('# HELP x2i_queue_wait_seconds Time requests waited in the queue.', '# TYPE x2i_queue_wait_seconds summary',
      `x2i_queue_wait_seconds_sum ${metrics.queueWait.sum}`, `x2i_queue_wait_seconds_count ${metrics.queueWait.count}`);
    metric('x2i_images_generated_total', 'counter', 'Images generated and sent.', [['', s.imagesGenerated]]);
    metric('x2i_images_per_second', 'gauge', 'Images generated per second over the last minute.', [['', s.imagesPerSecond]]);
    metric('x2i_denoise_steps_total', 'counter', 'Denoising steps run (one per batch and step).', [['', s.denoiseSteps]]);
    metric('x2i_steps_after_abort_total', 'counter', 'Denoising steps that finished after every client of their batch had left.',
      [['', s.stepsAfterAbort]]);
    metric('x2i_batches_total', 'counter', 'Batches run, per device.', ws.map((w) => [dev(w.device), w.batches]));
    metric('x2i_batches_aborted_total', 'counter', 'Batches stopped because every client had left, per device.',
      ws.map((w) => [dev(w.device), w.abortedBatches]));
    out.push('# HELP x2i_batch_size Requests per generate call.', '# TYPE x2i_batch_size summary',
      `x2i_batch_size_sum ${metrics.batchSizes.sum}`, `x2i_batch_size_count ${metrics.batchSizes.count}`);
    metric('x2i_requests_aborted_total', 'counter', 'Requests whose client left, by stage.',
      [['{stage="queued"}', s.abortedRequests.queued], ['{stage="running"}', s.abortedRequests.running]]);
    const mem = memory();
    metric('x2i_tensors', 'gauge', 'Live tensor handles (x2i.memory()).', [['', mem.tensors]]);
    metric('x2i_tensor_bytes', 'gauge', 'Bytes of live tensor handles, per device (x2i.memory()).',
      Object.entries(mem.devices).map(([d, v]) => [dev(d), v.bytes]));
    const cudaDevices = ws.map((w) => w.device).filter((d) => d.startsWith('cuda'));
    if (cudaDevices.length && cuda.isAvailable()) {
      // x2i.cuda.memory synchronises the device: read at most once a second
      if (!cudaCache || performance.now() - cudaCache.at > 1000) {
        const values = new Map<string, import('../core/native.js').CudaMemoryInfo>();
        for (const d of cudaDevices) {
          try {
            values.set(d, cuda.memory(d));
          } catch { /* a device that went away: no row */ }
        }
        cudaCache = { at: performance.now(), values };
      }
      const rows: [string, number][] = [];
      for (const [d, v] of cudaCache.values)
        for (const [k, kind] of [['allocated', 'allocated'], ['reserved', 'reserved'], ['peakAllocated', 'peak_allocated'], ['peakReserved', 'peak_reserved']] as const)
          rows.push([`{device="${esc(d)}",kind="${kind}"}`, v[k]]);
      metric('x2i_cuda_memory_bytes', 'gauge', "The CUDA caching allocator's bytes (x2i.cuda.memory).", rows);
    }
    return out.join('\n') + '\n';
  }

  if (owns) await app.register(routes);
  else await app.register(routes, options.prefix ? { prefix: options.prefix } : {});

  let url: string | undefined, boundPort: number | undefined;
  if (owns) {
    await app.ready();
    if (options.listen !== false) {
      try {
        await app.listen({ host, port });
      } catch (e) {
        await app.close().catch(() => undefined);
        throw e;
      }
      const addr = app.server.address();
      boundPort = typeof addr === 'object' && addr ? addr.port : port;
      url = `http://${host.includes(':') ? `[${host}]` : host}:${boundPort}`;
    }
  }

  let closed: Promise<void> | undefined;
  const server: X2IServer = {
    get url() { return url; },
    get port() { return boundPort; },
    app,
    handler: (req, res) => app.routing(req, res),
    models: [...models.keys()],
    get closing() { return closing; },
    stats,
    metrics: metricsText,
    close() {
      closed ??= (async () => {
        closing = true;
        for (const w of workers.values()) w.refuseQueued();
        await Promise.all([...workers.values()].map((w) => w.idle()));
        if (!owns) return;
        // Node's server.close() waits for every connection: those with no request in flight (keep-alive ones, and
        // ones a client opened but never used) are closed now and as soon as they become so
        const reap = setInterval(() => {
          for (const [socket, n] of sockets) if (n === 0) socket.destroy();
        }, 50);
        try {
          await app.close();
        } finally {
          clearInterval(reap);
        }
      })();
      return closed;
    },
    [asyncDisposeSymbol]() {
      return server.close();
    },
  };
  return server;
}

function round(x: number): number {
  return Math.round(x * 10) / 10;
}
function roundAll<T extends Record<string, number>>(o: T): T {
  return Object.fromEntries(Object.entries(o).map(([k, v]) => [k, round(v)])) as T;
}
function esc(s: string): string {
  return s.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}
