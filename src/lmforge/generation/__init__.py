"""Text generation shared by every causal LM: `model.generate`, streaming, and the pieces behind them.

    config.py      GenerationConfig: settings (transformers' names and defaults), checked before any work
    logits.py      logit processors: repetition penalty, no-repeat n-gram, temperature, top-k, top-p, min-p
    stopping.py    per-row stopping: EOS ids, stop strings (also split across tokens), the length limit
    steps.py       the step function the loops call (CausalLMSteps: prefill into a KV cache, one token per step;
                   Seq2SeqSteps: an encoder-decoder's, the source encoded once)
    decoding.py    the loops: greedy / sampling, beam search (transformers' semantics)
    streaming.py   IncrementalDecoder (whole UTF-8 characters only), TextStreamer (put / end protocol)
    mixin.py       GenerationMixin: generate(), generate_stream(); Seq2SeqGenerationMixin (encoder-decoders)
"""

from .config import GenerationConfig
from .mixin import GenerationMixin, Seq2SeqGenerationMixin
from .steps import CausalLMSteps, Seq2SeqSteps
from .streaming import IncrementalDecoder, TextStreamer

__all__ = ["CausalLMSteps", "GenerationConfig", "GenerationMixin", "IncrementalDecoder", "Seq2SeqGenerationMixin",
           "Seq2SeqSteps", "TextStreamer"]
