"""One file per stage: a typed options dataclass and run(options); lmforge.cli exposes them.

common.py option(), config files, corpus names, device, write_json | pretrain.py | finetune.py |
finetuned.py the best model folder, written atomically, tracked, loaded back | evaluate.py | predict.py | demo.py
"""
