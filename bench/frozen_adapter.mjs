// One frozen rank-r adapter in the diffusers/PEFT layout on every default LoRA target of a FLUX transformer
// (A [r, in] uniform in ±1/√in, B [out, r] uniform in ±1e-3, deterministic), for the generation benchmarks.
import * as x2i from '../dist/index.js';

/** A deterministic uniform stream in [−a, a) (mulberry32). */
export function uniform(n, a, seed) {
  const out = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = Math.imul(s ^ (s >>> 15), 1 | s);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    out[i] = ((((t ^ (t >>> 14)) >>> 0) / 4294967296) * 2 - 1) * a;
  }
  return out;
}

/** Loads the adapter into `flux` unfused under `adapterName`; returns { modules, rank }. */
export async function loadFrozenAdapter(flux, { rank = 16, adapterName = 'frozen' } = {}) {
  const D = flux.loraShape.hidden, F = 4 * D, r = rank;
  const dims = (m) => {
    if (/\.(ff|ff_context)\.net\.0\.proj$|\.proj_mlp$/.test(m)) return [D, F];
    if (/\.(ff|ff_context)\.net\.2$/.test(m)) return [F, D];
    if (/^single_transformer_blocks\.\d+\.proj_out$/.test(m)) return [D + F, D];
    return [D, D];
  };
  const record = {};
  let k = 0;
  for (const m of x2i.defaultLoraTargets(flux.loraShape)) {
    const [inF, outF] = dims(m);
    record[`transformer.${m}.lora_A.weight`] = x2i.Tensor.fromArray(uniform(r * inF, 1 / Math.sqrt(inF), 100 + k++), [r, inF]);
    record[`transformer.${m}.lora_B.weight`] = x2i.Tensor.fromArray(uniform(outF * r, 1e-3, 100 + k++), [outF, r]);
  }
  try {
    await flux.loadLora(record, { adapterName });
  } finally {
    for (const t of Object.values(record)) t.dispose();
  }
  return { modules: k / 2, rank: r };
}
