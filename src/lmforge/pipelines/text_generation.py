"""text-generation: a prompt (text) or a conversation (chat messages) in, the continuation out.

    generator = pipeline("text-generation", model="runs/clm/final")
    generator("Once upon a time", max_new_tokens=40)           # [{"generated_text": "Once upon a time ..."}]
    generator([{"role": "user", "content": "Hi!"}])            # [{"generated_text": [..., {"role": "assistant", ...}]}]

As transformers' pipeline: a conversation is rendered with the tokenizer's chat template (generation prompt
appended) and the answer comes back as a new assistant message; `return_full_text=False` gives the new text
only. Prompts run in batches, left-padded here (the caller's tokenizer keeps its padding side).
"""

from __future__ import annotations

from typing import Any

import torch

from ..auto import AutoModelForCausalLM
from ..generation import GenerationConfig
from .base import Pipeline

DEFAULT_MAX_NEW_TOKENS = 256  # transformers' text-generation default


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> (ids, attention_mask), both (B, longest), padding on the left."""
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, T - len(row):] = torch.tensor(row, dtype=torch.long)
        mask[b, T - len(row):] = 1
    return ids, mask


def is_conversation(item: Any) -> bool:
    return isinstance(item, (list, tuple)) and len(item) > 0 and isinstance(item[0], dict)


class TextGenerationPipeline(Pipeline):
    task = "text-generation"
    auto_model = AutoModelForCausalLM

    def __call__(
        self,
        inputs: str | list[dict[str, Any]] | list[str | list[dict[str, Any]]],
        *,
        return_full_text: bool = True,
        generation_config: GenerationConfig | None = None,
        max_new_tokens: int | None = None,
        do_sample: bool | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        num_beams: int | None = None,
        num_return_sequences: int | None = None,
        repetition_penalty: float | None = None,
        seed: int | None = None,
    ) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
        """One input (a text, or a conversation: a list of {"role", "content"}) -> a list of
        {"generated_text": ...} (num_return_sequences of them); a list of inputs -> a list of such lists."""
        single = isinstance(inputs, str) or is_conversation(inputs)
        items = [inputs] if single else list(inputs)
        config = generation_config or self.model.default_generation_config()
        if generation_config is None and max_new_tokens is None:
            max_new_tokens = DEFAULT_MAX_NEW_TOKENS
        settings = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_k=top_k,
                        top_p=top_p, num_beams=num_beams, num_return_sequences=num_return_sequences,
                        repetition_penalty=repetition_penalty)
        config = config.updated(**{k: v for k, v in settings.items() if v is not None})
        prompts = [self._prompt_ids(item) for item in items]
        pad_id = next(i for i in (self.tokenizer.pad_token_id, config.pad_token_id, *config.eos_ids, 0) if i is not None)
        generator = torch.Generator(self.device).manual_seed(seed) if seed is not None else None
        results: list[list[dict[str, Any]]] = []
        for start in range(0, len(items), self.batch_size):
            batch = prompts[start:start + self.batch_size]
            ids, mask = left_pad(batch, pad_id)
            out = self.model.generate(ids.to(self.device), mask.to(self.device), config, tokenizer=self.tokenizer,
                                      generator=generator)
            new = out[:, ids.size(1):].tolist()
            n = config.num_return_sequences
            for b, item in enumerate(items[start:start + len(batch)]):
                results.append([{"generated_text": self._answer(item, new[b * n + r], return_full_text)}
                                for r in range(n)])
        return results[0] if single else results

    def _prompt_ids(self, item: str | list[dict[str, Any]]) -> list[int]:
        if is_conversation(item):
            return self.tokenizer.apply_chat_template(list(item), add_generation_prompt=True, return_dict=False)
        if not isinstance(item, str):
            raise ValueError(f"text-generation: an input is a string or a list of messages, got {type(item).__name__}")
        return self.tokenizer(item)["input_ids"]

    def _answer(self, item: str | list[dict[str, Any]], new_ids: list[int], return_full_text: bool) -> Any:
        # Special tokens are skipped (as transformers does): EOS, and the padding of a row that stopped early.
        text = self.tokenizer.decode(new_ids, skip_special_tokens=True)
        if not return_full_text:
            return text
        if is_conversation(item):
            return [*item, {"role": "assistant", "content": text}]
        return item + text
