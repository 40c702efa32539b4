import * as x2i from './dist/index.js';
const g = 'test/fixtures/golden/';
const io = await x2i.loadSafetensors(g + 'qwen2_5_vl/io.safetensors');
const m = await x2i.QwenVLEncoder.fromPretrained(g + 'qwen2_5_vl');
const r = await m.forward({ inputIds: io['image.input_ids'], pixelValues: io['image.pixel_values'], imageGridThw: io['image.image_grid_thw'] });
console.log(process.env.X2I_POSVAR, await x2i.relativeError(r.hiddenStates, io['image.hidden_states']));
