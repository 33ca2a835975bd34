"""finetune --task seq2seq on 2 processes (gloo, forked by `dist_helpers.launch`): DDP against one process with
the same global batch, rank 0 alone writing, and --fsdp against DDP."""

from __future__ import annotations

import json
import sys

import dist_helpers as helpers
import pytest
import torch
from safetensors.torch import load_file
from test_seq2seq_finetune import options, tiny_marian_config

from lmforge import AutoTokenizer
from lmforge.recipes.finetune import run

pytest.importorskip("sacrebleu")
pytestmark = [pytest.mark.skipif(not torch.distributed.is_available() or sys.platform == "win32",
                                 reason="needs torch.distributed and fork"),
              pytest.mark.slow]  # three fine-tuning runs, ~35 s on a loaded machine

TOL = 1e-5
VERBS = [("open", "打开"), ("close", "关闭"), ("delete", "删除")]
NOUNS = [("file", "文件"), ("disk", "磁盘"), ("user", "用户"), ("link", "链接"), ("page", "页面"), ("window", "窗口")]


def write_pairs(path):
    """Sources of different lengths; every target four ideographs (one token each: the vocabulary is large enough
    to merge all their bytes), so each rank's mean token loss weighs its rows as one process's mean over the
    global batch does (the loop averages the ranks' losses and gradients)."""
    lines = ["source\ttarget"]
    for i in range(40):
        (verb, zverb), (noun, znoun) = VERBS[i % 3], NOUNS[i % 6]
        lines.append(f"{verb} the {noun}{' now' * (i % 4)}\t{zverb}{znoun}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def settings(root, name: str, **extra) -> dict:
    return {"root": str(root), "name": name, "max_steps": 4, "eval_every": 2, "batch_size": 8, "eval_samples": 4,
            "max_new_tokens": 6, "log_every": 1, "vocab_size": 1000, **extra}


def finetune(spec: dict) -> dict:
    from pathlib import Path

    root = Path(spec["root"])
    extra = {k: v for k, v in spec.items() if k not in ("root", "name")}
    return run(options(root / spec["name"], root / "config.json", root / "pairs.tsv", **extra))


def finetune_each(rank: int, world_size: int, specs: list[dict]) -> None:
    if rank != 0:  # only rank 0 writes: on the others, every writer of the recipe fails the launch
        import lmforge.tokenizers
        from lmforge.recipes import seq2seq

        def no_writes(*args, **kwargs):
            raise AssertionError(f"rank {rank} wrote a file")

        for module, name in [(seq2seq, "save_best"), (seq2seq, "write_json"), (seq2seq, "write_predictions"),
                             (lmforge.tokenizers, "train_tokenizer")]:
            setattr(module, name, no_writes)
    for spec in specs:
        finetune(spec)


def step_losses(output_dir) -> list[float]:
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r and "step" in r]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One 2-process launch (DDP, then --fsdp); then one process with the same global batch, here."""
    root = tmp_path_factory.mktemp("s2sdist")
    write_pairs(root / "pairs.tsv")
    tiny_marian_config(root / "config.json")
    assert helpers.launch(finetune_each, [settings(root, "ddp"), settings(root, "fsdp", fsdp=True)],
                          timeout=240) == [0, 0]
    torch.set_num_threads(1)
    results = finetune(settings(root, "one"))
    return root, results


def test_two_processes_match_one_process(runs):
    root, one = runs
    tokenizer = AutoTokenizer.from_pretrained(root / "ddp" / "run" / "tokenizer")
    targets = [line.split("\t")[1] for line in (root / "pairs.tsv").read_text(encoding="utf-8").splitlines()[1:]]
    assert len({len(tokenizer(t)["input_ids"]) for t in targets}) == 1  # the premise of equal weighting
    want, got = step_losses(root / "one" / "run"), step_losses(root / "ddp" / "run")
    assert len(want) == len(got) == 4
    diff = max(abs(a - b) for a, b in zip(want, got))
    print(f"seq2seq DDP 2-process vs 1-process: max loss diff {diff:.3g}")
    assert diff <= TOL
    ddp = json.loads((root / "ddp" / "run" / "results.json").read_text())
    assert [r["step"] for r in ddp["history"]] == [r["step"] for r in one["history"]] == [2, 4]
    assert ddp["test"]["chrf"] == pytest.approx(one["test"]["chrf"])
    assert ddp["tokens"] == one["tokens"]  # the global batch split over the ranks, not each rank reading it all


def test_rank_zero_alone_writes(runs):
    """Rank 1 wrote nothing (`finetune_each` makes its writers fail); rank 0 wrote best/ (no tmp / old folders
    left), with the step that results.json names best, and the test predictions."""
    root, _ = runs
    out = root / "ddp" / "run"
    assert (out / "best" / "model.safetensors").is_file() and (out / "test_predictions.jsonl").is_file()
    assert not list(out.glob(".best-*"))
    info = json.loads((out / "best" / "finetune_info.json").read_text())
    results = json.loads((out / "results.json").read_text())
    assert info["step"] == results["best_step"]


def test_fsdp_best_equals_ddp_best(runs):
    root, _ = runs
    ddp = load_file(root / "ddp" / "run" / "best" / "model.safetensors")
    fsdp = load_file(root / "fsdp" / "run" / "best" / "model.safetensors")
    assert ddp.keys() == fsdp.keys()
    diff = max((ddp[k] - fsdp[k]).abs().max().item() for k in ddp)
    print(f"seq2seq FSDP best/ vs DDP best/: max weight diff {diff:.3g}")
    assert diff <= TOL
    assert step_losses(root / "fsdp" / "run") == pytest.approx(step_losses(root / "ddp" / "run"), abs=TOL)
