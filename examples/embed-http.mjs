// x2i's generation service mounted in an existing node:http app (the same handler works in Express or Connect:
// `expressApp.use('/x2i', service.handler)`, before any body parser). The app keeps its own routes and its own
// listener; the service only answers under /x2i/. Here it serves random tiny models (no weights, any CPU); give it your
// own X2IGenerator or FluxPipeline instead (see README.md).
//
//   node examples/embed-http.mjs            (serves until Ctrl-C or SIGTERM, which drain it first)
//   node examples/embed-http.mjs --once     (one request through it, then exits)
//   PORT=3000 node examples/embed-http.mjs --out fox.png
import fs from 'node:fs';
import http from 'node:http';
import { parseArgs } from 'node:util';
import * as x2i from 'x2i';

const { values: args } = parseArgs({ options: { once: { type: 'boolean', default: false }, out: { type: 'string' } } });

// 1. the models (yours: e.g. new x2i.X2IGenerator({ mllm, alignNet, pipeline }) from fromPretrained folders)
const model = await x2i.randomServedModel();          // tiny, random: { generator, tokenizer, maxLength, defaults }
// 2. the service, not listening: its routes behind a Node request listener
const service = await x2i.createServer({ generator: model, listen: false, maxQueue: 8 });

// 3. your app: its own routes, and x2i under /x2i/
const app = http.createServer((req, res) => {
  if (req.url === '/x2i' || req.url.startsWith('/x2i/')) {
    req.url = req.url.slice('/x2i'.length) || '/';
    service.handler(req, res);
    return;
  }
  if (req.url === '/') {
    res.setHeader('content-type', 'text/plain');
    res.end('my app: POST /x2i/v1/generate, GET /x2i/health, GET /x2i/metrics\n');
    return;
  }
  res.statusCode = 404;
  res.end();
});
await new Promise((resolve) => app.listen(Number(process.env.PORT ?? 0), '127.0.0.1', resolve));
const base = `http://127.0.0.1:${app.address().port}`;
console.log(`my app on ${base}, x2i at ${base}/x2i/v1/generate`);

// 4. a client: step progress as Server-Sent Events, then the image (base64 in the `result` event)
const res = await fetch(`${base}/x2i/v1/generate/stream`, { method: 'POST', headers: { 'content-type': 'application/json' },
  body: JSON.stringify({ prompt: 'a red fox in the snow', seed: 1, numInferenceSteps: 8 }) });
let buf = '';
const decoder = new TextDecoder();
for await (const chunk of res.body) {
  buf += decoder.decode(chunk, { stream: true });
  for (let i; (i = buf.indexOf('\n\n')) >= 0; buf = buf.slice(i + 2)) {
    const event = /^event: (.*)$/m.exec(buf.slice(0, i))?.[1], data = JSON.parse(/^data: (.*)$/m.exec(buf.slice(0, i))?.[1] ?? 'null');
    if (event === 'progress') process.stdout.write(`\rstep ${data.step}/${data.total}`);
    if (event === 'error') throw new Error(data.error.message);
    if (event === 'result') {
      const png = Buffer.from(data.image, 'base64');
      console.log(`\n${data.width}×${data.height} ${data.format}, seed ${data.seed}, ${png.length} bytes, ${data.timings.totalMs} ms`);
      if (args.out) fs.writeFileSync(args.out, png);
    }
  }
}

// 5. shutdown: the service finishes its running work and refuses the rest (503), then the app closes
const shutdown = async () => {
  await service.close();
  await new Promise((resolve) => app.close(resolve));
  model.dispose();
};
if (args.once) await shutdown();
else for (const signal of ['SIGINT', 'SIGTERM']) process.once(signal, () => void shutdown());
