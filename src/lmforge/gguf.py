"""Reading llama.cpp GGUF files: the model config, the weights (dequantized to fp32 or bf16) and the tokenizer.

    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file="model.Q4_1.gguf")   # transformers' spelling
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file="model.Q4_1.gguf")
    model.save_pretrained(out); tokenizer.save_pretrained(out)                          # an ordinary HF folder

A GGUF file is a header of typed metadata (architecture, sizes, the tokenizer's tokens and merges, the chat
template) followed by tensors, most of them quantized in blocks (Q4_1: 32 weights share an fp16 scale and
minimum). The `gguf` package (the optional extra `lmforge[gguf]`, imported on first use) parses the file and
dequantizes the blocks in numpy. What this module adds:

- config: metadata keys mapped by the family's `keys.GGUF_CONFIG` (`llama.block_count` -> num_hidden_layers),
  special token ids, and tied embeddings (no `output.weight` tensor);
- weights: tensor names mapped by the family's `keys.GGUF_TENSORS` (`blk.0.attn_q.weight` ->
  `model.layers.0.self_attn.q_proj.weight`), and llama.cpp's Q/K row permutation undone. llama.cpp rotates
  interleaved pairs (x[2i], x[2i+1]) while HF's Llama rotates halves (x[i], x[i + D/2]); its converter
  therefore reorders each head's D rows from [first half | second half] to [pair 0, pair 1, ...]. Reading
  the rows per head as (D/2, 2) and transposing to (2, D/2) restores the halves;
- the tokenizer: a byte-level BPE (`tokenizer.ggml.model == "gpt2"`) built with the `tokenizers` library from
  the stored tokens, merges, token types (control tokens become special tokens), special token ids, BOS/EOS
  flags and pre-tokenizer name, with the chat template kept for `tokenizer_config.json`.

Where the GGUF lives in the codebase: here, next to the HF folder reader (`checkpoint.py`), because GGUF is a
container format shared by many families; each family contributes only its literal name maps (keys.py), as it
does for HF checkpoints. Every error names the file.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .hub import CheckpointError, adapt_prefix

logger = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
# GGUF general.architecture -> the family package whose keys.py maps its metadata and tensor names.
ARCHITECTURES = {"llama": "lmforge.models.llama", "qwen2": "lmforge.models.llama"}
# Quantization types read (the gguf package dequantizes them in numpy; the tests compare them with
# transformers' own dequantization). IQ*/TQ*/MXFP4 are refused.
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
# llama.cpp token types (tokenizer.ggml.token_type)
NORMAL, CONTROL, USER_DEFINED = 1, 3, 4
# transformers' "no limit" model_max_length, which GGUF tokenizers get there too.
NO_LIMIT = int(1e30)


class GGUFError(CheckpointError):
    """A GGUF file cannot be used; the message names the file."""


# ---------------------------------------------------------------------------------------------- the file
def resolve(path: str | os.PathLike, gguf_file: str | os.PathLike | None) -> Path:
    """The GGUF file: `gguf_file` inside the folder `path` (transformers' convention), or a path of its own."""
    path = Path(path)
    file = path if gguf_file is None else (Path(gguf_file) if Path(gguf_file).is_absolute() else path / gguf_file)
    if not file.is_file():
        raise FileNotFoundError(f"{file}: GGUF file not found")
    return file


class GGUFFile:
    """Metadata and tensors of one GGUF file (memory-mapped; tensors are read when dequantized)."""

    def __init__(self, file: Path):
        self.file = file
        with open(file, "rb") as f:
            head = f.read(4)
        if head != GGUF_MAGIC:
            raise GGUFError(f"{file}: not a GGUF file (it starts with {head!r}, a GGUF file with {GGUF_MAGIC!r})")
        try:
            gguf = importlib.import_module("gguf")
        except ImportError:
            raise ImportError(f"{file}: reading GGUF files needs the `gguf` package: pip install 'lmforge[gguf]'") \
                from None
        try:
            reader = gguf.GGUFReader(str(file))
        except (ValueError, IndexError, KeyError, OSError) as e:
            raise GGUFError(f"{file}: cannot read the GGUF header and tensor table ({e}); the file may be truncated "
                            "or corrupt") from None
        self.gguf = gguf
        self.tensors = {t.name: t for t in reader.tensors}
        size = file.stat().st_size
        for t in reader.tensors:
            if t.data_offset + t.n_bytes > size:
                raise GGUFError(f"{file}: tensor {t.name!r} ends at byte {t.data_offset + t.n_bytes} but the file has "
                                f"{size} bytes: the file is truncated")
        self.metadata = {name: _field_value(field, gguf.GGUFValueType) for name, field in reader.fields.items()}
        self.architecture = self.metadata.get("general.architecture")
        if self.architecture not in ARCHITECTURES:
            raise GGUFError(f"{file}: architecture {self.architecture!r} is not supported; supported: "
                            f"{sorted(ARCHITECTURES)}")
        self.keys = importlib.import_module(ARCHITECTURES[self.architecture] + ".keys")

    def arch(self, key: str, default: Any = None) -> Any:
        """An architecture-scoped metadata value (`llama.block_count` for key "block_count")."""
        return self.metadata.get(f"{self.architecture}.{key}", default)

    def dequantize(self, name: str) -> np.ndarray:
        """Tensor `name` as fp32, in PyTorch's (out, in) order (GGUF lists dimensions innermost first)."""
        tensor = self.tensors[name]
        kind = tensor.tensor_type.name
        if kind not in SUPPORTED_TYPES:
            raise GGUFError(f"{self.file}: tensor {name!r} has quantization type {kind}, which lmforge does not read; "
                            f"supported: {', '.join(SUPPORTED_TYPES)}")
        shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
        values = np.asarray(self.gguf.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        if not values.flags.writeable:  # an F32 tensor is a view of the read-only memory map
            values = values.copy()
        return values.reshape(shape)


def _field_value(field, kinds) -> Any:
    """A metadata field as a Python value (str, number, bool, or a list of them). Written out rather than
    `ReaderField.contents()`, which older gguf releases lack."""
    if not field.types:
        return None
    if field.types[0] == kinds.ARRAY:
        if field.types[-1] == kinds.STRING:
            return [bytes(field.parts[i]).decode("utf-8") for i in field.data]
        if field.types[-1] == kinds.ARRAY:
            return None  # nested arrays: nothing lmforge reads
        return [field.parts[i][0].item() for i in field.data]
    part = field.parts[field.data[0]]
    if field.types[0] == kinds.STRING:
        return bytes(part).decode("utf-8")
    return part[0].item()


# ---------------------------------------------------------------------------------------------- config
def read_gguf_config(path: str | os.PathLike, gguf_file: str | os.PathLike | None = None, *,
                     file: GGUFFile | None = None):
    """The model config a GGUF file describes (a LlamaConfig or Qwen2Config)."""
    from .auto import AutoConfig

    file = file or GGUFFile(resolve(path, gguf_file))
    fields: dict[str, Any] = {}
    for key, name in file.keys.GGUF_CONFIG.items():
        value = file.arch(key)
        if value is not None:
            fields[name] = value
    if "vocab_size" not in fields and "tokenizer.ggml.tokens" in file.metadata:
        fields["vocab_size"] = len(file.metadata["tokenizer.ggml.tokens"])
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        key = "tokenizer.ggml." + ("padding_token_id" if name == "pad_token_id" else name)
        fields[name] = file.metadata.get(key)
    fields["tie_word_embeddings"] = "output.weight" not in file.tensors
    scaling = file.arch("rope.scaling.type")
    if scaling not in (None, "none"):
        fields["rope_scaling"] = {"rope_type": scaling, "factor": file.arch("rope.scaling.factor")}
    if file.architecture == "llama" and "blk.0.attn_q.bias" in file.tensors:
        fields["attention_bias"] = True
    model_type = file.keys.GGUF_ARCHITECTURES[file.architecture]
    try:
        return AutoConfig.for_model(model_type, **fields)
    except ValueError as e:
        raise GGUFError(f"{file.file}: the metadata gives an unusable config: {e}") from None


# ---------------------------------------------------------------------------------------------- weights
def _unpermute_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row order: per head, rows [pair 0 (2 rows), pair 1, ...] -> [first halves | seconds]."""
    rows = weight.shape[0]
    per_head = weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:])  # (heads, D/2, 2, ...)
    return per_head.swapaxes(1, 2).reshape(weight.shape)  # (heads, 2, D/2, ...) -> (heads * D, ...)


def _tensor_key_patterns(keys) -> list[tuple[re.Pattern, str]]:
    patterns = []
    for gguf_name, hf_key in keys.GGUF_TENSORS.items():
        regex = "^" + re.escape(gguf_name).replace(r"\{i\}", r"(?P<i>\d+)") + "$"
        patterns.append((re.compile(regex), hf_key))
    return patterns


def read_gguf_state_dict(file: GGUFFile, config, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Every tensor of the file, dequantized to `dtype`, under its HF key (task-model names, e.g. `model.`...)."""
    patterns = _tensor_key_patterns(file.keys)
    permuted = file.keys.GGUF_PERMUTED.get(file.architecture, {})
    state: dict[str, torch.Tensor] = {}
    for name in file.tensors:
        for pattern, hf_key in patterns:
            match = pattern.match(name)
            if match:
                key = hf_key.format(**match.groupdict())
                break
        else:
            raise GGUFError(f"{file.file}: tensor {name!r} is not one lmforge reads for architecture "
                            f"{file.architecture!r} (ignoring it would change the model's outputs)")
        values = file.dequantize(name)
        role = name.split(".")[-2]  # blk.0.attn_q.weight -> attn_q
        if role in permuted and name.endswith(".weight"):
            values = _unpermute_rows(values, getattr(config, permuted[role]))
        elif role in permuted:  # a bias: rows only
            values = _unpermute_rows(values[:, None], getattr(config, permuted[role]))[:, 0]
        state[key] = torch.from_numpy(np.ascontiguousarray(values)).to(dtype)
    return state


def load_gguf_model(cls, path, gguf_file, *, config=None, num_labels=None, id2label=None, label2id=None,
                    problem_type=None, torch_dtype=None, dtype=None, device=None, output_loading_info=False,
                    attn_implementation="sdpa", file: GGUFFile | None = None):
    """`cls.from_pretrained(path, gguf_file=...)`: build the model on the meta device (no random init, no
    second copy of the weights) and assign the dequantized tensors."""
    from .hub import LoadingInfo, _report, with_label_overrides

    file = file or GGUFFile(resolve(path, gguf_file))
    config = config or read_gguf_config(path, gguf_file, file=file)
    config = with_label_overrides(config, num_labels, id2label, label2id, problem_type)
    requested = dtype if dtype is not None else torch_dtype
    dtype = torch.float32 if requested in (None, "auto") else requested
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"torch_dtype {requested!r}: GGUF weights are dequantized to float32, bfloat16 or float16")
    state = read_gguf_state_dict(file, config, dtype)
    with torch.device("meta"):
        model = cls(config)
    state = adapt_prefix(state, model)
    expected = model.state_dict()
    tied = set(getattr(model, "_tied_weights", {})) if config.tie_word_embeddings else set()
    info = LoadingInfo(unexpected_keys=[k for k in state if k not in expected],
                       missing_keys=[k for k in expected if k not in state and k not in tied])
    for key in list(state):
        if key in expected and tuple(state[key].shape) != tuple(expected[key].shape):
            raise GGUFError(f"{file.file}: tensor for {key!r} has shape {tuple(state[key].shape)} but the metadata "
                            f"makes it {tuple(expected[key].shape)}")
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False, assign=True)
    _materialise_missing(model)
    model.tie_weights()
    _report(cls.__name__, file.file, info)
    model.to(dtype=dtype)
    if device is not None:
        model.to(device)
    model.set_attn_implementation(attn_implementation)
    model.eval()  # as HF: a loaded model starts in inference mode
    return (model, info) if output_loading_info else model


def _materialise_missing(model: torch.nn.Module) -> None:
    """Parameters the file does not hold (a new task head) are still on the meta device: allocate and initialise."""
    for module in model.modules():
        if any(p.is_meta for p in module.parameters(recurse=False)):
            module.to_empty(device="cpu", recurse=False)
            model._init_weights(module)


# ---------------------------------------------------------------------------------------------- tokenizer
def _byte_alphabet() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (byte-level BPE vocabularies are spelled in it):
    printable Latin-1 bytes stand for themselves, the other 68 bytes for U+0100 onwards, in byte order."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in printable}
    for offset, b in enumerate(b for b in range(256) if b not in table):
        table[b] = chr(0x100 + offset)
    return table


# tokenizer.ggml.pre -> the split regex its merges were learned with. Names not listed use GPT-2's own regex
# (the ByteLevel pre-tokenizer's), as transformers does. For "smollm" llama.cpp also splits every digit first;
# SmolLM2's merges hold no digits, so that only matters for whitespace runs before a digit ("a  1": llama.cpp
# "ĠĠ", "1"; transformers "Ġ", "Ġ", "1"): lmforge follows transformers.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
                r"|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
               r"|\s+(?!\S)|\s+")
PRE_TOKENIZER_SPLITS = {"llama3": LLAMA3_SPLIT, "llama-v3": LLAMA3_SPLIT, "llama-bpe": LLAMA3_SPLIT,
                        "qwen2": QWEN2_SPLIT}
GPT2_REGEX_PRE_TOKENIZERS = ("default", "gpt2", "gpt-2", "smollm")


def load_gguf_tokenizer(path: str | os.PathLike, gguf_file: str | os.PathLike | None = None):
    """The byte-level BPE tokenizer a GGUF file describes, as an lmforge `Tokenizer`."""
    from tokenizers import AddedToken, Regex, decoders, pre_tokenizers, processors
    from tokenizers import Tokenizer as BackendTokenizer
    from tokenizers.models import BPE

    from .tokenizers import Tokenizer

    file = GGUFFile(resolve(path, gguf_file))
    meta = file.metadata
    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise GGUFError(f"{file.file}: tokenizer model {kind!r} is not read by lmforge; supported: 'gpt2' "
                        "(byte-level BPE)")
    tokens = list(meta["tokenizer.ggml.tokens"])
    types = list(meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens))
    spelling = _byte_alphabet()
    alphabet = set(spelling.values())

    def respell(token: str) -> str:  # a token stored in raw text rather than the byte alphabet
        return token if set(token) <= alphabet else "".join(spelling[b] for b in token.encode("utf-8"))

    vocab = {respell(token): index for index, token in enumerate(tokens)}
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges") or []]
    backend = BackendTokenizer(BPE(vocab=vocab, merges=merges, dropout=None, unk_token=None,
                                   continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False,
                                   byte_fallback=False))
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre in PRE_TOKENIZER_SPLITS:
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(PRE_TOKENIZER_SPLITS[pre]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    else:
        if pre not in GPT2_REGEX_PRE_TOKENIZERS:
            logger.warning("%s: pre-tokenizer %r is not known to lmforge; using GPT-2's split (as transformers does)",
                           file.file, pre)
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    backend.decoder = decoders.ByteLevel()

    # Control tokens (<|im_start|>, ...) match whole and are special; user-defined ones match whole, not special.
    # A control token not spelled in the byte alphabet is a mislabel (it was respelled above): not added.
    control = [t for t, kind in zip(tokens, types) if kind == CONTROL and set(t) <= alphabet]
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    user = [respell(t) for t, kind in zip(tokens, types) if kind == USER_DEFINED]
    if user:
        backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in user])

    def token_of(key: str) -> str | None:
        index = meta.get(f"tokenizer.ggml.{key}")
        return tokens[index] if index is not None and 0 <= index < len(tokens) else None

    special = {"bos_token": token_of("bos_token_id"), "eos_token": token_of("eos_token_id"),
               "unk_token": token_of("unknown_token_id"), "pad_token": token_of("padding_token_id")}
    backend.post_processor = _template(special["bos_token"] if meta.get("tokenizer.ggml.add_bos_token") else None,
                                       special["eos_token"] if meta.get("tokenizer.ggml.add_eos_token") else None,
                                       backend, processors)
    return Tokenizer(
        backend, special_tokens={k: v for k, v in special.items() if v is not None},
        additional_special_tokens=[t for t in control if t not in special.values()],
        model_max_length=NO_LIMIT, model_input_names=("input_ids", "attention_mask"),
        chat_template=meta.get("tokenizer.chat_template"), name_or_path=str(file.file),
    )


def _template(bos: str | None, eos: str | None, backend, processors):
    """[BOS] A [EOS] (and for pairs [BOS] B [EOS] after it), as the file's add_bos/add_eos flags say."""
    def around(seq: str, type_id: int) -> list[str]:
        return [f"{bos}:{type_id}"] * (bos is not None) + [f"${seq}:{type_id}"] + [f"{eos}:{type_id}"] * (eos is not None)

    specials = [(t, backend.token_to_id(t)) for t in {bos, eos} if t is not None]
    return processors.TemplateProcessing(single=" ".join(around("A", 0)),
                                         pair=" ".join(around("A", 0) + around("B", 1)), special_tokens=specials)
