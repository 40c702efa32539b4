/**
 * Audio for the MLLM students (x2i.audio): files decoded by `audio-decode` (WAV, FLAC, MP3, OGG Vorbis/Opus and
 * more), mixed to mono and resampled to 16 kHz; Whisper's log-mel features as MiniCPM-o's processor computes them
 * (native/models/whisper.cc: transformers' WhisperFeatureExtractor, torch path, float32, clips cut into 30 s pieces).
 */
import fs from 'node:fs/promises';
import { addon } from '../core/native.js';
import type { NativeAudioFeatureConfig } from '../core/addon.js';
import { invalidArg, nativeCall, X2IError } from '../core/errors.js';
import { Tensor } from '../core/tensor.js';

/** Whisper's sampling rate: the features are defined at 16 kHz. */
export const WHISPER_SAMPLING_RATE = 16000;

export interface AudioLoadOptions {
  /** The rate of the returned waveform in Hz (default 16000, Whisper's); the file's own rate when `null`. */
  samplingRate?: number | null;
}

export interface DecodedAudio {
  /** Mono samples in [−1, 1] at `samplingRate` (the channels' mean). */
  waveform: Float32Array;
  samplingRate: number;
  /** The file's own rate and channel count. */
  sourceSamplingRate: number;
  channels: number;
  /** Seconds. */
  duration: number;
}

export type AudioInput = string | Uint8Array;

/**
 * Decodes an audio file (a path or its bytes), mixes its channels to mono (their mean, as librosa's `mono=True`)
 * and resamples it (band-limited sinc, `resample`). Formats are detected from the bytes; anything else is an
 * X2IError naming the input.
 */
export async function load(input: AudioInput, opts: AudioLoadOptions = {}): Promise<DecodedAudio> {
  const target = opts.samplingRate === undefined ? WHISPER_SAMPLING_RATE : opts.samplingRate;
  if (target !== null && !(Number.isInteger(target) && target > 0)) throw invalidArg('samplingRate', 'a positive integer (Hz) or null', target);
  const name = typeof input === 'string' ? input : `${input?.length ?? 0} bytes of audio`;
  let bytes: Uint8Array;
  if (typeof input === 'string') {
    try {
      bytes = await fs.readFile(input);
    } catch (e) {
      throw new X2IError(`audio: cannot read ${input}: ${(e as Error).message}`, 'ERR_INVALID_ARG', { cause: e });
    }
  } else if (input instanceof Uint8Array) {
    bytes = input;
  } else {
    throw invalidArg('audio input', 'a file path or the file\'s bytes (Buffer / Uint8Array)', input);
  }
  if (bytes.length === 0) throw new X2IError(`audio: ${name} is empty`, 'ERR_INVALID_ARG');
  const { default: decode } = await import('audio-decode');
  let decoded: { channelData: Float32Array[]; sampleRate: number };
  try {
    decoded = await decode(bytes);
  } catch (e) {
    throw new X2IError(`audio: cannot decode ${name} (expected WAV, FLAC, MP3 or OGG): ${(e as Error)?.message ?? e}`,
      'ERR_INVALID_ARG', { cause: e });
  }
  const channels = decoded?.channelData ?? [];
  const rate = decoded?.sampleRate;
  const n = channels[0]?.length ?? 0;
  if (channels.length === 0 || n === 0 || !(Number.isInteger(rate) && rate > 0) || channels.some((c) => c.length !== n))
    throw new X2IError(`audio: ${name} decoded to no samples (${channels.length} channels, rate ${rate})`, 'ERR_INVALID_ARG');
  let mono: Float32Array;
  if (channels.length === 1) mono = Float32Array.from(channels[0]);
  else {
    mono = new Float32Array(n);
    for (const c of channels) for (let i = 0; i < n; i++) mono[i] += c[i];
    for (let i = 0; i < n; i++) mono[i] /= channels.length;
  }
  for (let i = 0; i < n; i++)
    if (!Number.isFinite(mono[i])) throw new X2IError(`audio: ${name} decoded to a non-finite sample at ${i}`, 'ERR_INVALID_ARG');
  const out = target === null || target === rate ? mono : await resample(mono, rate, target);
  return { waveform: out, samplingRate: target ?? rate, sourceSamplingRate: rate, channels: channels.length, duration: n / rate };
}

/** A waveform from rate `from` to rate `to` (Hz): band-limited sinc interpolation with a Hann window (6 zero
 * crossings, roll-off 0.99: torchaudio's defaults); ceil(n·to/from) samples. Runs off the event loop. */
export async function resample(waveform: Float32Array, from: number, to: number): Promise<Float32Array> {
  for (const [k, v] of [['from', from], ['to', to]] as const)
    if (!(Number.isInteger(v) && v > 0)) throw invalidArg(`resample ${k}`, 'a positive integer rate (Hz)', v);
  if (!(waveform instanceof Float32Array)) throw invalidArg('waveform', 'a Float32Array', waveform);
  if (from === to) return Float32Array.from(waveform);
  using t = Tensor.fromArray(waveform, [waveform.length]);
  const h = t.handle;
  using r = new Tensor(await nativeCall(() => addon().audioResample(h, from, to)));
  return Float32Array.from(await r.toArray() as Float32Array);
}

export interface LogMelOptions {
  /** The waveform's rate in Hz (default 16000); other rates are resampled to 16 kHz first. */
  samplingRate?: number;
  /** Where the features are computed and returned (default: the Tensor's device, else 'cpu'). */
  device?: string;
  /** WhisperFeatureExtractor settings other than Whisper's (preprocessor_config.json), sampling rate 16 kHz. */
  config?: Omit<NativeAudioFeatureConfig, 'samplingRate'>;
}

/**
 * Whisper's log-mel features of a mono waveform → float32 [80, T], T = Σ ceil(n_i / 160) over the clip's 30 s
 * pieces (one piece up to 30 s): each piece zero-padded to 30 s, STFT (n_fft 400, hop 160, Hann), power, 80 Slaney
 * mel filters up to 8 kHz, log10, floored at the piece's maximum − 8, (x + 4) / 4, cut to its frames — what
 * MiniCPM-o's processor passes to its audio encoder (`audio_features` with `audio_feature_lens`).
 */
export async function logMel(waveform: Float32Array | Tensor, opts: LogMelOptions = {}): Promise<Tensor> {
  const rate = opts.samplingRate ?? WHISPER_SAMPLING_RATE;
  if (!(Number.isInteger(rate) && rate > 0)) throw invalidArg('samplingRate', 'a positive integer (Hz)', rate);
  if (waveform instanceof Tensor) {
    if (waveform.shape.length !== 1 || waveform.numel === 0)
      throw new X2IError(`audio.logMel: the waveform must be a non-empty 1-D Tensor [samples], found [${waveform.shape.join(', ')}]`, 'ERR_SHAPE_MISMATCH');
    if (rate !== WHISPER_SAMPLING_RATE) {
      using f = await waveform.to({ dtype: 'float32', device: 'cpu' });
      return logMel(await resample(await f.toArray() as Float32Array, rate, WHISPER_SAMPLING_RATE), { ...opts, samplingRate: undefined, device: opts.device ?? waveform.device });
    }
    const moved = opts.device && opts.device !== waveform.device ? await waveform.to({ device: opts.device }) : waveform;
    try {
      const h = moved.handle;
      return new Tensor(await nativeCall(() => addon().audioLogMel(h, opts.config)));
    } finally {
      if (moved !== waveform) moved.dispose();
    }
  }
  if (!(waveform instanceof Float32Array)) throw invalidArg('waveform', 'a Float32Array or a 1-D Tensor', waveform);
  if (waveform.length === 0) throw new X2IError('audio.logMel: the waveform is empty', 'ERR_SHAPE_MISMATCH');
  const x = rate === WHISPER_SAMPLING_RATE ? waveform : await resample(waveform, rate, WHISPER_SAMPLING_RATE);
  using t = Tensor.fromArray(x, [x.length], { device: opts.device });
  return logMel(t, { config: opts.config });
}
