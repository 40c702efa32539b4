// x2i's generation service inside an existing Fastify app: createServer({ app, prefix }) adds its routes under the
// prefix (in their own plugin scope: their multipart parser and error format stay theirs); the app listens and
// closes as it always did. Here it serves random tiny models (no weights, any CPU); give it your own X2IGenerator or
// FluxPipeline instead (see README.md).
//
//   node examples/embed-fastify.mjs            (serves until Ctrl-C or SIGTERM, which drain it first)
//   node examples/embed-fastify.mjs --once     (a few requests through it, then exits)
import { parseArgs } from 'node:util';
import Fastify from 'fastify';
import * as x2i from 'x2i';

const { values: args } = parseArgs({ options: { once: { type: 'boolean', default: false } } });

const app = Fastify();
app.get('/', async () => ({ app: 'mine', x2i: '/x2i/v1/generate' }));

const model = await x2i.randomServedModel();
const service = await x2i.createServer({ app, prefix: '/x2i', generator: model, maxQueue: 8, maxBatch: 4 });
await app.listen({ host: '127.0.0.1', port: Number(process.env.PORT ?? 0) });
const base = `http://127.0.0.1:${app.server.address().port}`;
console.log(`my app on ${base}, x2i at ${base}/x2i/v1/generate`);

// three clients at once: their compatible requests share one batch; JSON answers carry the seed, batch and timings
const answers = await Promise.all(['a lighthouse at dusk', '夕暮れの灯台', 'un phare au crépuscule'].map(async (prompt, seed) => {
  const r = await fetch(`${base}/x2i/v1/generate`, { method: 'POST', headers: { 'content-type': 'application/json', accept: 'application/json' },
    body: JSON.stringify({ prompt, seed }) });
  if (!r.ok) throw new Error(`HTTP ${r.status}: ${await r.text()}`);
  return r.json();
}));
for (const a of answers) console.log(`seed ${a.seed}: ${a.width}×${a.height} ${a.format} in a batch of ${a.batchSize}, ${a.timings.totalMs} ms`);
const metrics = await (await fetch(`${base}/x2i/metrics`)).text();
console.log(metrics.split('\n').filter((l) => /^x2i_(images_generated_total|batches_total|queue_length)/.test(l)).join('\n'));

const shutdown = async () => {
  await service.close();   // drains the service's work; the app is yours to close
  await app.close();
  model.dispose();
};
if (args.once) await shutdown();
else for (const signal of ['SIGINT', 'SIGTERM']) process.once(signal, () => void shutdown());
