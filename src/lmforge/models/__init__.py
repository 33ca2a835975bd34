"""Model families, one folder each (config.py, model.py, keys.py), registered with `lmforge.auto` on import;
base.py (PreTrainedModel) and config.py (PretrainedConfig) are what they share. `FAMILIES` tells
`lmforge.auto` which package to import for a config.json `model_type`; `import lmforge` imports BERT (its
classes are top-level names) and no other family."""

# model_type -> the package that defines and registers it
FAMILIES = {
    "bart": "lmforge.models.bart",
    "bert": "lmforge.models.bert",
    "electra": "lmforge.models.electra",
    "gpt2": "lmforge.models.gpt2",
    "llama": "lmforge.models.llama",
    "marian": "lmforge.models.marian",
    "qwen2": "lmforge.models.llama",  # Qwen2 is a configuration of the Llama code (bias on Q/K/V)
    "t5": "lmforge.models.t5",
}
