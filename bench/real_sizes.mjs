// The configs of the real-size benchmarks (random weights through fromConfig): FLUX.1's T5-XXL and CLIP-L text
// encoders and X2I's Qwen2.5-VL-7B (vision tower included).
export const T5_XXL = { model_type: 't5', vocab_size: 32128, d_model: 4096, d_kv: 64, d_ff: 10240, num_layers: 24, num_heads: 64,
  relative_attention_num_buckets: 32, relative_attention_max_distance: 128, layer_norm_epsilon: 1e-6, feed_forward_proj: 'gated-gelu' };
export const CLIP_L = { vocab_size: 49408, hidden_size: 768, intermediate_size: 3072, num_attention_heads: 12, num_hidden_layers: 12,
  max_position_embeddings: 77, eos_token_id: 2, layer_norm_eps: 1e-5, hidden_act: 'quick_gelu' };
export const QWEN_7B = { model_type: 'qwen2_5_vl', vocab_size: 152064, hidden_size: 3584, intermediate_size: 18944, num_hidden_layers: 28,
  num_attention_heads: 28, num_key_value_heads: 4, rms_norm_eps: 1e-6, rope_theta: 1e6, rope_scaling: { type: 'mrope', mrope_section: [16, 24, 24] },
  image_token_id: 151655, video_token_id: 151656, vision_start_token_id: 151652,
  vision_config: { depth: 32, hidden_size: 1280, intermediate_size: 3420, num_heads: 16, in_chans: 3, out_hidden_size: 3584,
    patch_size: 14, spatial_merge_size: 2, temporal_patch_size: 2, window_size: 112, fullatt_block_indexes: [7, 15, 23, 31], tokens_per_second: 2 } };


// The prompt token ids the real-size benchmarks feed (512 for T5 and Qwen, 77 for CLIP), on `device`.
export function promptIds(Tensor, device, T = 512) {
  const ids = (n, vocab, seed) => Tensor.fromArray(BigInt64Array.from({ length: n }, (_, i) => BigInt((i * 7919 + seed * 104729) % vocab)), [1, n], { device });
  return { t5: ids(T, 32128, 1), clip: ids(77, 49407, 2), qwen: ids(T, 150000, 3) };
}

// The teacher's conditioning of those ids: T5's last hidden state and CLIP's pooled output (the two encoders side
// by side, as FluxPipeline.encodePrompt runs them).
export async function teacherConditioning(t5, clip, ids) {
  const [a, c] = await Promise.all([t5.forward({ inputIds: ids.t5 }), clip.forward({ inputIds: ids.clip })]);
  a.hiddenStates.dispose();
  c.lastHiddenState.dispose();
  c.hiddenStates.dispose();
  return { encoderHiddenStates: a.lastHiddenState, pooledProjections: c.pooledOutput };
}
