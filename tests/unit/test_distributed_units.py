"""rlhf.core.distributed without processes: launcher environments, DeepSpeed "auto" values, and
whitening over ranks' shares equal to whitening the whole batch."""

import os

import torch

from rlhf.core import distributed
from rlhf.config import ModelConfig
from rlhf.models import build_tiny_model, build_tiny_tokenizer
from rlhf.core import ops as L

ZERO3 = {"zero_optimization": {"stage": 3, "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto",
                               "stage3_param_persistence_threshold": "auto",
                               "offload_optimizer": {"device": "cpu"}},
         "gradient_clipping": "auto", "train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto",
         "gradient_accumulation_steps": "auto", "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"},
         "optimizer": {"type": "AdamW", "params": {"lr": "auto"}}}


def clear(monkeypatch):
    """A private copy of the environment without launcher variables: adopt_launcher_env writes to
    it, and none of that may leak into later tests."""
    keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS",
            "SLURM_LOCALID", "SLURM_JOB_NODELIST", "SLURM_NODELIST", "SLURM_JOB_ID")
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if k not in keys})


def test_deepspeed_launchers_local_rank_argument_is_moved_to_the_environment(monkeypatch):
    clear(monkeypatch)
    argv = ["rlhf", "--local_rank=1", "stage=sft", "deepspeed=zero2"]
    assert distributed.adopt_launcher_env(argv) == ["rlhf", "stage=sft", "deepspeed=zero2"]
    assert distributed.local_rank() == 1
    clear(monkeypatch)
    assert distributed.adopt_launcher_env(["rlhf", "--local-rank", "3", "stage=rm"]) == ["rlhf", "stage=rm"]
    assert distributed.local_rank() == 3


def test_srun_tasks_get_torch_distributed_variables_from_slurm(monkeypatch):
    clear(monkeypatch)
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu-a,gpu-b")
    monkeypatch.setenv("SLURM_JOB_ID", "12345")
    distributed.adopt_launcher_env(["rlhf"])
    assert (distributed.rank(), distributed.world_size(), distributed.local_rank()) == (5, 8, 1)
    assert os.environ["MASTER_ADDR"] == "gpu-a" and os.environ["MASTER_PORT"] == str(20000 + 12345)


def test_srun_around_torchrun_keeps_torchruns_ranks(monkeypatch):
    clear(monkeypatch)
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("RANK", "9")  # torchrun set it: one srun task per node, torchrun inside
    distributed.adopt_launcher_env(["rlhf"])
    assert distributed.rank() == 9


def test_engine_config_fills_every_auto_from_ppo_settings(monkeypatch):
    clear(monkeypatch)
    monkeypatch.setenv("WORLD_SIZE", "2")
    model = build_tiny_model(ModelConfig(), build_tiny_tokenizer())
    hidden = model.config.hidden_size
    c = distributed.engine_config(ZERO3, model, batch_size=32, micro_batch_size_per_device=4, max_grad_norm=0.5,
                                  dtype="bfloat16", train=True)
    assert (c["train_batch_size"], c["train_micro_batch_size_per_gpu"], c["gradient_accumulation_steps"]) == (32, 4, 4)
    assert c["gradient_clipping"] == 0.5 and c["bf16"]["enabled"] and not c["fp16"]["enabled"]
    assert c["zero_optimization"]["stage3_param_persistence_threshold"] == 10 * hidden
    assert "optimizer" not in c and ZERO3["gradient_clipping"] == "auto"  # the caller's dict is untouched
    frozen = distributed.engine_config(ZERO3, model, batch_size=8, micro_batch_size_per_device=4, max_grad_norm=1.0,
                                       dtype="float32", train=False)
    assert "offload_optimizer" not in frozen["zero_optimization"] and frozen["zero_optimization"]["stage"] == 3


def test_whitening_each_ranks_share_with_global_totals_equals_whitening_the_whole_batch():
    torch.manual_seed(0)
    x, mask = torch.randn(8, 6), (torch.rand(8, 6) > 0.3).float()
    whole = L.masked_whiten(x, mask)
    halves = [(x[:4], mask[:4]), (x[4:], mask[4:])]

    parts = []
    for i, (xs, ms) in enumerate(halves):
        ox, om = halves[1 - i]
        # the other rank's contributions, in the order masked_whiten asks for them
        om_count = om.sum()
        other_mean_num = (ox * om).sum()
        count = ms.sum() + om_count
        mean = ((xs * ms).sum() + other_mean_num) / count
        other_sums = [om_count, other_mean_num, (((ox - mean) * om) ** 2).sum()]
        # what all_reduce(SUM) returns on this rank: its own sum plus the other rank's
        parts.append(L.masked_whiten(xs, ms, total=lambda t: t + other_sums.pop(0)))
        assert not other_sums
    assert torch.allclose(torch.cat(parts), whole, atol=1e-6)
    assert not torch.allclose(torch.cat([L.masked_whiten(xs, ms) for xs, ms in halves]), whole, atol=1e-3)
