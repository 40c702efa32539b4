// Hugging Face repo ids resolved in a fabricated local cache laid out as huggingface_hub writes it
// (models--org--name/{blobs,refs,snapshots}, snapshot files symlinked to blobs); nothing is downloaded.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import * as x2i from '../../lib/index.js';
import { AlignNet, FluxTransformer, QwenVLEncoder, T5Encoder, hubCacheDirs, resolveModelPath, type Tensor } from '../../lib/index.js';
import { golden, relErr, tmpDir } from '../helpers.js';

const tmp = tmpDir();
const cache = path.join(tmp, 'hub');
const shaA = 'a'.repeat(8) + crypto.createHash('sha1').update('A').digest('hex').slice(8);
const shaB = crypto.createHash('sha1').update('B').digest('hex');
const repoDir = (cacheDir: string, repo: string) => path.join(cacheDir, `models--${repo.replace('/', '--')}`);

/** Adds `files` (path in the repo → source file) as a snapshot of `repo` in `cacheDir`, the way huggingface_hub
 * stores them: content in blobs/<sha256>, the snapshot's files relative symlinks to it; `refs` name the commit. */
function addSnapshot(cacheDir: string, repo: string, commit: string, files: Record<string, string>, refs: string[] = []): void {
  const root = repoDir(cacheDir, repo);
  fs.mkdirSync(path.join(root, 'blobs'), { recursive: true });
  for (const [rel, src] of Object.entries(files)) {
    const data = fs.readFileSync(src);
    const blob = crypto.createHash('sha256').update(data).digest('hex');
    fs.writeFileSync(path.join(root, 'blobs', blob), data);
    const link = path.join(root, 'snapshots', commit, rel);
    fs.mkdirSync(path.dirname(link), { recursive: true });
    fs.symlinkSync(path.relative(path.dirname(link), path.join(root, 'blobs', blob)), link);
  }
  for (const ref of refs) {
    fs.mkdirSync(path.dirname(path.join(root, 'refs', ref)), { recursive: true });
    fs.writeFileSync(path.join(root, 'refs', ref), commit);
  }
}

const flux = path.join(golden, 'flux-transformer');
const fluxFiles = { 'config.json': path.join(flux, 'config.json'),
  'diffusion_pytorch_model.safetensors': path.join(flux, 'diffusion_pytorch_model.safetensors') };
const prefixed = (prefix: string, files: Record<string, string>) =>
  Object.fromEntries(Object.entries(files).map(([k, v]) => [`${prefix}/${k}`, v]));
const t5 = path.join(golden, 't5-encoder');

const ENV = ['HF_HUB_CACHE', 'HUGGINGFACE_HUB_CACHE', 'HF_HOME', 'XDG_CACHE_HOME', 'HOME'] as const;
const savedEnv = Object.fromEntries(ENV.map((k) => [k, process.env[k]]));
/** Only `vars` set among the cache variables; HOME is a fresh folder, so the default cache is empty. */
function env(vars: Partial<Record<(typeof ENV)[number], string>>): void {
  for (const k of ENV) delete process.env[k];
  process.env.HOME = path.join(tmp, 'home');
  Object.assign(process.env, vars);
}

let io: Record<string, Tensor>;
beforeAll(async () => {
  // main: a diffusers pipeline folder (transformer/, text_encoder_2/); v1 (a tag) and shaB: a flat transformer folder
  addSnapshot(cache, 'org/tiny-flux', shaA, { ...prefixed('transformer', fluxFiles),
    'text_encoder_2/config.json': path.join(t5, 'config.json'), 'text_encoder_2/model.safetensors': path.join(t5, 'model.safetensors'),
    'model_index.json': path.join(flux, 'config.json') }, ['main']);
  addSnapshot(cache, 'org/tiny-flux', shaB, fluxFiles, ['v1']);
  addSnapshot(cache, 'org/tiny-align', shaA, { 'diffusion_pytorch_model.bin': path.join(golden, 'alignnet', 'diffusion_pytorch_model.bin') }, ['main']);
  addSnapshot(cache, 'Qwen/tiny-vl', shaB, { 'config.json': path.join(golden, 'qwen2_5_vl', 'config.json'),
    'model.safetensors': path.join(golden, 'qwen2_5_vl', 'model.safetensors') }, ['main']);
  // what a naive join of a hostile id would reach
  fs.mkdirSync(path.join(tmp, 'bait'), { recursive: true });
  fs.copyFileSync(path.join(flux, 'config.json'), path.join(tmp, 'bait', 'config.json'));
  io = await x2i.loadSafetensors(path.join(flux, 'io.safetensors'));
});
afterEach(() => { for (const k of ENV) if (savedEnv[k] === undefined) delete process.env[k]; else process.env[k] = savedEnv[k]; });
afterAll(() => {
  for (const t of Object.values(io)) t.dispose();
  fs.rmSync(tmp, { recursive: true, force: true });
});

const snap = (repo: string, commit: string, ...sub: string[]) => path.join(repoDir(cache, repo), 'snapshots', commit, ...sub);

describe('resolveModelPath', () => {
  it('a local path wins as it is, whatever the options', () => {
    expect(resolveModelPath(flux, { cacheDir: cache, revision: 'v1' })).toBe(flux);
    const rel = path.relative(process.cwd(), flux);
    expect(resolveModelPath(rel, { cacheDir: cache })).toBe(rel);
  });

  it('a repo id: refs/main, an @revision or the revision option (commit or tag), a subfolder or file', () => {
    expect(resolveModelPath('org/tiny-flux', { cacheDir: cache })).toBe(snap('org/tiny-flux', shaA));
    expect(resolveModelPath(`org/tiny-flux@${shaB}`, { cacheDir: cache })).toBe(snap('org/tiny-flux', shaB));
    expect(resolveModelPath('org/tiny-flux@v1', { cacheDir: cache })).toBe(snap('org/tiny-flux', shaB));
    expect(resolveModelPath('org/tiny-flux', { cacheDir: cache, revision: shaB })).toBe(snap('org/tiny-flux', shaB));
    expect(resolveModelPath('org/tiny-flux', { cacheDir: cache, revision: 'v1' })).toBe(snap('org/tiny-flux', shaB));
    expect(resolveModelPath('org/tiny-flux', { cacheDir: cache, revision: 'main' })).toBe(snap('org/tiny-flux', shaA));
    expect(resolveModelPath('org/tiny-flux/transformer', { cacheDir: cache })).toBe(snap('org/tiny-flux', shaA, 'transformer'));
    expect(resolveModelPath('org/tiny-flux@v1/config.json', { cacheDir: cache })).toBe(snap('org/tiny-flux', shaB, 'config.json'));
    expect(() => resolveModelPath('org/tiny-flux@v1', { cacheDir: cache, revision: 'main' })).toThrow(/revision 'v1' in the id and options.revision 'main' differ/);
  });

  it('finds the cache by HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE, HF_HOME, XDG_CACHE_HOME and ~/.cache, in that order', () => {
    env({ HF_HUB_CACHE: cache });
    expect(hubCacheDirs()[0]).toBe(cache);
    expect(resolveModelPath('org/tiny-flux')).toBe(snap('org/tiny-flux', shaA));
    env({ HUGGINGFACE_HUB_CACHE: cache });
    expect(resolveModelPath('org/tiny-flux', { revision: 'v1' })).toBe(snap('org/tiny-flux', shaB));
    env({ HF_HOME: tmp });  // $HF_HOME/hub is the cache
    expect(hubCacheDirs()).toEqual([cache, path.join(tmp, 'home', '.cache', 'huggingface', 'hub')]);
    expect(resolveModelPath('org/tiny-flux')).toBe(snap('org/tiny-flux', shaA));
    env({ XDG_CACHE_HOME: path.join(tmp, 'xdg') });
    expect(hubCacheDirs()).toEqual([path.join(tmp, 'xdg', 'huggingface', 'hub'), path.join(tmp, 'home', '.cache', 'huggingface', 'hub')]);
    env({});
    expect(hubCacheDirs()).toEqual([path.join(tmp, 'home', '.cache', 'huggingface', 'hub')]);
    expect(() => resolveModelPath('org/tiny-flux')).toThrow(/not in the local cache/);

    // HF_HUB_CACHE comes before HF_HOME: the same repo in both, main at different commits
    const other = path.join(tmp, 'home2');
    addSnapshot(path.join(other, 'hub'), 'org/tiny-flux', shaB, fluxFiles, ['main']);
    env({ HF_HOME: other, HF_HUB_CACHE: cache });
    expect(hubCacheDirs().slice(0, 2)).toEqual([cache, path.join(other, 'hub')]);
    expect(resolveModelPath('org/tiny-flux')).toBe(snap('org/tiny-flux', shaA));
    env({ HF_HOME: other });
    expect(resolveModelPath('org/tiny-flux')).toBe(path.join(repoDir(path.join(other, 'hub'), 'org/tiny-flux'), 'snapshots', shaB));
    // a revision only the later cache has is still found there
    env({ HF_HOME: other, HF_HUB_CACHE: cache });
    expect(resolveModelPath('org/tiny-align')).toBe(snap('org/tiny-align', shaA));
    env({ HF_HUB_CACHE: '~/hub' });  // ~ expanded as huggingface_hub does
    expect(hubCacheDirs()[0]).toBe(path.join(tmp, 'home', 'hub'));
  });

  it('not in the cache: ERR_FILE_NOT_FOUND listing every place it looked, nothing downloaded', async () => {
    const fail = (id: string, opts: x2i.HubOptions = {}) => {
      try {
        resolveModelPath(id, opts);
      } catch (e) {
        expect(e).toMatchObject({ name: 'X2IError', code: 'ERR_FILE_NOT_FOUND' });
        expect((e as Error).message).toContain('nothing is downloaded');
        return (e as Error).message;
      }
      throw new Error(`${id} resolved`);
    };
    const other = path.join(tmp, 'other-cache');
    env({ HF_HUB_CACHE: cache, HF_HOME: other });
    let m = fail('org/absent');
    expect(m).toContain(`${repoDir(cache, 'org/absent')}: no such folder`);
    expect(m).toContain(`${repoDir(path.join(other, 'hub'), 'org/absent')}: no such folder`);
    expect(m).toContain(`${repoDir(path.join(tmp, 'home', '.cache', 'huggingface', 'hub'), 'org/absent')}: no such folder`);
    m = fail('org/tiny-flux@v2', { cacheDir: cache });
    expect(m).toContain(`${path.join(repoDir(cache, 'org/tiny-flux'), 'refs', 'v2')}: no such ref file (snapshots: `);
    expect(m).toContain(shaA);
    expect(m).toContain(shaB);
    const sha = 'c'.repeat(40);
    m = fail('org/tiny-flux', { cacheDir: cache, revision: sha });
    expect(m).toContain(`${snap('org/tiny-flux', sha)}: no such snapshot`);
    m = fail('org/tiny-flux@v1/transformer', { cacheDir: cache });
    expect(m).toContain(`${snap('org/tiny-flux', shaB, 'transformer')}: no such file or folder in the snapshot`);
    // the FLUX loader passes the error on
    await expect(FluxTransformer.fromPretrained('org/absent', { cacheDir: cache })).rejects.toMatchObject({
      code: 'ERR_FILE_NOT_FOUND', message: expect.stringContaining(repoDir(cache, 'org/absent')) });
  });

  it('refuses ids that are no repo ids: .., absolute parts, other characters; nothing outside the cache is reached', () => {
    // each would reach tmp/bait if joined naively onto the snapshot or repo folder
    for (const id of ['org/tiny-flux/../../../../../bait', 'org/tiny-flux/transformer/../../../../../../bait',
      'org/../bait', 'org/tiny-flux@../../../../bait', 'org/tiny-flux@..%2F..%2F..%2F..%2Fbait', 'org/tiny flux',
      'org--x/tiny-flux', 'org/tiny--flux', 'org/.hidden', 'org/tiny-flux/.', 'org/tiny\\flux', 'org/tiny-flux$',
      'org/tiny-flux@v1@v2', 'org/tiny-flux@', 'org//tiny-flux', 'org/tiny-flux//x', 'org/tiny-flux@%zz']) {
      expect(() => resolveModelPath(id, { cacheDir: cache }), id).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
    }
    for (const revision of ['../../../bait', '/etc', 'v1/../../../..', '', 'a b'])
      expect(() => resolveModelPath('org/tiny-flux', { cacheDir: cache, revision }), revision)
        .toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
    // absolute, ./ and ../ paths are local paths only: not found, never looked up in the cache
    for (const p of [path.join(tmp, 'org', 'tiny-flux'), './org/tiny-flux', '../org/tiny-flux', '~/org/tiny-flux', 'tiny-flux'])
      expect(() => resolveModelPath(p, { cacheDir: cache }), p).toThrow(expect.objectContaining({ code: 'ERR_FILE_NOT_FOUND',
        message: `${p}: no such file or folder` }));
    expect(() => resolveModelPath('org/tiny-flux', { cacheDir: 3 as unknown as string })).toThrow(/cacheDir/);
    expect(() => resolveModelPath('org/tiny-flux', { revision: 3 as unknown as string })).toThrow(/revision/);
  });
});

describe('fromPretrained by repo id', () => {
  it('FluxTransformer: the pipeline snapshot (its transformer/) and a pinned revision, both the golden model', async () => {
    for (const opts of [{}, { revision: 'v1' }, { revision: shaB }]) {
      await using m = await FluxTransformer.fromPretrained('org/tiny-flux', { cacheDir: cache, ...opts });
      expect(m.layout).toBe('diffusers');
      expect(m.config.num_layers).toBe(2);
      const r = await m.forward({ hiddenStates: io.hidden_states, encoderHiddenStates: io.encoder_hidden_states,
        pooledProjections: io.pooled_projections, timestep: io.timestep, guidance: io.guidance, imgIds: io.img_ids, txtIds: io.txt_ids });
      expect(await relErr(r.sample, io.sample)).toBeLessThan(1e-4);
      r.sample.dispose();
    }
    env({ HF_HUB_CACHE: cache });
    await using byEnv = await FluxTransformer.fromPretrained('org/tiny-flux/transformer');
    expect(byEnv.config.num_single_layers).toBe(2);
  });

  it('the encoders, AlignNet (a torch.save .bin) and studentFromPretrained resolve the same way', async () => {
    const t5io = await x2i.loadSafetensors(path.join(t5, 'io.safetensors'));
    await using enc = await T5Encoder.fromPretrained('org/tiny-flux/text_encoder_2', { cacheDir: cache });
    expect(await relErr((await enc.forward({ inputIds: t5io.input_ids })).lastHiddenState, t5io.last_hidden_state)).toBeLessThan(1e-4);
    for (const t of Object.values(t5io)) t.dispose();
    await using net = await AlignNet.fromPretrained('org/tiny-align', { cacheDir: cache });
    expect(net.info.layers).toBe(5);
    await using student = await x2i.studentFromPretrained('Qwen/tiny-vl', { cacheDir: cache });
    expect(student).toBeInstanceOf(QwenVLEncoder);
    await expect(T5Encoder.fromPretrained('org/tiny-flux/text_encoder', { cacheDir: cache }))
      .rejects.toThrow(/text_encoder: no such file or folder in the snapshot/);
  });
});
