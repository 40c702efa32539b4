#!/usr/bin/env node
import('../dist/app/cli.js').then((m) => m.main(process.argv.slice(2))).then((code) => { process.exitCode = code ?? 0; },
  (e) => { console.error(e?.message ?? e); process.exitCode = 1; });
