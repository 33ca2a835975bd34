"""Multi-process training on CPU (gloo, 2 processes): DDP and FSDP2 runs against one process, sharded (DCP)
checkpoints resumed exactly, on another number of processes, and after a killed rank; a failing rank ends
the job. Processes are forked (`dist_helpers.launch`, hard timeouts); one test goes through torchrun."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dist_helpers as helpers
import pytest
import torch

from lmforge.training import (
    TrainingError,
    build_optimizer,
    capture_rng_state,
    load_latest_checkpoint,
    save_checkpoint,
)
from lmforge.training.distributed import transformer_layers

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or sys.platform == "win32",
                                reason="needs torch.distributed and fork")

COMMON = {"max_steps": 6, "learning_rate": 1e-2, "warmup_steps": 2, "log_every": 1, "grad_accum_steps": 2,
          "max_grad_norm": 0.5, "progress": False}
TOL = 1e-5


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One 2-process launch: a DDP run, an FSDP run (checkpoints at 3 and 6) and an FSDP run with dropout
    (the reference of the kill test); then a 1-process run with the same global batch, in this process."""
    root = tmp_path_factory.mktemp("dist")
    specs = {
        "ddp": {"args": dict(COMMON, output_dir=str(root / "ddp"), save_every=3, keep_last=0)},
        "fsdp": {"args": dict(COMMON, output_dir=str(root / "fsdp"), fsdp=True, save_every=3, keep_last=0)},
        "fsdp_dropout": {"args": dict(COMMON, output_dir=str(root / "fsdp_dropout"), fsdp=True, save_every=3),
                         "dropout": 0.2},
    }
    for name, spec in specs.items():
        spec["out"] = str(root / f"{name}.pt")
    codes = helpers.launch(helpers.train_toys, list(specs.values()), timeout=120)
    assert codes == [0, 0]
    out = {name: torch.load(spec["out"]) for name, spec in specs.items()}
    out["one"] = helpers.train_toy({"args": dict(COMMON, output_dir=str(root / "one"))})
    out["root"], out["specs"] = root, specs
    return out


def test_two_processes_match_one_process(runs):
    """Same global batch (4 + 4 rows vs 8): the same losses, for DDP and FSDP."""
    one = runs["one"]["losses"]
    for name in ("ddp", "fsdp"):
        losses = runs[name]["losses"]
        assert len(losses) == len(one) == 6
        diff = max(abs(a - b) for a, b in zip(losses, one))
        print(f"{name} 2-process vs 1-process: max loss diff {diff:.3g}")
        assert diff <= TOL
    assert one[-1] < one[0]  # it trains


def test_fsdp_model_equals_ddp_model(runs):
    """The caller's model after an FSDP run (the full weights, gathered) equals the DDP run's."""
    ddp, fsdp = runs["ddp"]["state"], runs["fsdp"]["state"]
    assert _max_diff(ddp, fsdp) <= TOL
    assert _max_diff(ddp, runs["one"]["state"]) <= TOL
    checkpoint = load_latest_checkpoint(runs["root"] / "fsdp")
    assert checkpoint.sharded and checkpoint.world_size == 2 and checkpoint.step == 6
    assert sorted(p.name for p in (checkpoint.path / "sharded").iterdir()) == [".metadata", "__0_0.distcp",
                                                                            "__1_0.distcp"]


def test_fsdp_checkpoint_resumes_on_one_process(runs, tmp_path):
    """Saved by 2 FSDP processes at step 3, resumed by 1 unsharded process: DCP reshards the model and the
    optimizer state; the global data position carries over."""
    run = tmp_path / "run"
    shutil.copytree(runs["root"] / "fsdp", run)
    shutil.rmtree(run / "checkpoints" / "step-000006")
    resumed = helpers.train_toy({"args": dict(COMMON, output_dir=str(run), resume=True)})
    assert resumed["start_step"] == 3
    full = runs["fsdp"]
    assert max(abs(a - b) for a, b in zip(resumed["losses"], full["losses"][3:])) <= TOL
    assert _max_diff(resumed["state"], full["state"]) <= TOL


def test_ddp_checkpoint_resumes_on_one_process(runs, tmp_path):
    """A DDP checkpoint holds the whole weights and optimizer state, and the toy source a global position."""
    run = tmp_path / "run"
    shutil.copytree(runs["root"] / "ddp", run)
    shutil.rmtree(run / "checkpoints" / "step-000006")
    assert not load_latest_checkpoint(run).sharded
    resumed = helpers.train_toy({"args": dict(COMMON, output_dir=str(run), resume=True)})
    assert resumed["start_step"] == 3
    assert max(abs(a - b) for a, b in zip(resumed["losses"], runs["ddp"]["losses"][3:])) <= TOL


def test_ddp_checkpoint_resumes_under_fsdp_exactly(runs, tmp_path):
    """A whole checkpoint cut into shards (weights and Adam state): the FSDP run continues the DDP run exactly."""
    run = tmp_path / "run"
    shutil.copytree(runs["root"] / "ddp", run)
    shutil.rmtree(run / "checkpoints" / "step-000006")
    spec = {"args": dict(COMMON, output_dir=str(run), resume=True, fsdp=True), "out": str(tmp_path / "run.pt")}
    assert helpers.launch(helpers.train_toys, [spec], timeout=120) == [0, 0]
    got, want = torch.load(spec["out"]), runs["ddp"]
    assert got["start_step"] == 3 and got["losses"] == want["losses"][3:]
    assert _max_diff(got["state"], want["state"]) <= TOL


def test_per_rank_positions_need_the_same_number_of_processes(tmp_path):
    torch.manual_seed(0)
    model = helpers.ToyLM()
    optimizer = build_optimizer(model, 1e-2, 0.0)
    rng = capture_rng_state()
    save_checkpoint(tmp_path, 3, model, optimizer, None, [{"index": 6}, {"index": 7}], rng_state=[rng, rng],
                    world_size=2)
    with pytest.raises(TrainingError, match="different batch positions per rank"):
        helpers.train_toy({"args": dict(COMMON, output_dir=str(tmp_path), resume=True)})


def test_task_batches_split_the_global_batch():
    from lmforge.data.batches import TaskBatches

    features = [{"input_ids": list(range(1, 2 + i % 7)), "labels": i} for i in range(21)]  # 21 = 2 x 10 + 1
    whole = list(TaskBatches(features, 10, pad_token_id=0, seed=1))
    parts = [list(TaskBatches(features, 10, pad_token_id=0, seed=1, rank=r, world_size=2)) for r in (0, 1)]
    assert len(whole) == 3 and len(parts[0]) == len(parts[1]) == 2  # the last batch (1 example) is dropped
    for full, a, b in zip(whole, *parts):
        assert sorted(full["labels"].tolist()) == sorted(a["labels"].tolist() + b["labels"].tolist())
        assert len(a["labels"]) == len(b["labels"]) == 5
    with pytest.raises(ValueError, match="at least world_size"):
        TaskBatches(features, 1, pad_token_id=0, rank=0, world_size=2)


def test_fsdp_run_killed_on_one_rank_resumes_bit_identically(runs, tmp_path):
    spec = dict(runs["specs"]["fsdp_dropout"], out=str(tmp_path / "run.pt"), fail_at=[8, 1])  # step 5, rank 1
    spec["args"] = dict(spec["args"], output_dir=str(tmp_path / "run"))
    codes = helpers.launch(helpers.train_toys, [spec], timeout=120)
    assert codes[1] == -signal.SIGKILL and codes[0] != 0  # rank 0 fails or is stopped too, it does not hang
    assert load_latest_checkpoint(tmp_path / "run").step == 3

    spec = dict(spec, fail_at=None)
    spec["args"] = dict(spec["args"], resume=True)
    assert helpers.launch(helpers.train_toys, [spec], timeout=120) == [0, 0]
    got, want = torch.load(spec["out"]), runs["fsdp_dropout"]
    assert got["start_step"] == 3
    assert got["losses"] == want["losses"][3:]  # exactly
    assert all(torch.equal(got["state"][k], want["state"][k]) for k in want["state"])


def test_failing_rank_ends_the_torchrun_job_with_its_error(tmp_path):
    """Rank 1 raises in step 2; rank 0 waits in a collective. torchrun stops it and reports rank 1's error."""
    spec = {"args": dict(COMMON, output_dir=str(tmp_path / "run"), fsdp=True), "fail_at": [2, 1], "fail_how": "raise"}
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(Path(helpers.__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")]))
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             helpers.__file__, json.dumps(spec)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode != 0
    assert "rank 1 failed on purpose at batch 2" in output  # the root cause, in torchrun's report
    assert time.monotonic() - t0 < 100


@pytest.mark.parametrize("families", [
    ["bert-mlm+nsp", "llama", "t5"],
    pytest.param(["bert-classification", "electra", "gpt2", "bart"], marks=pytest.mark.slow),
], ids=["bert-llama-t5", "others"])
def test_model_families_fsdp_equals_ddp(tmp_path, families):
    """The real models with their CPU fast paths (unpadded attention, fused losses, dropout), tied embeddings
    and layer stacks: FSDP and DDP give the same losses and weights."""
    out = tmp_path / "families.pt"
    spec = {"families": families, "steps": 2, "dir": str(tmp_path), "out": str(out)}
    assert helpers.launch(helpers.train_families, spec, timeout=180) == [0, 0]
    for name, result in torch.load(out).items():
        (ddp_losses, ddp_state), (fsdp_losses, fsdp_state) = result["ddp"], result["fsdp"]
        assert max(abs(a - b) for a, b in zip(ddp_losses, fsdp_losses)) <= TOL, name
        assert _max_diff(ddp_state, fsdp_state) <= TOL, name


def test_transformer_layers_are_the_fsdp_units():
    """Layer stacks become units; tied parameters and T5's relative position bias stay in the root."""
    bert = helpers.family_model("bert-mlm+nsp")
    assert transformer_layers(bert) == list(bert.bert.encoder.layer)
    t5 = helpers.family_model("t5")
    units = transformer_layers(t5)
    assert t5.encoder.block[0] not in units and t5.encoder.block[1] in units and t5.decoder.block[1] in units
    assert not any(u is t5.encoder.block[1].layer[0] for u in units)  # outermost only
    toy = helpers.ToyLM()
    toy.layers[1].ff.weight = toy.layers[0].ff.weight  # shared between two layers: neither is a unit
    assert transformer_layers(toy) == []


# ------------------------------------------------------------------------------------ recipes on torchrun
def _torchrun(args: list[str], env: dict, nproc: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
                if nproc > 1 else [sys.executable])
    proc = subprocess.Popen([*launcher, "-m", "lmforge.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, output)


@pytest.fixture
def recipe_env(tmp_path):
    from test_finetune import sentiment_rows, write_csv

    rng = random.Random(0)
    words = ["film", "movie", "actor", "plot", "scene", "story", "director", "music", "camera", "script"]
    docs = ["\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(5, 12))) + " ." for _ in range(8))
            for _ in range(60)]
    (tmp_path / "corpus.txt").write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    write_csv(tmp_path / "reviews.csv", sentiment_rows(80))
    src = str(Path(helpers.__file__).parents[1] / "src")
    return dict(os.environ, OMP_NUM_THREADS="1", LMFORGE_CACHE=str(tmp_path / "cache"),
                PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))


TINY = ["--hidden-size", "32", "--num-hidden-layers", "2", "--num-attention-heads", "2", "--intermediate-size", "64",
        "--vocab-size", "300", "--max-seq-length", "64", "--eval-fraction", "0.1", "--eval-batches", "2",
        "--no-progress", "--threads", "1", "--max-steps", "4", "--eval-every", "2", "--save-every", "2"]


@pytest.mark.slow  # a torchrun launch per recipe, ~30 s each on a loaded machine
@pytest.mark.parametrize("objective,extra", [
    ("mlm+nsp", ["--fsdp"]), ("mlm", []), ("electra", ["--fsdp"]), ("clm", ["--fsdp", "--preset", "gpt2-tiny"]),
    ("clm", ["--fsdp", "--preset", "llama-tiny"]),
], ids=["mlm+nsp-fsdp", "mlm-ddp", "electra-fsdp", "gpt2-fsdp", "llama-fsdp"])
def test_pretrain_recipes_on_torchrun(tmp_path, recipe_env, objective, extra):
    out = tmp_path / "run"
    run = _torchrun(["pretrain", "--corpus", str(tmp_path / "corpus.txt"), "-o", str(out), "--objective", objective,
                     "--batch-size", "4", *TINY, *extra], recipe_env)
    assert run.returncode == 0, run.stdout[-3000:]
    assert (out / "final" / "config.json").is_file()
    checkpoint = load_latest_checkpoint(out)
    assert checkpoint.step == 4 and checkpoint.world_size == 2 and checkpoint.sharded == ("--fsdp" in extra)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["final_eval"]


@pytest.mark.slow
def test_fsdp_pretrain_resumes_on_one_process_and_finetunes_on_two(tmp_path, recipe_env):
    out = tmp_path / "run"
    common = ["pretrain", "--corpus", str(tmp_path / "corpus.txt"), "-o", str(out), *TINY]
    first = _torchrun([*common, "--batch-size", "4", "--fsdp", "--max-steps", "2"], recipe_env)
    assert first.returncode == 0, first.stdout[-3000:]
    # One process with the same global batch (2 x 4) continues the sharded checkpoint.
    resumed = _torchrun([*common, "--batch-size", "8", "--resume"], recipe_env, nproc=1)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert "resuming a run of 2 processes on 1" in resumed.stdout
    assert json.loads((out / "summary.json").read_text())["steps"] == 4
    ft = _torchrun(["finetune", "--model", str(out / "final"), "--data", str(tmp_path / "reviews.csv"), "-o",
                    str(tmp_path / "ft"), "--epochs", "2", "--batch-size", "8", "--no-progress", "--threads", "1",
                    "--fsdp"], recipe_env)
    assert ft.returncode == 0, ft.stdout[-3000:]
    results = json.loads((tmp_path / "ft" / "results.json").read_text())
    assert results["test"] and (tmp_path / "ft" / "best" / "model.safetensors").is_file()
