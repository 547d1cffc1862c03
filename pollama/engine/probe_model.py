"""The probe's model: a tiny llama whose weights use every type an extra CPU buffer
(AMX, CPU_REPACK on x86 and ARM) has kernels for, so one decode runs them all.

Weights are zero (every block format reads zero as zero), the vocabulary is
SentencePiece-shaped so llama.cpp loads it, and every dimension meets the
alignments those kernels ask for: rows a multiple of 32 (two AMX tiles),
row lengths a multiple of 256 (a K-quant super-block). About 1.2 MB.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

_Q = gguf.GGMLQuantizationType
EMBD = 256
FF = 512
VOCAB = 288
HEADS = 4
BOS, EOS = 1, 2
_LAYER_TYPES = (
    {
        "attn_q": _Q.Q4_0,
        "attn_k": _Q.Q4_1,
        "attn_v": _Q.Q8_0,
        "attn_output": _Q.Q4_K,
        "ffn_gate": _Q.Q5_K,
        "ffn_up": _Q.Q6_K,
        "ffn_down": _Q.IQ4_XS,
    },
    {
        "attn_q": _Q.IQ4_NL,
        "attn_k": _Q.Q2_K,
        "attn_v": _Q.MXFP4,
        "attn_output": _Q.Q4_0,
        "ffn_gate": _Q.Q4_K,
        "ffn_up": _Q.Q8_0,
        "ffn_down": _Q.F16,
    },
)
_SHAPES = {"ffn_gate": (FF, EMBD), "ffn_up": (FF, EMBD), "ffn_down": (EMBD, FF)}


def write_probe_model(path: Path) -> Path:
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_context_length(64)
    writer.add_embedding_length(EMBD)
    writer.add_block_count(len(_LAYER_TYPES))
    writer.add_feed_forward_length(FF)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(VOCAB)
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{i:02X}>" for i in range(256))]
    tokens += [f"t{i}" for i in range(VOCAB - len(tokens))]
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * VOCAB)
    # unknown, control ×2, byte ×256, normal
    writer.add_token_types([2, 3, 3, *[6] * 256, *[1] * (VOCAB - 259)])
    writer.add_bos_token_id(BOS)
    writer.add_eos_token_id(EOS)
    writer.add_tensor("token_embd.weight", np.zeros((VOCAB, EMBD), np.float32))
    writer.add_tensor("output_norm.weight", np.ones(EMBD, np.float32))
    _add_raw(writer, "output.weight", (VOCAB, EMBD), _Q.Q4_0)
    for layer, types in enumerate(_LAYER_TYPES):
        writer.add_tensor(f"blk.{layer}.attn_norm.weight", np.ones(EMBD, np.float32))
        writer.add_tensor(f"blk.{layer}.ffn_norm.weight", np.ones(EMBD, np.float32))
        for name, qtype in types.items():
            _add_raw(writer, f"blk.{layer}.{name}.weight", _SHAPES.get(name, (EMBD, EMBD)), qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _add_raw(
    writer: gguf.GGUFWriter, name: str, shape: tuple[int, int], qtype: gguf.GGMLQuantizationType
) -> None:
    rows, cols = shape
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    writer.add_tensor(name, np.zeros((rows, cols // block * size), np.uint8), raw_dtype=qtype)
