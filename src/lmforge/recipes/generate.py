"""`lmforge generate` and `lmforge chat`: a causal LM (HF folder, or a GGUF file) writing to the terminal.

    lmforge generate runs/clm/final "Once upon a time" --max-new-tokens 60
    lmforge generate path/to/SmolLM2-135M-Instruct.Q4_1.gguf "Why is the sky blue?" --chat --temperature 0.7
    lmforge chat path/to/SmolLM2-135M-Instruct.Q4_1.gguf          # /reset clears the history, Ctrl-D ends

Text is printed as it is generated (whole characters only; beam search prints at the end). Sampling is on
when any of --temperature, --top-k, --top-p, --min-p is given (or --do-sample), greedy otherwise.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch

from ..generation import GenerationConfig, TextStreamer


@dataclass
class SamplingOptions:
    """The generation flags shared by `generate` and `chat`."""

    max_new_tokens: int
    do_sample: bool = False
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    num_beams: int = 1
    seed: int | None = None

    def config(self, model) -> GenerationConfig:
        sample = self.do_sample or any(v is not None for v in (self.temperature, self.top_k, self.top_p, self.min_p))
        changes: dict[str, Any] = dict(max_new_tokens=self.max_new_tokens, do_sample=sample, num_beams=self.num_beams)
        for name in ("temperature", "top_k", "top_p", "min_p", "repetition_penalty"):
            if getattr(self, name) is not None:
                changes[name] = getattr(self, name)
        return model.default_generation_config().updated(**changes)

    def generator(self) -> torch.Generator | None:
        return torch.Generator().manual_seed(self.seed) if self.seed is not None else None


def load_causal_lm(model: str, gguf_file: str | None = None, threads: int | None = None):
    """(model, tokenizer) from an HF folder, a GGUF file path, or a folder + `gguf_file` name."""
    from ..auto import AutoModelForCausalLM
    from ..tokenizers import AutoTokenizer

    if threads:
        torch.set_num_threads(threads)
    path = Path(model)
    if gguf_file is None and path.suffix == ".gguf":
        path, gguf_file = path.parent, path.name
    if not path.exists():
        raise FileNotFoundError(f"{model}: no such model folder or GGUF file")
    net = AutoModelForCausalLM.from_pretrained(path, gguf_file=gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(path, gguf_file=gguf_file)
    return net.eval(), tokenizer


def chat_eos(model, tokenizer) -> list[int]:
    """The model's EOS ids plus the tokenizer's (an instruct model's end-of-turn token)."""
    ids = list(model.default_generation_config().eos_ids)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def run_generate(model, tokenizer, prompt: str, options: SamplingOptions, chat: bool,
                 write: Callable[[str], None]) -> str:
    """Write the prompt (unless `chat`: then only the answer) and the continuation; returns the continuation."""
    config = options.config(model).updated(eos_token_id=chat_eos(model, tokenizer))
    if chat:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt")["input_ids"]
    else:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        write(prompt)
    pieces: list[str] = []

    def emit(text: str) -> None:
        pieces.append(text)
        write(text)

    if config.num_beams > 1:
        out = model.generate(ids, None, config, tokenizer=tokenizer, generator=options.generator())
        emit(tokenizer.decode(out[0, ids.size(1):], skip_special_tokens=True))
    else:
        model.generate(ids, None, config, tokenizer=tokenizer, generator=options.generator(),
                       streamer=TextStreamer(tokenizer, on_text=emit))
    write("\n")
    return "".join(pieces)


def run_chat(model, tokenizer, options: SamplingOptions, system: str | None, read: IO[str],
             write: Callable[[str], None], interactive: bool) -> int:
    """Read user turns from `read` until end of input; stream each answer. "/reset" clears the history.
    Returns the number of answers given."""
    if tokenizer.chat_template is None:
        raise ValueError("this model's tokenizer has no chat template: use `lmforge generate` instead")
    config = options.config(model).updated(eos_token_id=chat_eos(model, tokenizer), num_beams=1)
    start = [{"role": "system", "content": system}] if system else []
    messages = list(start)
    answers = 0
    generator = options.generator()
    while True:
        if interactive:
            write(">>> ")
        line = read.readline()
        if not line:  # end of input (Ctrl-D)
            if interactive:
                write("\n")
            return answers
        text = line.rstrip("\n")
        if not text.strip():
            continue
        if text.strip() == "/reset":
            messages = list(start)
            write("(history cleared)\n")
            continue
        messages.append({"role": "user", "content": text})
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")["input_ids"]
        pieces = []
        for piece in model.generate_stream(ids, tokenizer, config, generator=generator):
            pieces.append(piece)
            write(piece)
        write("\n")
        messages.append({"role": "assistant", "content": "".join(pieces)})
        answers += 1


def stdout_writer(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
