"""A reranker made from the demo model: SmolLM2 asked whether a document answers a query,
scored by its own "Yes" and "No" logits, as Qwen3-Reranker GGUFs are by "yes" and "no".

llama.cpp's converter turns Qwen3-Reranker into a ``qwen3`` GGUF with rank pooling
(``<arch>.pooling_type`` 4), labels ``["yes", "no"]``, a ``cls.output.weight`` holding the
LM head's rows for "yes" and "no", and a ``tokenizer.chat_template.rerank`` prompt with
``{query}`` and ``{document}`` in it. The graph then reads the last token's normalized
hidden state, applies the head and a softmax: the score is P(yes) against P(no).

llama.cpp loads ``cls.output.weight`` only for the bert family, ``qwen3`` and ``qwen3vl``,
not for ``llama``. So the demo's weights are re-expressed as ``qwen3``, which differs
from ``llama`` in two places, both handled without requantizing anything:

- RoPE pairs dimensions (i, i + d/2) (NEOX), not (2i, 2i + 1): the Q and K rows go back to
  the order the llama converter permuted them from. Whole quantized rows move: exact.
- Each head's Q and K pass an RMS norm (``attn_q_norm``/``attn_k_norm``) that llama lacks.
  It is made an identity to float precision: the residual stream is scaled by S (the
  block scales of ``token_embd``, ``attn_output`` and ``ffn_down`` times S, a power of two:
  exact in f16) and the norm epsilon by S², so every residual norm computes the same
  bits as before; Wq and Wk are scaled by A (a power of two, below one), so a head's
  mean(q²)·A² is tiny next to eps·S², and a norm weight of sqrt(eps·S²)/A returns q to
  a relative error of mean(q²)·A²/(2·eps·S²) ≈ 2e-7·mean(q²).

The LM head stays tied to the (scaled) token embeddings, so a generation with this model
would see logits times S (argmax unchanged); a reranker never reads them. ``build`` with
``head=False`` writes that plain re-expression, to check it against the demo.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import gguf
import numpy as np

RESIDUAL_SCALE = 2.0**13
"""S: the largest power of two that keeps every scaled f16 block scale finite (the demo's
largest, an ffn_down minimum of 5.8, becomes 47,000 of f16's 65,504)."""
QK_SCALE = 2.0**-6
"""A: the smallest power of two that keeps every Wq/Wk block scale a normal f16."""

YES, NO = "Yes", "No"
"""The answers whose output rows make the head. Qwen3-Reranker was trained to answer
"yes"/"no"; SmolLM2 starts an assistant answer with a capital, so its "Yes"/"No" rows are
the ones its output means (measured on 20 easy cases: 16 right, against 9 for "yes"/"no")."""
RERANK_TEMPLATE = (
    "<|im_start|>system\n"
    'Judge whether the Document answers the Query. Answer only "Yes" or "No".<|im_end|>\n'
    "<|im_start|>user\n"
    "Query: {query}\n"
    "Document: {document}<|im_end|>\n"
    "<|im_start|>assistant\n"
)
"""ChatML, as SmolLM2 was tuned on; ``{query}`` and ``{document}`` are what llama-server
substitutes."""

_Q = gguf.GGMLQuantizationType
# Bytes of one block, and where its f16 scale fields (d, and m for the *_1 types) sit.
_BLOCK_FIELDS = {_Q.Q8_0: (34, (0,)), _Q.Q4_0: (18, (0,)), _Q.Q4_1: (20, (0, 2))}


def build(
    src: Path, dst: Path, *, head: bool = True, template: str | None = RERANK_TEMPLATE
) -> Path:
    """Write the reranker (or, without ``head``, the plain qwen3 re-expression) to ``dst``;
    with ``template`` None it has no rerank template (pairs get the default format)."""
    reader = gguf.GGUFReader(src)
    if _field(reader, "general.architecture") != "llama":
        raise ValueError(f"{src} is not a llama GGUF")
    eps = float(_field(reader, "llama.attention.layer_norm_rms_epsilon"))
    writer = gguf.GGUFWriter(dst, "qwen3")
    _copy_kv(reader, writer, eps)
    if head:
        writer.add_pooling_type(gguf.PoolingType.RANK)
        writer.add_classifier_output_labels([YES, NO])
        if template is not None:
            writer.add_chat_template([{"name": "rerank", "template": template}])
        writer.add_name("SmolLM2 135M reranker (pollama test asset)")
    n_head = int(_field(reader, "llama.attention.head_count"))
    n_head_kv = int(_field(reader, "llama.attention.head_count_kv"))
    norm_weight = math.sqrt(eps * RESIDUAL_SCALE**2) / QK_SCALE
    for tensor in reader.tensors:
        name, data = tensor.name, np.array(tensor.data)
        kind = name.rsplit(".", 2)[-2] if name.startswith("blk.") else name.split(".")[0]
        if kind in ("token_embd", "attn_output", "ffn_down"):
            data = _scaled(data, tensor.tensor_type, RESIDUAL_SCALE)
        elif kind in ("attn_q", "attn_k"):
            heads = n_head if kind == "attn_q" else n_head_kv
            data = _scaled(_unpermute(data, heads), tensor.tensor_type, QK_SCALE)
        raw = None if tensor.tensor_type in (_Q.F32, _Q.F16) else tensor.tensor_type
        writer.add_tensor(name, data, raw_dtype=raw)
        if kind == "attn_q":
            head_dim = data.shape[0] // n_head
            block = name.rsplit(".", 2)[0]
            for norm in ("attn_q_norm", "attn_k_norm"):
                writer.add_tensor(
                    f"{block}.{norm}.weight", np.full(head_dim, norm_weight, np.float32)
                )
    if head:
        writer.add_tensor("cls.output.weight", _answer_rows(reader))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def _field(reader: gguf.GGUFReader, key: str) -> Any:
    field = reader.get_field(key)
    if field is None:
        raise ValueError(f"the GGUF has no {key}")
    return field.contents()


def _copy_kv(reader: gguf.GGUFReader, writer: gguf.GGUFWriter, eps: float) -> None:
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = field.contents()
        if key == "llama.attention.layer_norm_rms_epsilon":
            value = eps * RESIDUAL_SCALE**2  # exact: a power of four
        if key.startswith("llama."):
            key = "qwen3." + key[len("llama.") :]
        sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, field.types[0], sub_type=sub_type)


def _scaled(data: np.ndarray, kind: gguf.GGMLQuantizationType, factor: float) -> np.ndarray:
    """The tensor times ``factor`` (a power of two), by scaling each block's f16 scales;
    refuses if any of them would not be exact."""
    if kind == _Q.F32:
        return data * np.float32(factor)
    size, offsets = _BLOCK_FIELDS[kind]
    blocks = data.reshape(-1).copy().reshape(-1, size)
    for offset in offsets:
        old = blocks[:, offset : offset + 2].copy().view(np.float16)
        new = (old.astype(np.float32) * np.float32(factor)).astype(np.float16)
        exact = new.astype(np.float32) == old.astype(np.float32) * np.float32(factor)
        tiny = (np.abs(new) < np.finfo(np.float16).tiny) & (new != 0)
        if not exact.all() or tiny.any() or not np.isfinite(new).all():
            raise ValueError(f"scaling a {kind.name} tensor by {factor} would not be exact")
        blocks[:, offset : offset + 2] = new.view(np.uint8)
    return blocks.reshape(data.shape)


def _unpermute(data: np.ndarray, n_head: int) -> np.ndarray:
    """Rows back from llama's interleaved RoPE order to the NEOX (HF) order.

    llama's converter put HF row ``h·d + j·d/2 + i`` at ``h·d + 2i + j``; this undoes it."""
    rows = data.shape[0]
    head_dim = rows // n_head
    order = np.arange(rows).reshape(n_head, head_dim // 2, 2).swapaxes(1, 2).reshape(-1)
    return data[order]


def _answer_rows(reader: gguf.GGUFReader) -> np.ndarray:
    """The (unscaled) output rows of the answer tokens, as the converter takes
    them from a tied LM head: the classification head, F32."""
    tokens = _field(reader, "tokenizer.ggml.tokens")
    ids = [tokens.index(YES), tokens.index(NO)]
    embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    rows = np.array(embd.data)[ids]
    return gguf.quants.dequantize(rows, embd.tensor_type).astype(np.float32)
