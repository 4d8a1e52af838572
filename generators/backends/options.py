"""The options of the shipped backends, and which of them shape what a model writes.

Kept apart from the backends so that a run can tell, without importing torch or vLLM, which
option changes are harmless (`OPERATIONAL`: how fast or where a model runs) and which would
make records before and after the change pass for one another.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from cai.core.identity import OPERATIONAL

# Without max_model_len, the model's own context is used up to this many tokens: every sequence
# the scheduler admits reserves KV cache for its whole context, and 128k-token models are common.
DEFAULT_CONTEXT_CAP = 4096
FEW_CORES = 8  # on a machine this small, the engine's compute threads get every core
DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"  # where `vllm serve` listens by default


class TransformersOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device: Annotated[str, OPERATIONAL] = Field("auto", description="`auto`, `cpu`, `cuda`, `cuda:1`, ...")
    dtype: str = Field("auto", description="`auto` (bf16 on GPU, fp32 on CPU), `float32`, `bfloat16`, `float16`.")
    batch_size: Annotated[int, OPERATIONAL] = Field(
        16, ge=1, description="Sequences per forward pass (n samples count each)."
    )
    batch_tokens: Annotated[int, OPERATIONAL] = Field(
        16384,
        ge=64,
        description="Scoring with prefix sharing: rows per forward pass while rows × context width stays "
        "under this (the KV cache a pass copies); shared prefixes make rows cheap, so more fit than batch_size.",
    )
    max_length: int | None = Field(None, ge=8, description="Context length; defaults to the model's.")
    attn_implementation: str = Field(
        "auto",
        description="`auto`: transformers' own choice, on CPU with sdpa's grouped key/value heads kept "
        "grouped under a padding mask; or a name transformers takes: `sdpa`, `eager`, `flash_attention_2`, ...",
    )
    prefix_sharing: bool = Field(
        True,
        description="Run a prefix shared by several prompts of a batch once and reuse its KV cache, and "
        "score from the last position's logits only. Off: every row in full, with logits at every position.",
    )
    trust_remote_code: bool = False


class VLLMOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tensor_parallel_size: Annotated[int, OPERATIONAL] = Field(1, ge=1, description="GPUs one model is split across.")
    data_parallel_size: Annotated[int, OPERATIONAL] = Field(
        1,
        ge=1,
        description="Engine replicas. The offline engine runs one per process; for more, use "
        "`vllm serve --data-parallel-size N` with the openai backend, or shard the run.",
    )
    gpu_memory_utilization: Annotated[float, OPERATIONAL] = Field(
        0.35,
        gt=0,
        le=1,
        description="Share of GPU memory (on CPU: of RAM) vLLM may hold for weights and KV cache.",
    )
    kv_cache_gb: Annotated[float | None, OPERATIONAL] = Field(
        None,
        gt=0,
        description="A fixed KV-cache size in GiB instead of sizing it by gpu_memory_utilization. "
        "On CPU the VLLM_CPU_KVCACHE_SPACE environment variable (GiB), when set, wins over both.",
    )
    max_model_len: int | None = Field(
        None,
        ge=16,
        description=f"Context length; default the model's own, capped at {DEFAULT_CONTEXT_CAP}.",
    )
    dtype: str = Field(
        "auto",
        description="`auto` is float32 on CPU (as the transformers backend: bf16 log-probs are "
        "too coarse for soft labels) and vLLM's own choice on GPU; or `bfloat16`, `float16`, ...",
    )
    enable_prefix_caching: Annotated[bool, OPERATIONAL] = Field(
        True, description="Reuse the KV cache of shared prompt prefixes."
    )
    seed: int = Field(0, description="The engine's seed; a seeded SamplingParams seeds each request.")
    enforce_eager: Annotated[bool | None, OPERATIONAL] = Field(
        None,
        description="Skip torch.compile and CUDA graphs. Default: on for CPU, off on GPU. On a "
        "two-core CPU compiling added 70 s to the start for 13-23% more speed: worth it for a long run.",
    )
    logprobs_k: int = Field(20, ge=1, description="Top tokens reported per position when scoring by top-K.")
    exact_choices: bool = Field(
        True, description="Ask the engine for the choice tokens' own log-probs instead of the top-K."
    )
    max_num_seqs: Annotated[int | None, OPERATIONAL] = Field(
        None, ge=1, description="Sequences the scheduler runs at once."
    )
    block_size: Annotated[int | None, OPERATIONAL] = Field(
        None,
        ge=1,
        description="Tokens per KV-cache block. The prefix cache reuses whole blocks, so smaller blocks "
        "share more of each prefix. Default: vLLM's own.",
    )
    cpu_reserved_cores: Annotated[int | None, OPERATIONAL] = Field(
        None,
        ge=0,
        description="CPU: cores kept free of the engine's compute threads, for its scheduler. "
        f"Default: none on a machine of {FEW_CORES} cores or fewer (vLLM keeps one, which on two cores "
        "halves the compute: 0.68x transformers' generation speed against 1.06x with both cores), "
        "else vLLM's own (one).",
    )
    cpu_preload: Annotated[bool, OPERATIONAL] = Field(
        True,
        description="CPU: start the engine with tcmalloc and Intel's OpenMP runtime preloaded, where "
        "installed (vLLM's advice for its CPU build; 3-20% faster here).",
    )
    trust_remote_code: bool = False
    show_progress: Annotated[bool, OPERATIONAL] = Field(False, description="vLLM's progress bar for each batch.")
    engine_args: dict[str, Any] = Field(
        default_factory=dict, description="Further keyword arguments for `vllm.LLM`, passed as given."
    )


class OpenAIOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_url: Annotated[str | None, OPERATIONAL] = Field(
        None, description=f"Server URL ending in /v1; else OPENAI_BASE_URL, else {DEFAULT_BASE_URL}."
    )
    api_key: SecretStr | None = Field(None, description="Else OPENAI_API_KEY; local servers take any value.")
    served_model_name: str | None = Field(
        None, description="The name the server knows the model by; default: the model, or the only one served."
    )
    endpoint: Literal["chat", "completions"] = Field(
        "chat",
        description="How chats are sent for generation: `chat` lets the server apply its chat "
        "template; `completions` sends the tokens rendered here (needs a local tokenizer).",
    )
    tokenizer: str | None = Field(
        None, description="Local tokenizer (path or hub id); default: the model's, when local."
    )
    local_tokenizer: bool = Field(True, description="False: never tokenize here; the server does it all.")
    concurrency: Annotated[int, OPERATIONAL] = Field(16, ge=1, description="Requests in flight at once.")
    max_retries: Annotated[int, OPERATIONAL] = Field(
        5, ge=0, description="Retries of a request after a 429, 5xx, timeout or lost connection."
    )
    timeout: Annotated[float, OPERATIONAL] = Field(
        120.0, gt=0, description="Seconds one attempt may take in all: connecting, waiting and reading the whole body."
    )
    deadline: Annotated[float | None, OPERATIONAL] = Field(
        None,
        gt=0,
        description="Seconds an item may take across its attempts and the waits between them, from its first "
        "request; default: no limit beyond (max_retries + 1) x timeout.",
    )
    max_body_bytes: Annotated[int, OPERATIONAL] = Field(
        32 * 2**20, ge=1024, description="Largest answer read (32 MiB); a bigger one is cut off and fails its item."
    )
    backoff: Annotated[float, OPERATIONAL] = Field(
        1.0, ge=0, description="First retry wait in seconds; doubles each retry, with jitter."
    )
    max_backoff: Annotated[float, OPERATIONAL] = Field(
        30.0, ge=0, description="Longest wait between retries, in seconds."
    )
    connect_timeout: Annotated[float, OPERATIONAL] = Field(
        5.0, gt=0, description="Seconds the start-up reachability check waits."
    )
    logprobs_k: int = Field(
        20, ge=1, le=20, description="Top tokens asked for when scoring; at most what the server allows (often 5)."
    )
    logprobs: bool = Field(
        True, description="False for a server that returns no log-probs: ranking then parses letters from text."
    )
    continue_final_message: bool | None = Field(
        None,
        description="Whether the server continues a chat that ends with the assistant's message (vLLM does, "
        "hosted chat APIs refuse). Default: yes for a vLLM server or with a local tokenizer, else no.",
    )
    max_model_len: int | None = Field(None, ge=16, description="Context length; default: what the server reports.")
