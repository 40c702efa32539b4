/**
 * x2i/testing: the native addon's benchmark and test probes, for test/ and bench/ only (the package subpath
 * `x2i/testing`, dist/testing.js). Nothing in the production entry (lib/index.ts) imports this file.
 *
 * The probes live on `addon.testing` (typed as AddonTesting in lib/core/addon.ts), apart from the production
 * export table: the bridge's own cost (noop, noopAsync), LibTorch copies (benchCopy), one distillation tap
 * through the fused or composite pass (distillTap, benchDistillTap), strided views for the kernels
 * (narrowView), the attention kernel SDPA picks (sdpaBackend) x2i's GroupNorm beside LibTorch's (groupNorm) and unfused LoRA's one-pass kernel beside its twin (lowRankAdd). Arguments are NativeTensor handles
 * (`tensor.handle`).
 */
import { X2IError } from './core/errors.js';
import { addon } from './core/native.js';
import type { AddonTesting } from './core/addon.js';

export { ADDON_CLASSES, ADDON_EXPORTS, ADDON_TESTING_EXPORTS } from './core/addon.js';
export type { Addon, AddonTesting, NativeTensor } from './core/addon.js';

/** The loaded addon's probes (`addon().testing`). */
export function probes(): AddonTesting {
  const t = addon().testing;
  if (!t || typeof t !== 'object')
    throw new X2IError('x2i/testing: the loaded x2i.node has no `testing` probes (built before they moved there): ' +
      'rebuild it with `npm run build:native`', 'ERR_ADDON_LOAD');
  return t;
}
