// x2i.audio: Whisper's log-mel features against MiniCPM-o's processor (the golden waveforms and features), the same
// sound decoded from WAV, FLAC, MP3 and OGG, stereo and 44.1 kHz input mixed and resampled, clips over 30 s in
// pieces, and the errors.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import * as x2i from '../../lib/index.js';
import type { Tensor } from '../../lib/index.js';
import { golden, relErr, root } from '../helpers.js';

const dir = path.join(golden, 'minicpm_o');
const fixtures = path.join(root, 'test', 'fixtures', 'audio');

async function io(): Promise<Record<string, Tensor>> {
  return x2i.loadSafetensors(path.join(dir, 'io.safetensors'));
}
const first = async (t: Tensor) => x2i.Tensor.fromArray(await t.toArray() as Float32Array, t.shape.slice(1));

/** A 16-bit PCM WAV file of interleaved channels. */
function wavBytes(channels: Float32Array[], rate: number): Buffer {
  const n = channels[0].length, C = channels.length, data = Buffer.alloc(n * C * 2);
  for (let i = 0; i < n; i++)
    for (let c = 0; c < C; c++) data.writeInt16LE(Math.max(-32768, Math.min(32767, Math.round(channels[c][i] * 32767))), (i * C + c) * 2);
  const h = Buffer.alloc(44);
  h.write('RIFF', 0); h.writeUInt32LE(36 + data.length, 4); h.write('WAVE', 8); h.write('fmt ', 12);
  h.writeUInt32LE(16, 16); h.writeUInt16LE(1, 20); h.writeUInt16LE(C, 22); h.writeUInt32LE(rate, 24);
  h.writeUInt32LE(rate * C * 2, 28); h.writeUInt16LE(C * 2, 32); h.writeUInt16LE(16, 34); h.write('data', 36); h.writeUInt32LE(data.length, 40);
  return Buffer.concat([h, data]);
}
const sine = (n: number, rate: number, hz: number, amp = 0.5) => Float32Array.from({ length: n }, (_, i) => amp * Math.sin(2 * Math.PI * hz * i / rate));

describe('audio.logMel (WhisperFeatureExtractor as MiniCPM-o calls it)', () => {
  for (const [name, wave, feats] of [['audio', 'audio.waveform', 'audio.features'], ['mixed', 'mixed.waveform', 'mixed.audio_features']]) {
    it(`matches the golden ${name} features`, async () => {
      const t = await io();
      const f = await x2i.audio.logMel(await t[wave].toArray() as Float32Array);
      const ref = await first(t[feats]);
      expect(f.shape).toEqual(ref.shape);  // [80, ceil(n / 160)]
      expect(await relErr(f, ref)).toBeLessThanOrEqual(1e-4);
    });
  }

  it('a clip over 30 s in 30 s pieces, each as a clip of its own', async () => {
    const rate = 16000, n = 31 * rate + 321;
    const w = Float32Array.from({ length: n }, (_, i) => 0.3 * Math.sin(i / 7) * Math.sin(i / 3001) + 0.05 * Math.sin(i / 1.7));
    const all = await x2i.audio.logMel(w);
    expect(all.shape).toEqual([80, 3000 + Math.ceil((n - 30 * rate) / 160)]);
    const a = await x2i.audio.logMel(w.subarray(0, 30 * rate)), b = await x2i.audio.logMel(w.subarray(30 * rate));
    const v = await all.toArray() as Float32Array, va = await a.toArray() as Float32Array, vb = await b.toArray() as Float32Array;
    const T = all.shape[1];
    for (let m = 0; m < 80; m += 13) {
      expect(Array.from(v.subarray(m * T, m * T + 3000))).toEqual(Array.from(va.subarray(m * 3000, (m + 1) * 3000)));
      expect(Array.from(v.subarray(m * T + 3000, (m + 1) * T))).toEqual(Array.from(vb.subarray(m * (T - 3000), (m + 1) * (T - 3000))));
    }
  });

  it('rejects empty, non-finite and multi-dimensional waveforms with named errors', async () => {
    await expect(x2i.audio.logMel(new Float32Array(0))).rejects.toThrow(/empty/);
    await expect(x2i.audio.logMel(Float32Array.from([0, NaN, 0]))).rejects.toThrow(/non-finite/);
    await expect(x2i.audio.logMel(await x2i.zeros([2, 100]))).rejects.toThrow(/1-D Tensor \[samples\], found \[2, 100\]/);
    await expect(x2i.audio.logMel(new Float32Array(10), { samplingRate: 0 })).rejects.toThrow(/samplingRate/);
  });
});

describe('audio.load (audio-decode, mono, 16 kHz)', () => {
  it('decodes the golden WAV to the golden waveform within one 16-bit step, and to its features', async () => {
    const a = await x2i.audio.load(path.join(dir, 'audio.wav'));
    const t = await io();
    expect(a.samplingRate).toBe(16000);
    expect(a.channels).toBe(1);
    const ref = await t['audio.waveform'].toArray() as Float32Array;
    expect(a.waveform.length).toBe(ref.length);
    let d = 0;
    for (let i = 0; i < ref.length; i++) d = Math.max(d, Math.abs(a.waveform[i] - ref[i]));
    // audio-decode scales positive PCM-16 samples by 1/32767, libsndfile (the reference's reader) by 1/32768
    expect(d).toBeLessThanOrEqual(2 ** -15);
    const f = await x2i.audio.logMel(a.waveform);
    expect(await relErr(f, await first(t['audio.features']))).toBeLessThanOrEqual(1e-4);
  });

  it('the same sound as FLAC, MP3 and OGG gives the same features within the codec\'s loss', async () => {
    // fixtures: the golden audio.wav through `flac -8`, `lame -b 128` and `oggenc -q 10`. The lossless file gives the
    // WAV's features; a lossy one may differ by what its codec took out of the wave (log-mel weighs the quiet bins
    // the codec drops most, hence the factor), and nothing more: same length, no shift.
    const wav = (await x2i.audio.load(path.join(dir, 'audio.wav'))).waveform;
    const ref = await x2i.audio.logMel(wav);
    const errs: Record<string, { wave: number; logMel: number }> = {};
    for (const file of ['fox.flac', 'fox.mp3', 'fox.ogg']) {
      const a = await x2i.audio.load(path.join(fixtures, file));
      expect([a.samplingRate, a.waveform.length], file).toEqual([16000, wav.length]);
      let num = 0, den = 0;
      for (let i = 0; i < wav.length; i++) { num += (a.waveform[i] - wav[i]) ** 2; den += wav[i] ** 2; }
      const f = await x2i.audio.logMel(a.waveform);
      errs[file] = { wave: Math.sqrt(num / den), logMel: await relErr(f, ref) };
    }
    expect(errs['fox.flac'].wave).toBeLessThanOrEqual(1e-4);
    expect(errs['fox.flac'].logMel).toBeLessThanOrEqual(1e-4);
    for (const file of ['fox.mp3', 'fox.ogg']) {
      expect(errs[file].wave, file).toBeLessThanOrEqual(0.15);
      expect(errs[file].logMel, file).toBeLessThanOrEqual(3 * errs[file].wave);
    }
  });

  it('mixes stereo to mono and resamples 44.1 kHz to 16 kHz', async () => {
    const rate = 44100, n = rate;  // one second: 440 Hz left, 440 Hz right at another amplitude
    const left = sine(n, rate, 440, 0.6), right = sine(n, rate, 440, 0.2);
    const f = path.join(fs.mkdtempSync(path.join(root, 'build', 'audio-')), 'stereo.wav');
    fs.writeFileSync(f, wavBytes([left, right], rate));
    const a = await x2i.audio.load(f);
    expect([a.channels, a.sourceSamplingRate, a.samplingRate, a.waveform.length]).toEqual([2, rate, 16000, 16000]);
    const want = sine(16000, 16000, 440, 0.4);
    let num = 0, den = 0;
    for (let i = 200; i < 15800; i++) { num += (a.waveform[i] - want[i]) ** 2; den += want[i] ** 2; }  // away from the edges
    expect(Math.sqrt(num / den)).toBeLessThanOrEqual(2e-3);
    const keep = await x2i.audio.load(f, { samplingRate: null });
    expect([keep.samplingRate, keep.waveform.length]).toEqual([rate, n]);
  });

  it('resample keeps a tone below the new Nyquist and removes one above it', async () => {
    const up = await x2i.audio.resample(sine(8000, 8000, 1000), 8000, 16000);
    expect(up.length).toBe(16000);
    const want = sine(16000, 16000, 1000);
    let e = 0;
    for (let i = 200; i < 15800; i++) e = Math.max(e, Math.abs(up[i] - want[i]));
    expect(e).toBeLessThanOrEqual(5e-3);
    const down = await x2i.audio.resample(sine(48000, 48000, 12000), 48000, 16000);  // 12 kHz > 8 kHz
    expect(down.length).toBe(16000);
    let peak = 0;
    for (let i = 200; i < 15800; i++) peak = Math.max(peak, Math.abs(down[i]));
    expect(peak).toBeLessThanOrEqual(0.01);
  });

  it('names the input it cannot read or decode', async () => {
    await expect(x2i.audio.load(path.join(fixtures, 'missing.wav'))).rejects.toThrow(/cannot read .*missing\.wav/);
    await expect(x2i.audio.load(Buffer.from('definitely not audio'))).rejects.toThrow(/cannot decode 20 bytes of audio/);
    await expect(x2i.audio.load(Buffer.alloc(0))).rejects.toThrow(/empty/);
    await expect(x2i.audio.load(path.join(dir, 'audio.wav'), { samplingRate: -1 })).rejects.toThrow(/samplingRate/);
  });
});
