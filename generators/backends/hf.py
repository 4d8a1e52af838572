"""The `transformers` backend: runs anywhere torch runs, CPU included.

Prompts are sorted by length before batching so a batch holds prompts of similar size and little
compute goes to padding; results are put back in input order. Padding is on the left so every
row's next token sits in the last column.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
from pydantic import BaseModel, ConfigDict, Field

from ..chat import choice_token_ids, encode_batch
from ..default_model import resolve_model
from ..types import ChoiceScores, Completion, Prompt, SamplingParams
from .base import parse_options


class TransformersOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device: str = Field("auto", description="`auto`, `cpu`, `cuda`, `cuda:1`, ...")
    dtype: str = Field("auto", description="`auto` (bf16 on GPU, fp32 on CPU), `float32`, `bfloat16`, `float16`.")
    batch_size: int = Field(16, ge=1, description="Sequences per forward pass (n samples count each).")
    max_length: int | None = Field(None, ge=8, description="Context length; defaults to the model's.")
    trust_remote_code: bool = False


class TransformersBackend:
    name = "transformers"

    def __init__(self, model: str = "default", **options):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.options = opts = parse_options(TransformersOptions, options, self.name)
        self.model = model
        path = resolve_model(model)
        device = opts.device if opts.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = {"auto": torch.bfloat16 if device.startswith("cuda") else torch.float32}.get(opts.dtype) or getattr(
            torch, opts.dtype
        )
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=opts.trust_remote_code)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left"
        self.lm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=opts.trust_remote_code)
        self.lm.to(device).eval()
        self.device = torch.device(device)
        cfg_len = getattr(self.lm.config, "max_position_embeddings", None) or self.tokenizer.model_max_length
        self.context_length = int(opts.max_length or cfg_len)
        eos = self.lm.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.eos_token_id}
        self.eos_ids.discard(None)

    def _pad(self, rows: list[list[int]]) -> dict[str, torch.Tensor]:
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=self.device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.device)
        return {"input_ids": ids, "attention_mask": mask}

    def _batches(self, order: list[int], per_item: int):
        size = max(1, self.options.batch_size // per_item)
        for start in range(0, len(order), size):
            yield order[start : start + size]

    def _encode_all(self, prompts: list[Prompt], reserve: int) -> tuple[list[list[int] | None], dict[int, str]]:
        return encode_batch(self.tokenizer, prompts, reserve, self.context_length)

    def generate(self, chats: list[Prompt], params: SamplingParams) -> list[list[Completion]]:
        encoded, errors = self._encode_all(chats, reserve=1)
        out: list[list[Completion] | None] = [None] * len(chats)
        for i, msg in errors.items():
            out[i] = [Completion.failed(msg) for _ in range(params.n)]
        order = sorted((i for i, e in enumerate(encoded) if e is not None), key=lambda i: -len(encoded[i]))
        for b, batch in enumerate(self._batches(order, params.n)):
            rows = [encoded[i] for i in batch]
            for i, comps in zip(batch, self._generate_batch(rows, params, b)):
                out[i] = comps
        return out  # type: ignore[return-value]

    @torch.inference_mode()
    def _generate_batch(
        self, rows: list[list[int]], params: SamplingParams, batch_index: int
    ) -> list[list[Completion]]:
        inputs = self._pad(rows)
        width = inputs["input_ids"].shape[1]
        max_new = max(1, min(params.max_new_tokens, self.context_length - width))
        sample = params.temperature > 0
        copies = params.n if sample else 1  # greedy samples are identical: decode once, copy
        kwargs = dict(
            max_new_tokens=max_new,
            do_sample=sample,
            num_return_sequences=copies,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        if sample:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
        else:  # the model's generation_config may carry sampling defaults; greedy needs none
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if params.stop:
            kwargs.update(stop_strings=params.stop, tokenizer=self.tokenizer)
        seeded = torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else [])
        with seeded if params.seed is not None else nullcontext():
            if params.seed is not None:
                torch.manual_seed(params.seed + 1_000_003 * batch_index)
            generated = self.lm.generate(**inputs, **kwargs)[:, width:]
        results = []
        for r in range(len(rows)):
            comps = [self._completion(generated[r * copies + j], params, max_new) for j in range(copies)]
            results.append(comps if sample else [comps[0].model_copy() for _ in range(params.n)])
        return results

    def _completion(self, ids: torch.Tensor, params: SamplingParams, max_new: int) -> Completion:
        ids = ids.tolist()
        n, reason = len(ids), "length"
        for k, t in enumerate(ids):
            if t in self.eos_ids:
                n, reason = k + 1, "stop"
                break
        text = self.tokenizer.decode(ids[:n], skip_special_tokens=True)
        if params.stop:
            cut = min((text.find(s) for s in params.stop if s in text), default=-1)
            if cut >= 0:
                text, reason = text[:cut], "stop"
        if reason == "length" and n < max_new:
            reason = "stop"  # stopped by a stop string that decoding merged across tokens
        return Completion(text=text, tokens=n, finish_reason=reason)

    def choice_logprobs(self, prompts: list[Prompt], choices: list[str]) -> list[ChoiceScores]:
        choice_ids = choice_token_ids(self.tokenizer, choices)
        longest = max(len(c) for c in choice_ids)
        encoded, errors = self._encode_all(prompts, reserve=longest)
        out: list[ChoiceScores | None] = [None] * len(prompts)
        for i, msg in errors.items():
            out[i] = ChoiceScores(error=msg)
        order = sorted((i for i, e in enumerate(encoded) if e is not None), key=lambda i: -len(encoded[i]))
        single = all(len(c) == 1 for c in choice_ids)
        for batch in self._batches(order, 1 if single else len(choices)):
            rows = [encoded[i] for i in batch]
            scores = self._score_next(rows, choice_ids) if single else self._score_sequences(rows, choice_ids)
            for i, s in zip(batch, scores):
                out[i] = ChoiceScores(dict(zip(choices, s)))
        return out  # type: ignore[return-value]

    def _forward(self, rows: list[list[int]]) -> torch.Tensor:
        inputs = self._pad(rows)
        # Positions count real tokens only, so a left-padded row sees the positions it would alone.
        pos = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        logits = self.lm(**inputs, position_ids=pos).logits
        return torch.log_softmax(logits.float(), dim=-1)

    @torch.inference_mode()
    def _score_next(self, rows: list[list[int]], choice_ids: list[list[int]]) -> list[list[float]]:
        """Every choice is one token: one forward pass, read the last position."""
        last = self._forward(rows)[:, -1, :]
        idx = torch.tensor([c[0] for c in choice_ids], device=last.device)
        return last[:, idx].tolist()

    @torch.inference_mode()
    def _score_sequences(self, rows: list[list[int]], choice_ids: list[list[int]]) -> list[list[float]]:
        """Some choice spans several tokens: score prompt+choice and sum the choice's tokens."""
        seqs = [r + c for r in rows for c in choice_ids]
        logp = self._forward(seqs)
        width = logp.shape[1]
        flat = []
        for s, _seq in enumerate(seqs):
            c = choice_ids[s % len(choice_ids)]
            total = 0.0
            for k, tok in enumerate(c):
                # the token at column width-len(c)+k is predicted by the column before it
                total += logp[s, width - len(c) + k - 1, tok].item()
            flat.append(total if math.isfinite(total) else -math.inf)
        m = len(choice_ids)
        return [flat[r * m : (r + 1) * m] for r in range(len(rows))]

    def close(self) -> None:
        self.lm = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
