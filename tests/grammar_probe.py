"""Check GBNF grammars with llama.cpp's own grammar code, in a process of its own.

    python tests/grammar_probe.py MODEL

Loads MODEL, prints ``{"ready": true}``, then answers one JSON request per
line of stdin with one JSON line on stdout. The tests run it as a subprocess so
that llama.cpp's stderr stays out of pytest and an abort in C++ cannot take
pytest down. Requests:

``{"op": "parse", "grammars": [...]}``
    ``{"ok": [bool, ...]}``: whether ``llama_sampler_init_grammar`` accepts each.
``{"op": "accepts", "grammar": G, "texts": [...]}``
    ``{"ok": [bool, ...]}``: whether G derives exactly each text. The text is
    tokenized and each token is offered to the grammar sampler as a
    one-candidate array (rejection sets its logit to -inf); only tokens that
    survive are accepted, because accepting a rejected token aborts llama.cpp.
    At the end, the end-of-generation token must be allowed.
``{"op": "generate", "grammar": G, "prompt": P, "seed": S, "max_tokens": N}``
    ``{"text": str, "stop": "eog" | "length"}`` from the chain
    grammar -> top_k 40 -> temp 0.8 -> dist(seed), prompt P given as raw text.
"""

from __future__ import annotations

import ctypes
import json
import math
import sys
from typing import Any

import llama_cpp as L

from pollama.protocol.wire import SamplingOptions
from pollama.runner.llama import SlotSampler, Threadpool, Vocab


class Probe:
    def __init__(self, model_path: str) -> None:
        L.llama_backend_init()
        params = L.llama_model_default_params()
        # Grammars, not kernels, are under test: the plain CPU path runs on every CPU
        # (llama.cpp's AMX kernels trap in some VMs).
        params.use_extra_bufts = False
        self.model = L.llama_model_load_from_file(model_path.encode(), params)
        if not self.model:
            raise SystemExit("model failed to load")
        self.vocab = L.llama_model_get_vocab(self.model)
        self.eos = L.llama_vocab_eos(self.vocab)
        self.ctx: Any = None

    def grammar(self, text: str) -> Any:
        return L.llama_sampler_init_grammar(self.vocab, text.encode(), b"root")

    def parse(self, grammars: list[str]) -> dict[str, Any]:
        ok = []
        for text in grammars:
            sampler = self.grammar(text)
            ok.append(bool(sampler))
            if sampler:
                L.llama_sampler_free(sampler)
        return {"ok": ok}

    def tokenize(self, text: str, special: bool = False) -> list[int]:
        data = text.encode()
        size = len(data) + 8
        buf = (L.llama_token * size)()
        n = L.llama_tokenize(self.vocab, data, len(data), buf, size, False, special)
        if n < 0:
            raise RuntimeError(f"tokenize failed for {text!r}")
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(256)
        n = L.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        return buf.raw[:n]

    def allowed(self, sampler: Any, token: int) -> bool:
        cell = (L.llama_token_data * 1)(L.llama_token_data(token, 0.0, 0.0))
        array = L.llama_token_data_array(cell, 1, -1, False)
        L.llama_sampler_apply(sampler, ctypes.byref(array))
        return not math.isinf(cell[0].logit)

    def accepts(self, grammar: str, texts: list[str]) -> dict[str, Any]:
        sampler = self.grammar(grammar)
        if not sampler:
            return {"error": "grammar does not parse"}
        ok = []
        try:
            for text in texts:
                tokens = self.tokenize(text)
                if b"".join(self.piece(t) for t in tokens) != text.encode():
                    return {"error": f"tokenization does not round-trip: {text!r}"}
                L.llama_sampler_reset(sampler)
                passed = True
                for token in tokens:
                    if not self.allowed(sampler, token):
                        passed = False
                        break
                    L.llama_sampler_accept(sampler, token)
                ok.append(passed and self.allowed(sampler, self.eos))
        finally:
            L.llama_sampler_free(sampler)
        return {"ok": ok}

    def generate(self, grammar: str, prompt: str, seed: int, max_tokens: int) -> dict[str, Any]:
        if self.ctx is None:
            params = L.llama_context_default_params()
            params.n_ctx = 1024
            params.n_batch = 512
            params.n_threads = params.n_threads_batch = 2
            self.ctx = L.llama_init_from_model(self.model, params)
            # Workers that sleep between decodes, as in the runner: spinning ones crawl
            # when the machine is busy with other tests.
            self.threadpool = Threadpool.create(2)
            if self.threadpool is not None:
                self.threadpool.attach(self.ctx)
        L.llama_memory_clear(L.llama_get_memory(self.ctx), True)
        tokens = self.tokenize(prompt, special=True)
        # The runner's own sampler: the chain draws, the grammar checks that token and
        # filters the whole vocabulary only when it refuses it.
        options = SamplingOptions(temperature=0.8, top_k=40, seed=seed)
        try:
            sampler = SlotSampler(Vocab(self.model), options, tokens, 1024, grammar=grammar)
        except ValueError:
            return {"error": "grammar does not parse"}
        try:
            batch = (L.llama_token * len(tokens))(*tokens)
            if L.llama_decode(self.ctx, L.llama_batch_get_one(batch, len(tokens))) != 0:
                return {"error": "decode failed"}
            out = b""
            for _ in range(max_tokens):
                token = sampler.sample(self.ctx, -1)
                if L.llama_vocab_is_eog(self.vocab, token):
                    return {"text": out.decode(errors="replace"), "stop": "eog"}
                out += self.piece(token)
                one = (L.llama_token * 1)(token)
                if L.llama_decode(self.ctx, L.llama_batch_get_one(one, 1)) != 0:
                    return {"error": "decode failed"}
            return {"text": out.decode(errors="replace"), "stop": "length"}
        finally:
            sampler.free()


def main() -> None:
    probe = Probe(sys.argv[1])
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        op = request.pop("op")
        try:
            reply = getattr(probe, op)(**request)
        except Exception as exc:  # a bad request is the test's problem; keep serving
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
