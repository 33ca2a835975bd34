"""Recipes: one file per stage (pretrain, finetune, demo), each a typed options dataclass and a
`run(options)` function. `register_commands` exposes them as `lmforge` subcommands."""

from __future__ import annotations

import argparse
import json


def _pretrain_command(sub) -> None:
    from .common import add_options
    from .pretrain import PretrainOptions
    from .pretrain import __doc__ as doc

    p = sub.add_parser("pretrain", help="pretrain BERT (MLM + NSP, or MLM only) on raw text", description=doc,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML or JSON file of options (flags given here override it)")
    add_options(p, PretrainOptions)
    p.set_defaults(func=_run_pretrain)


def _run_pretrain(args) -> int:
    from .common import build_options, read_config_file
    from .pretrain import PRESETS, PretrainOptions, run

    flags = {k: v for k, v in vars(args).items() if k not in ("command", "func", "config")}
    file_options = read_config_file(args.config) if args.config else {}
    opts = build_options(PretrainOptions, file_options, flags, source=args.config or "pretrain options")
    if opts.preset not in PRESETS:
        raise ValueError(f"unknown preset {opts.preset!r}; choose one of {sorted(PRESETS)}")
    summary = run(opts)
    print(json.dumps({k: summary[k] for k in ("final_dir", "steps", "first_loss", "last_loss", "final_eval")},
                     indent=2))
    return 0


def _demo_command(sub) -> None:
    from .common import add_options
    from .demo import DemoOptions
    from .demo import __doc__ as doc

    p = sub.add_parser("demo", help="the main job: pretrain, fine-tune three models, report with plots",
                       description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(p, DemoOptions)
    p.set_defaults(func=_run_demo)


def _run_demo(args) -> int:
    from .common import build_options
    from .demo import DemoOptions, run

    flags = {k: v for k, v in vars(args).items() if k not in ("command", "func")}
    run(build_options(DemoOptions, flags, source="demo options"))
    return 0


def register_commands(sub) -> None:
    _pretrain_command(sub)
    _demo_command(sub)
    from .finetune import register as _register_finetune

    _register_finetune(sub)
