/** x2i.ClipVisionEncoder: CLIP's vision tower (transformers' CLIPVisionModel, e.g. ViT-L/14 of
 * openai/clip-vit-large-patch14), with its visual_projection when the checkpoint has one, and CLIPImageProcessor's
 * preprocessing (native/models/clip.cc). The image side of CLIP score (lib/sample/evaluate.ts). */
import { X2IError, invalidArg } from '../core/errors.js';
import { addon } from '../core/native.js';
import type { NativeClipVisionConfig, NativeClipVisionEncoder } from '../core/addon.js';
import { ConfigReader, requireMultiple } from '../core/config.js';
import { NativeModel, requireNonEmpty } from '../core/model.js';
import { Tensor } from '../core/tensor.js';
import { clipTower } from './clip.js';
import { defaultDtype, folderOf, loadNative, loadOptions, randomNative, readModelFolder, type PretrainedOptions, type RandomOptions } from './pretrained.js';
import { resizeRgb, rgbPixels, type RgbImage } from './qwen_vision.js';
import fs from 'node:fs';
import path from 'node:path';

/** CLIPImageProcessor's settings (preprocessor_config.json); the defaults are CLIP ViT-L/14's. */
export interface ClipImageProcessorOptions {
  /** The shorter side after resizing (Pillow bicubic), default 224. */
  shortestEdge?: number;
  /** The centre crop [height, width], default [224, 224]. */
  cropSize?: [number, number];
  imageMean?: [number, number, number];
  imageStd?: [number, number, number];
}
const DEFAULTS: Required<ClipImageProcessorOptions> = { shortestEdge: 224, cropSize: [224, 224],
  imageMean: [0.48145466, 0.4578275, 0.40821073], imageStd: [0.26862954, 0.26130258, 0.27577711] };

/** A full CLIP config's `vision_config`, or the config itself (a CLIP vision config). */
function visionConfig(config: Record<string, unknown>, file: string): Record<string, unknown> {
  return new ConfigReader(config, file).nested('vision_config')?.config ?? config;
}

function nativeConfig(config: Record<string, unknown>, file: string, projectionDim?: number): NativeClipVisionConfig {
  const { act, r, hidden, heads } = clipTower(config, file);
  const imageSize = r.int('image_size', { fallback: 224 }), patchSize = r.int('patch_size', { fallback: 32 });
  requireMultiple(r, { key: 'image_size', value: imageSize }, { key: 'patch_size', value: patchSize });
  return { hiddenSize: hidden, intermediateSize: r.int('intermediate_size'), numAttentionHeads: heads,
    numHiddenLayers: r.layers('num_hidden_layers'), imageSize, patchSize, numChannels: r.int('num_channels', { fallback: 3 }),
    layerNormEps: r.eps('layer_norm_eps', 1e-5), hiddenAct: act, projectionDim };
}

/** The processor settings of a folder's preprocessor_config.json (CLIPImageProcessor), else the defaults. */
function processorOf(folder: string): Required<ClipImageProcessorOptions> {
  const file = path.join(folder, 'preprocessor_config.json');
  if (!fs.existsSync(file)) return DEFAULTS;
  let c: Record<string, unknown>;
  try {
    c = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new X2IError(`${file}: not valid JSON (${(e as Error).message})`, 'ERR_CONFIG');
  }
  const size = c.size as Record<string, number> | number | undefined, crop = c.crop_size as Record<string, number> | number | undefined;
  const num = (v: unknown, k: string, d: number) => {
    if (v === undefined) return d;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1) throw new X2IError(`${file}: '${k}' must be a positive integer, found ${JSON.stringify(v)}`, 'ERR_CONFIG');
    return v;
  };
  const triple = (v: unknown, k: string, d: [number, number, number]) => {
    if (v === undefined) return d;
    if (!Array.isArray(v) || v.length !== 3 || !v.every((x) => typeof x === 'number' && Number.isFinite(x)))
      throw new X2IError(`${file}: '${k}' must be three numbers, found ${JSON.stringify(v)}`, 'ERR_CONFIG');
    return v as [number, number, number];
  };
  const edge = num(typeof size === 'number' ? size : size?.shortest_edge, 'size.shortest_edge', DEFAULTS.shortestEdge);
  const ch = num(typeof crop === 'number' ? crop : crop?.height, 'crop_size.height', DEFAULTS.cropSize[0]);
  const cw = num(typeof crop === 'number' ? crop : crop?.width, 'crop_size.width', DEFAULTS.cropSize[1]);
  return { shortestEdge: edge, cropSize: [ch, cw], imageMean: triple(c.image_mean, 'image_mean', DEFAULTS.imageMean),
    imageStd: triple(c.image_std, 'image_std', DEFAULTS.imageStd) };
}

/** Images → pixelValues [N, 3, cropH, cropW] float32 as CLIPImageProcessor: RGB, shorter side to `shortestEdge`
 * (the longer one truncated in proportion) by Pillow's bicubic (bit for bit: the PIL processor; transformers 5's
 * default torchvision path differs by at most one 8-bit level in a few pixels), centre crop, /255, normalised. */
export async function preprocessClip(images: RgbImage[], opts: ClipImageProcessorOptions = {}): Promise<Tensor> {
  if (!Array.isArray(images) || images.length === 0) throw invalidArg('images', 'a non-empty array of images', images);
  const o = { ...DEFAULTS, ...opts };
  const [ch, cw] = o.cropSize;
  const all = new Float32Array(images.length * 3 * ch * cw);
  let k = 0;
  for (const img of images) {
    const rgb = rgbPixels(img), w = img.width, h = img.height;
    const [nw, nh] = w <= h ? [o.shortestEdge, Math.trunc((o.shortestEdge * h) / w)] : [Math.trunc((o.shortestEdge * w) / h), o.shortestEdge];
    const px = await resizeRgb(rgb, w, h, nw, nh, 'pil');
    const top = Math.floor((nh - ch) / 2), left = Math.floor((nw - cw) / 2);  // transformers' center_crop (pads with 0 when smaller)
    for (let c = 0; c < 3; c++)
      for (let y = 0; y < ch; y++)
        for (let x = 0; x < cw; x++) {
          const sy = top + y, sx = left + x;
          const v = sy >= 0 && sy < nh && sx >= 0 && sx < nw ? px[(sy * nw + sx) * 3 + c] / 255 : 0;
          all[k++] = (v - o.imageMean[c]) / o.imageStd[c];
        }
  }
  return Tensor.fromArray(all, [images.length, 3, ch, cw]);
}

export interface ClipVisionOutput {
  /** [B, patches + 1, H]: the class token first. */
  lastHiddenState: Tensor;
  /** [B, H]: the class token after the post-LayerNorm. */
  poolerOutput: Tensor;
  /** [B, D]: poolerOutput through visual_projection (checkpoints that have it: CLIPModel, …WithProjection). */
  imageEmbeds?: Tensor;
}

export class ClipVisionEncoder extends NativeModel<NativeClipVisionEncoder> {
  readonly config: Readonly<Record<string, unknown>>;
  /** The preprocessing this model was released with (preprocessor_config.json, else CLIP's defaults). */
  readonly processor: Readonly<Required<ClipImageProcessorOptions>>;
  /** Where the weights live ('cpu', 'cuda:0', ...). */
  readonly device: string;

  private constructor(h: NativeClipVisionEncoder, config: Record<string, unknown>, processor: Required<ClipImageProcessorOptions>, device: string) {
    super(h, 'ClipVisionEncoder');
    this.config = Object.freeze(config);
    this.processor = Object.freeze(processor);
    this.device = device;
  }

  /** A transformers CLIP folder: CLIPVisionModel(WithProjection) or a whole CLIPModel (its `vision_config`, the
   * `vision_model.` tensors and `visual_projection`; the text tower is left out). */
  static async fromPretrained(p: string, opts: PretrainedOptions = {}): Promise<ClipVisionEncoder> {
    if (typeof p !== 'string') throw invalidArg('path', 'a folder path', p);
    const read = readModelFolder(p, opts.config, opts);
    const config = visionConfig(read.config, read.configFile);
    const Native = addon().NativeClipVisionEncoder;
    const lo = loadOptions(opts);
    const h = await loadNative(read.weights, lo, (w) =>  // the projection's width from its tensor
      Native.load(nativeConfig(config, read.configFile, w['visual_projection.weight']?.info().shape[0]), w, read.weights));
    return new ClipVisionEncoder(h, config, processorOf(folderOf(read.weights)), lo.device);
  }

  /** Random weights of a CLIP vision config (or a full CLIP config); `projectionDim` adds a visual_projection. */
  static async fromConfig(config: Record<string, unknown>, opts: RandomOptions & { projectionDim?: number } = {}): Promise<ClipVisionEncoder> {
    if (!config || typeof config !== 'object') throw invalidArg('config', 'a CLIP vision config object', config);
    const c = visionConfig(config, 'config');
    const size = Number(c.image_size ?? 224);
    return new ClipVisionEncoder(await randomNative(addon().NativeClipVisionEncoder, nativeConfig(c, 'config', opts.projectionDim), opts), c,
      { ...DEFAULTS, shortestEdge: size, cropSize: [size, size] }, defaultDtype(opts).device);
  }

  /** Images (decoded RGB(A); files: `decodeRgb`) → pixelValues with this model's processor settings. */
  preprocess(images: RgbImage[]): Promise<Tensor> {
    return preprocessClip(images, this.processor);
  }

  /** pixelValues [B, 3, S, S] (CLIPImageProcessor's output) → the tower's outputs. */
  async forward(inputs: { pixelValues: Tensor }): Promise<ClipVisionOutput> {
    if (!inputs || !(inputs.pixelValues instanceof Tensor)) throw invalidArg('inputs.pixelValues', 'a Tensor', inputs?.pixelValues);
    requireNonEmpty('inputs.pixelValues', inputs.pixelValues, 'batch or image');
    this.native();
    const px = inputs.pixelValues.handle;
    const r = await this.call((h) => h.forward({ pixelValues: px }));
    return { lastHiddenState: new Tensor(r.lastHiddenState), poolerOutput: new Tensor(r.poolerOutput),
      ...(r.imageEmbeds ? { imageEmbeds: new Tensor(r.imageEmbeds) } : {}) };
  }
}
