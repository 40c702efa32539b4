"""transformers baseline for bench/qwen.mjs (run with the GPU machine's python3, same run as x2i).

A Qwen2.5-VL-7B-size model with random bf16 weights (transformers' own init): the language model's prefill
of B x S tokens with and without output_hidden_states (every layer's state, what X2I's AlignNet reads), and
the vision tower on one image of H x W. CUDA events, median of --iters after 3 warm-up calls.
    python3 qwen_prefill.py [--batch 4] [--seq 512] [--image 448] [--iters 10] [--json out.json]
"""
import argparse, json, statistics, sys, traceback

import torch

p = argparse.ArgumentParser()
p.add_argument("--batch", type=int, default=4)
p.add_argument("--seq", type=int, default=512)
p.add_argument("--image", type=int, default=448)
p.add_argument("--iters", type=int, default=10)
p.add_argument("--json")
a = p.parse_args()

import transformers
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

text = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
            num_attention_heads=28, num_key_value_heads=4, rms_norm_eps=1e-6, rope_theta=1e6,
            max_position_embeddings=32768, rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]})
vision = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, in_chans=3, in_channels=3,
              out_hidden_size=3584, patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
              fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2)
res = {"transformers": transformers.__version__, "torch": torch.__version__, "device": torch.cuda.get_device_name()}
try:
    cfg = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **text, image_token_id=151655,
                           video_token_id=151656, vision_start_token_id=151652)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    torch.set_default_dtype(torch.float32)
    core = model.model

    def bench(fn):
        for _ in range(3):
            fn()
        ts = []
        for _ in range(a.iters):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record(); fn(); e.record(); torch.cuda.synchronize()
            ts.append(s.elapsed_time(e))
        return statistics.median(ts)

    ids = torch.randint(0, 151000, (a.batch, a.seq), device="cuda")
    mask = torch.ones_like(ids)
    mask[1::2, :64] = 0  # two rows left-padded by 64, as in bench/qwen.mjs
    with torch.inference_mode():
        res["prefill_ms"] = bench(lambda: core(input_ids=ids, attention_mask=mask, use_cache=False))
        res["prefill_all_layers_ms"] = bench(lambda: core(input_ids=ids, attention_mask=mask, use_cache=False,
                                                         output_hidden_states=True))
        g = a.image // 14
        px = torch.randn(g * g, 3 * 2 * 14 * 14, device="cuda", dtype=torch.bfloat16)
        thw = torch.tensor([[1, g, g]], device="cuda")
        res["vision_ms"] = bench(lambda: core.visual(px, grid_thw=thw))
        res["vision_patches"] = g * g
except Exception as e:  # report, do not hide
    res["error"] = "".join(traceback.format_exception(e))[-3000:]
print(json.dumps(res, indent=1))
if a.json:
    json.dump(res, open(a.json, "w"), indent=1)
