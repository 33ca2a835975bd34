"""Model families, one folder each (config.py, model.py, keys.py). A family registers itself with the Auto
classes when its package is imported; `FAMILIES` tells `lmforge.auto` which package to import for a
config.json `model_type`, so `import lmforge` imports none of them."""

# model_type -> the package that defines and registers it
FAMILIES = {
    "gpt2": "lmforge.models.gpt2",
    "llama": "lmforge.models.llama",
    "qwen2": "lmforge.models.llama",  # Qwen2 is a configuration of the Llama code (bias on Q/K/V)
}
