"""`cai model ...`: the embedded default model, and quick generation to see what a model does."""

from __future__ import annotations

from typing import Annotated

import typer

from .options import console

app = typer.Typer(help="The embedded default model and quick generation.", no_args_is_help=True)


@app.command("prepare")
def model_prepare(force: Annotated[bool, typer.Option(help="Convert again even if cached.")] = False) -> None:
    """Convert the embedded GGUF model to a Hugging Face checkpoint (once) and print its path."""
    from cai.generators.default_model import prepare_default_model

    typer.echo(str(prepare_default_model(force=force)))


@app.command("sample")
def model_sample(
    prompts: Annotated[list[str], typer.Argument(help="User messages.")],
    model: Annotated[str, typer.Option(help="`default`, a hub id or a local path.")] = "default",
    backend: Annotated[str, typer.Option(help="transformers, vllm or openai.")] = "transformers",
    n: Annotated[int, typer.Option(min=1)] = 1,
    temperature: Annotated[float, typer.Option(min=0.0)] = 0.7,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 128,
    seed: int | None = None,
) -> None:
    """Answer a few messages with a model, to see what it does."""
    from cai.generators import BackendConfig, SamplingParams, load_backend

    b = load_backend(BackendConfig(backend=backend, model=model))
    chats = [[{"role": "user", "content": p}] for p in prompts]
    params = SamplingParams(n=n, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
    for p, comps in zip(prompts, b.generate(chats, params)):
        console.print(f"[bold]user:[/bold] {p}")
        for c in comps:
            body = c.text if c.error is None else f"[red]error: {c.error}[/red]"
            console.print(f"[bold]assistant[/bold] ({c.tokens} tokens, {c.finish_reason}): {body}")
