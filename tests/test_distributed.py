"""Multi-process training on CPU (gloo, 2 processes): DDP and FSDP2 runs against one process, sharded (DCP)
checkpoints resumed exactly, on another number of processes, and after a killed rank; a failing rank ends
the job. Processes are forked (`dist_helpers.launch`, hard timeouts); one test goes through torchrun."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import dist_helpers as helpers
from lmforge.training import load_latest_checkpoint
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
        "ddp": {"args": dict(COMMON, output_dir=str(root / "ddp"))},
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
