"""Stage 3's roles, built with or without DeepSpeed behind one interface: the policy, its
frozen reference, the frozen reward model, and a critic (value model) when the advantage
estimator uses one.

The trained roles (policy, critic) are DeepSpeed engines under `deepspeed=zero2|zero3|...`, and
`LocalEngine`s otherwise: a plain model and optimizer with the same few methods (`backward`,
`step`, `save_checkpoint`, `load_checkpoint`), so the RL loop has one code path.

Two engines, not one: policy and critic have their own optimizers and learning rates, the
critic trains alone during its warm-up, and each saves and consolidates on its own; one engine
over a module holding both would need hand-split parameter groups for the same result.

The frozen roles (reference, the reward source's models) are plain replicated modules, except
under ZeRO-3 where they become inference engines with their weights sharded like the trained ones (ZeRO-1/2 shard
only optimizer state and gradients, which frozen models do not have).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file

from rlhf.core import distributed
from rlhf.core.distributed import is_main_process
from rlhf.models import AdapterDisabled, apply_lora
from rlhf.sampling.reward import ModelReward

log = logging.getLogger(__name__)


@dataclass
class Roles:
    """Policy and critic are trained engines; reference and reward are frozen (eval mode, no grads)."""

    policy: torch.nn.Module
    ref: torch.nn.Module
    # a reward source (rlhf.sampling.reward: a model, a function, an ensemble, a weighted sum);
    # a bare reward model is taken as ModelReward (normalised by its saved bias)
    reward: object
    critic: Optional[torch.nn.Module] = None  # None: the advantage estimator needs no values

    def __post_init__(self):
        if isinstance(self.reward, torch.nn.Module):
            self.reward = ModelReward(self.reward, None, "model")

    def trained(self) -> dict[str, torch.nn.Module]:
        """The engines that learn and are checkpointed, by checkpoint folder name."""
        return {"policy": self.policy, **({"value": self.critic} if self.critic is not None else {})}

    def models(self) -> dict[str, torch.nn.Module]:
        """Every model of stage 3 by role: the trained ones, the reference, the reward model(s)."""
        rewards = [m.model for m in self.reward.models()]
        named = {"reward": rewards[0]} if len(rewards) == 1 else {f"reward_{i}": m for i, m in enumerate(rewards)}
        return {**self.trained(), "ref": self.ref, **named}


class LocalEngine(torch.nn.Module):
    """A model and its optimizer with the part of DeepSpeed's engine interface PPO uses.
    `step()` is called after every micro-batch's backward; the optimizer steps (after clipping)
    every `accumulation_steps` calls, as DeepSpeed's does. With several ranks and no DeepSpeed,
    the gradients are averaged across ranks before each step (what DDP does, without its
    overlap: use deepspeed=zero2 for speed). As DeepSpeed's engines do, it does not step on
    gradients whose norm is not finite; the loop reads `get_global_grad_norm()` and stops or
    counts the step (rlhf.core.nonfinite)."""

    def __init__(self, module, optimizer, accumulation_steps: int, max_grad_norm: float):
        super().__init__()
        self.module = module
        self.optimizer = optimizer
        self.accumulation_steps = accumulation_steps
        self.max_grad_norm = max_grad_norm
        self._micro_steps = 0
        self._grad_norm: Optional[float] = None
        self._dropped = False

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def zero_optimization_stage(self) -> int:
        return 0

    def backward(self, loss: torch.Tensor, scale_wrt_gas: bool = True) -> None:
        (loss / self.accumulation_steps if scale_wrt_gas else loss).backward()

    def step(self) -> None:
        self._micro_steps += 1
        if self._micro_steps % self.accumulation_steps:
            return
        if self._dropped:  # see drop_step
            self._dropped, self._grad_norm = False, None
            self.optimizer.zero_grad()
            return
        params = [w for w in self.module.parameters() if w.requires_grad]
        if distributed.world_size() > 1:
            for w in params:
                if w.grad is not None:
                    torch.distributed.all_reduce(w.grad)
                    w.grad /= distributed.world_size()
        self._grad_norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm).item()
        if math.isfinite(self._grad_norm):  # else every weight would turn nan
            self.optimizer.step()
        self.optimizer.zero_grad()

    def drop_step(self) -> None:
        """The optimizer step under way is not taken: its gradients are dropped at its last
        micro-batch's step() (a micro-batch of it had a non-finite loss, and was not backwarded)."""
        self._dropped = True

    def get_global_grad_norm(self) -> Optional[float]:
        """The gradient norm (before clipping) of the last optimizer step, as DeepSpeed's engine
        reports it; None before the first, or when that step was dropped."""
        return self._grad_norm

    def save_checkpoint(self, folder: Path, tag: str) -> None:
        """<folder>/<tag>/: the model in Hugging Face format (LoRA: its adapter) and the optimizer."""
        if not is_main_process():  # every rank holds the same weights
            return
        self.module.save_pretrained(folder / tag)
        torch.save(self.optimizer.state_dict(), folder / tag / "optimizer.pt")

    def load_checkpoint(self, folder: Path, tag: str) -> None:
        path = folder / tag
        adapter = path / "adapter_model.safetensors"
        if adapter.exists():  # LoRA: the adapter (and score head); the base is the frozen checkpoint loaded
            from peft import set_peft_model_state_dict

            unexpected = set_peft_model_state_dict(self.module, load_file(adapter)).unexpected_keys
            if unexpected:
                raise RuntimeError(f"{path}: does not match the model (unexpected {unexpected})")
        else:
            missing, unexpected = self.module.load_state_dict(load_file(path / "model.safetensors"), strict=False)
            tied = {k for k in missing if "lm_head" in k and getattr(self.module.config, "tie_word_embeddings", False)}
            if set(missing) - tied or unexpected:
                raise RuntimeError(f"{path}: does not match the model (missing {missing}, unexpected {unexpected})")
        self.optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))


def micro_rows(p) -> int:
    """Rows per forward/backward pass on each rank (`p`: the stage-3 config)."""
    return p.micro_batch_size or p.mini_batch_size // distributed.world_size()


def adamw(params, lr: float) -> torch.optim.AdamW:
    """Stage 3's optimizer without DeepSpeed: AdamW (eps 1e-5, no weight decay), fused into one
    kernel where torch has one for the parameters' device: the same update in less time (the
    medium benchmark model on 2 CPU cores: 2.1 ms a step vs 18 ms)."""
    params = list(params)
    fusable = all(w.device.type in ("cpu", "cuda") and w.dtype.is_floating_point for w in params)
    return torch.optim.AdamW(params, lr=lr, eps=1e-5, weight_decay=0.0, fused=fusable or None)


def local_engine(model, optimizer, p) -> LocalEngine:
    """`p`: the stage-3 config, for the micro-batches per minibatch and the clipping norm."""
    return LocalEngine(model, optimizer, (p.mini_batch_size // distributed.world_size()) // micro_rows(p),
                       p.max_grad_norm)


def build_roles(cfg, policy, reward, critic=None, ref=None) -> Roles:
    """Engines for the policy and the critic (when given; their optimizers inside), the
    reference (`ref`, a second load of the policy's checkpoint; or with LoRA the policy with its
    adapter off) and the reward model."""
    p, ds = cfg.ppo, cfg.deepspeed
    world, micro = distributed.world_size(), micro_rows(p)
    zero3 = ds.name != "none" and distributed.zero_stage(ds.config) == 3
    if isinstance(reward, torch.nn.Module):
        reward = ModelReward(reward, None, "model")
    if not zero3:  # (ZeRO-3 loaded the weights sharded onto the device; its engines keep them there)
        device = distributed.device()
        policy, critic, ref = (m.to(device) if m is not None else None for m in (policy, critic, ref))
        for member in reward.models():
            member.model = member.model.to(device)
    if cfg.model.gradient_checkpointing:  # (active in training mode only: rollouts keep their KV cache)
        for model in (policy, critic):
            if model is not None:
                distributed.enable_checkpointing(model)
    if cfg.model.lora.enabled:
        policy = apply_lora(policy, cfg.model.lora, "causal")
        critic = apply_lora(critic, cfg.model.lora, "score") if critic is not None else None
        ref = None  # after the policy's engine exists: the adapter-off view of its module
    else:
        ref = ref.eval().requires_grad_(False)
    for member in reward.models():
        member.model = member.model.eval().requires_grad_(False)
    lrs = {"policy": p.learning_rate, "critic": p.value_learning_rate or p.learning_rate}
    engines = {}
    for name, model in (("policy", policy), ("critic", critic)):
        if model is None:
            continue
        params = [w for w in model.parameters() if w.requires_grad]
        if ds.name == "none":
            engines[name] = local_engine(model, adamw(params, lrs[name]), p)
            continue
        config = distributed.engine_config(ds.config, model, batch_size=p.mini_batch_size,
                                           micro_batch_size_per_device=micro, max_grad_norm=p.max_grad_norm,
                                           dtype=cfg.model.dtype, train=True)
        if distributed.offloads_optimizer(config):
            from deepspeed.ops.adam import DeepSpeedCPUAdam  # built on first use (minutes)

            optimizer = DeepSpeedCPUAdam(params, lr=lrs[name], eps=1e-5, weight_decay=0.0)
        else:
            optimizer = torch.optim.AdamW(params, lr=lrs[name], eps=1e-5, weight_decay=0.0)
        engines[name] = distributed.initialize(model, config, optimizer)
    if ref is None:
        ref = AdapterDisabled(distributed.module_of(engines["policy"]))
    if zero3:
        def frozen(model):
            config = distributed.engine_config(ds.config, model, batch_size=micro * world,
                                               micro_batch_size_per_device=micro, max_grad_norm=p.max_grad_norm,
                                               dtype=cfg.model.dtype, train=False)
            engine = distributed.initialize(model, config)
            engine.eval()  # (a DeepSpeed engine's eval() returns None)
            return engine

        ref = frozen(ref)
        for member in reward.models():  # every reward model of the source (an ensemble's members)
            member.model = frozen(member.model)
    return Roles(policy=engines["policy"], ref=ref, reward=reward, critic=engines.get("critic"))
