"""The `transformers` backend: runs anywhere torch runs, CPU included.

Most of what the pipeline asks a model is prefill: every reading of a pair repeats its
conversation and answers, every critique repeats the few-shot block. So a batch's prompts are
grouped by the longest token prefix they share (`engine_utils.prefix_groups`, which assumes no
prompt layout): a group's prefix is run once and its KV cache is copied to each row, and only the
rest of each row is run on top of it. Scoring asks the model for the last position's logits only
and soft-maxes that one row, instead of logits over the whole vocabulary at every position.
`prefix_sharing: false` runs every row in full with full logits, the reference the fast path is
tested against.

Rows are padded on the left, so every row's next token sits in the last column; with a shared
prefix a row is [prefix padding | prefix | suffix padding | suffix], and positions count real
tokens only, so every row sees the positions it would see alone. Groups are batched by suffix
length so little compute goes to padding; results are put back in input order.
"""

from __future__ import annotations

import inspect
import math
import threading
from collections.abc import Iterator

import torch

from cai.core.errors import UserError

from ..chat import choice_token_ids, encode_batch
from ..default_model import resolve_model
from ..types import ChoiceScores, Completion, Prompt, SamplingParams
from .base import parse_options
from .engine_utils import ChoicePlan, PrefixGroup, StepResult, prefix_groups, request_seed
from .options import TransformersOptions
from .seeded import seeded_sampling

GROUPED_SDPA = "sdpa_grouped_kv"


def _sdpa_grouped_kv(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """transformers' sdpa attention, except that grouped key/value heads reach torch's kernel as
    they are (`enable_gqa`) under a padding mask too.

    transformers copies the key/value heads out to one per query head whenever a mask is given
    (on CUDA a mask with grouped heads falls back to the slow math kernel). On CPU torch's kernel
    takes both, with the same result, and the copy (every layer, every decoding step, the whole
    KV cache) took most of a decoding step of a left-padded batch of long prompts.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    plain = kwargs.get("position_bias") is None and kwargs.get("cache") is None and key.shape[-1] == value.shape[-1]
    if attention_mask is None or groups == 1 or query.device.type != "cpu" or not plain:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, enable_gqa=True
    )
    return out.transpose(1, 2).contiguous(), None


def use_grouped_kv_attention(lm) -> None:
    """Switch a model that runs transformers' sdpa on CPU to `_sdpa_grouped_kv`."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if lm.config._attn_implementation != "sdpa" or lm.device.type != "cpu":
        return
    AttentionInterface.register(GROUPED_SDPA, _sdpa_grouped_kv)
    AttentionMaskInterface.register(GROUPED_SDPA, sdpa_mask)
    lm.set_attn_implementation(GROUPED_SDPA)


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
        attn = {} if opts.attn_implementation == "auto" else {"attn_implementation": opts.attn_implementation}
        try:
            self.lm = AutoModelForCausalLM.from_pretrained(
                path, dtype=dtype, trust_remote_code=opts.trust_remote_code, **attn
            )
        except (ValueError, ImportError) as e:
            if not attn:
                raise
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"backend transformers: options.attn_implementation: {first}") from None
        self.lm.to(device).eval()
        if opts.attn_implementation == "auto":
            use_grouped_kv_attention(self.lm)
        self.device = torch.device(device)
        cfg_len = getattr(self.lm.config, "max_position_embeddings", None) or self.tokenizer.model_max_length
        self.context_length = int(opts.max_length or cfg_len)
        eos = self.lm.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.eos_token_id}
        self.eos_ids.discard(None)
        self._keep_one = (
            {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(self.lm.forward).parameters else {}
        )

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

    def generate(
        self, chats: list[Prompt], params: SamplingParams, seeds: list[int] | None = None
    ) -> list[list[Completion]]:
        """`seeds`: one per chat; else `params.seed` seeds chat i with seed + SEED_STRIDE * i. A row's
        samples then depend on its seed alone, never on the rows batched beside it."""
        if seeds is None and params.seed is not None:
            seeds = [request_seed(params.seed, i) for i in range(len(chats))]
        encoded, errors = self._encode_all(chats, reserve=1)
        out: list[list[Completion] | None] = [None] * len(chats)
        for i, msg in errors.items():
            out[i] = [Completion.failed(msg) for _ in range(params.n)]
        todo = [i for i, e in enumerate(encoded) if e is not None]
        if self.options.prefix_sharing:
            per_batch = max(1, self.options.batch_size // params.n)
            batches = self._grouped_batches([encoded[i] for i in todo], per_batch)
        else:
            order = sorted(range(len(todo)), key=lambda k: -len(encoded[todo[k]]))
            batches = [[PrefixGroup(0, batch)] for batch in self._batches(order, params.n)]
        for groups in batches:
            members = [todo[k] for g in groups for k in g.rows]
            split = [
                (encoded[todo[g.rows[0]]][: g.shared], [encoded[todo[k]][g.shared :] for k in g.rows]) for g in groups
            ]
            row_seeds = [seeds[i] for i in members] if seeds is not None else None
            for i, comps in zip(members, self._generate_batch(split, params, row_seeds)):
                out[i] = comps
        return out  # type: ignore[return-value]

    def _grouped_batches(
        self, rows: list[list[int]], per_batch: int, tokens: int | None = None
    ) -> list[list[PrefixGroup]]:
        """Prefix groups packed into batches of at most `per_batch` rows and, with `tokens`, at
        most that many rows × (widest prefix + widest suffix); longest suffixes first.

        A group larger than a batch is cut into pieces that each run its prefix again: a prefix
        pass costs one row, and a batch as wide as the group would cost more memory than it saves.
        """
        longest = max(map(len, rows), default=1)
        per_batch = max(1, min(per_batch, tokens // longest if tokens else per_batch))
        pieces: list[PrefixGroup] = []
        for g in prefix_groups(rows):
            pieces += [PrefixGroup(g.shared, g.rows[k : k + per_batch]) for k in range(0, len(g.rows), per_batch)]
        suffix = {id(g): max(len(rows[k]) - g.shared for k in g.rows) for g in pieces}
        pieces.sort(key=lambda g: -suffix[id(g)])
        batches: list[list[PrefixGroup]] = []
        count = shared = width = 0
        for g in pieces:
            grown = (count + len(g.rows), max(shared, g.shared), max(width, suffix[id(g)]))
            if not batches or grown[0] > per_batch or (tokens and grown[0] * (grown[1] + grown[2]) > tokens):
                batches.append([])
                grown = (len(g.rows), g.shared, suffix[id(g)])
            batches[-1].append(g)
            count, shared, width = grown
        return batches

    def _prefill_prefixes(
        self, split: list[tuple[list[int], list[list[int]]]], copies: int = 1
    ) -> dict[str, torch.Tensor]:
        """Model inputs for the suffixes of `split` ((prefix, suffixes) per group), each prefix
        already run once and its cache copied to its rows (`copies` times each in the cache, as
        `generate` repeats the inputs for n samples but not a cache handed to it).

        Returns the suffix columns' `input_ids` and `position_ids`, the `attention_mask` over
        prefix and suffix columns and `past_key_values`, ready for a forward pass; `generate`
        wants the prefix columns' ids in front too (it runs only the columns past the cache), so
        they come as `prefix_ids`. Without any shared prefix: plain padded inputs.
        """
        owner = [g for g, (_, sufs) in enumerate(split) for _ in sufs]
        sfx = self._pad([s for _, sufs in split for s in sufs])
        if not any(prefix for prefix, _ in split):
            pos = (sfx["attention_mask"].cumsum(-1) - 1).clamp(min=0)
            return {**sfx, "position_ids": pos}
        pre = self._pad([prefix for prefix, _ in split])
        pre_pos = (pre["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        cache = self.lm(**pre, position_ids=pre_pos, use_cache=True, **self._keep_one).past_key_values
        idx = torch.tensor(owner, device=self.device)
        cache.batch_select_indices(idx.repeat_interleave(copies))
        width = pre["input_ids"].shape[1]
        mask = torch.cat([pre["attention_mask"][idx], sfx["attention_mask"]], 1)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, width:]
        return {
            "input_ids": sfx["input_ids"],
            "attention_mask": mask,
            "position_ids": pos,
            "past_key_values": cache,
            "prefix_ids": pre["input_ids"][idx],
        }

    @torch.inference_mode()
    def _generate_batch(
        self, split: list[tuple[list[int], list[list[int]]]], params: SamplingParams, seeds: list[int] | None
    ) -> list[list[Completion]]:
        """Seeded sampling draws each row's tokens from the row's own generator (`SeededSampling`),
        so it is greedy decoding over noised logits; the n samples of a row are n copies of it."""
        sample = params.temperature > 0
        copies = params.n if sample else 1  # greedy samples are identical: decode once, copy
        seeded = sample and seeds is not None
        inputs = self._prefill_prefixes(split, copies)
        inputs.pop("position_ids")  # generate derives them from the mask, for the new tokens too
        if "prefix_ids" in inputs:
            inputs["input_ids"] = torch.cat([inputs.pop("prefix_ids"), inputs["input_ids"]], 1)
        if seeded and copies > 1:  # the cache holds each row `copies` times already; so must the inputs
            inputs["input_ids"] = inputs["input_ids"].repeat_interleave(copies, 0)
            inputs["attention_mask"] = inputs["attention_mask"].repeat_interleave(copies, 0)
        rows = [p + s for p, sufs in split for s in sufs]
        width = inputs["input_ids"].shape[1]
        longest = max(len(r) for r in rows)
        max_new = max(1, min(params.max_new_tokens, self.context_length - longest))
        kwargs: dict = dict(max_new_tokens=max_new, pad_token_id=self.tokenizer.pad_token_id)
        if seeded:
            row_seeds = [s + j for s in seeds for j in range(copies)]  # as engines seed the j-th of n samples
            kwargs["logits_processor"] = seeded_sampling(params, row_seeds, width)
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        elif sample:
            kwargs.update(do_sample=True, num_return_sequences=copies)
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
        else:  # the model's generation_config may carry sampling defaults; greedy needs none
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if params.stop:
            kwargs.update(stop_strings=params.stop, tokenizer=self.tokenizer)
        generated = self.lm.generate(**inputs, **kwargs)[:, width:]
        results = []
        for r in range(len(rows)):
            comps = [self._completion(generated[r * copies + j], params, max_new) for j in range(copies)]
            results.append(comps if sample else [comps[0].model_copy() for _ in range(params.n)])
        return results

    def generate_stream(
        self, prompt: Prompt, params: SamplingParams, seed: int | None = None
    ) -> Iterator[str | Completion]:
        """One prompt's text as it is decoded (str pieces), then its `Completion`: what an editor
        shows while the model writes. The same tokens as `generate` gives this prompt alone."""
        from transformers import TextIteratorStreamer

        encoded, errors = self._encode_all([prompt], reserve=1)
        if errors:
            yield Completion.failed(errors[0])
            return
        ids = encoded[0]
        max_new = max(1, min(params.max_new_tokens, self.context_length - len(ids)))
        inputs = self._pad([ids])
        kwargs: dict = dict(max_new_tokens=max_new, pad_token_id=self.tokenizer.pad_token_id)
        if params.temperature > 0:
            row_seed = seed if seed is not None else (params.seed if params.seed is not None else 0)
            kwargs["logits_processor"] = seeded_sampling(params, [row_seed], inputs["input_ids"].shape[1])
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if params.stop:
            kwargs.update(stop_strings=params.stop, tokenizer=self.tokenizer)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        out: dict = {}

        def work() -> None:
            try:
                with torch.inference_mode():
                    out["ids"] = self.lm.generate(**inputs, **kwargs, streamer=streamer)
            except Exception as e:  # noqa: BLE001 - reported as the completion's error
                out["error"] = e
                streamer.end()

        thread = threading.Thread(target=work, name="cai-generate-stream", daemon=True)
        thread.start()
        for piece in streamer:
            if piece:
                yield piece
        thread.join()
        if "error" in out:
            yield Completion.failed(f"{type(out['error']).__name__}: {out['error']}")
            return
        yield self._completion(out["ids"][0, inputs["input_ids"].shape[1] :], params, max_new)

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
        """A choice of several tokens is a chain of next-token reads (`engine_utils.ChoicePlan`):
        prompt, prompt + its first token, ...; each is one more row sharing the prompt as prefix."""
        choice_ids = choice_token_ids(self.tokenizer, choices)
        longest = max(len(c) for c in choice_ids)
        encoded, errors = self._encode_all(prompts, reserve=longest)
        out: list[ChoiceScores | None] = [None] * len(prompts)
        for i, msg in errors.items():
            out[i] = ChoiceScores(error=msg)
        if not self.options.prefix_sharing:
            return self._choice_logprobs_unshared(encoded, choices, choice_ids, out)
        plan = ChoicePlan(choice_ids)
        todo = [i for i, e in enumerate(encoded) if e is not None]
        rows = [encoded[i] + list(prefix) for i in todo for prefix, _ in plan.steps]
        wanted = [w for _ in todo for _, w in plan.steps]
        found = self._next_token_logprobs(rows, wanted)
        per = len(plan.steps)
        for k, i in enumerate(todo):
            steps = [StepResult(found[k * per + j], None) for j in range(per)]
            out[i] = plan.combine(choices, steps)
        return out  # type: ignore[return-value]

    @torch.inference_mode()
    def _next_token_logprobs(self, rows: list[list[int]], wanted: list[list[int]]) -> list[dict[int, float]]:
        """Log-probs of the `wanted` tokens right after each row; identical rows run once."""
        unique: dict[tuple[int, ...], int] = {}
        index = [unique.setdefault(tuple(r), len(unique)) for r in rows]
        urows = [list(t) for t in unique]
        tokens: list[set[int]] = [set() for _ in urows]
        for r, u in enumerate(index):
            tokens[u].update(wanted[r])
        found: list[dict[int, float]] = [{} for _ in urows]
        for groups in self._grouped_batches(urows, len(urows), self.options.batch_tokens):
            split = [(urows[g.rows[0]][: g.shared], [urows[k][g.shared :] for k in g.rows]) for g in groups]
            inputs = self._prefill_prefixes(split)
            inputs.pop("prefix_ids", None)
            logits = self.lm(**inputs, **self._keep_one).logits[:, -1, :]
            logp = torch.log_softmax(logits.float(), dim=-1)
            for row, u in enumerate(k for g in groups for k in g.rows):
                ids = sorted(tokens[u])
                found[u] = dict(zip(ids, logp[row, ids].tolist()))
        return [found[u] for u in index]

    def _choice_logprobs_unshared(
        self, encoded: list[list[int] | None], choices: list[str], choice_ids: list[list[int]], out: list
    ) -> list[ChoiceScores]:
        """The reference path: each row in full, log-softmax over the vocabulary everywhere."""
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
