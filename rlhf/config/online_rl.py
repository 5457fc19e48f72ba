"""Stage 3's configs (`ppo.` and `vllm.`; docs/stages.md): online RL against a reward, the
algorithm as registered pieces, and the vLLM rollout engine. Part of the schema
(rlhf/config/schema.py re-exports both), apart from it as the data layer's configs are, because
stage 3 has as many options as the other stages together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class PPOStageConfig:
    """Stage 3 (rlhf/stages/online_rl/): online RL against the reward model. The algorithm is
    the registered pieces named here (conf/algo/ picks a coherent set: `algo=ppo` is InstructGPT's
    PPO); names follow InstructGPT and Huang et al. 2024."""

    # --- the algorithm (registries in rlhf/algos/; an unknown name lists the valid ones)
    advantage: str = "gae"  # advantage estimator; "gae" trains a critic (value model), critic-free ones none
    policy_loss: str = "ppo_clip"  # clipped surrogate
    # --- inputs (null = this run's outputs, from the stage registry)
    policy_from: Optional[str] = None  # null = runs/<run>/sft/final; also the frozen reference
    reward_from: Optional[str] = None  # null = runs/<run>/rm/final (with its normalisation); reward.source=model only
    value_from: Optional[str] = None  # null = reward_from (the critic starts as the RM), or policy_from without an RM
    # --- rollout
    updates: int = 100  # rollout-then-optimise rounds
    rollout_batch_size: int = 64  # responses sampled per update (prompts x samples_per_prompt), all ranks
    samples_per_prompt: int = 1  # responses per prompt; they share a group id (group baselines use it)
    temperature: float = 1.0  # sampling: top_k 0, top_p 1, the policy's own distribution as PPO's math assumes
    max_new_tokens: Optional[int] = None  # null = data.max_response_tokens
    # What samples the rollouts: hf (our sampler on the policy itself) or vllm (a vLLM engine
    # beside the trainer in each rank's process, its weights pushed from the policy after every
    # update; settings in `vllm:`; install: make setup-vllm, docs/vllm.md). With vllm the PPO
    # ratio's old log-probs still come from the policy's own forward pass (one more pass).
    rollout_engine: str = "hf"
    # vllm only: truncated importance sampling of the engine/policy mismatch (Yao et al. 2025):
    # each token's advantage times min(pi_policy / pi_engine, tis_cap); null = off
    tis_cap: Optional[float] = None
    no_eos_score: float = -5.0  # RM score given to a response that never emitted EOS (normalised units)
    score_clip: Optional[float] = None  # clip RM scores to +-this before use
    # --- reward = RM score on the last token - beta * KL per token
    kl_estimator: str = "k1"  # k1 | k3 (rlhf/algos/kl.py)
    beta: float = 0.02  # InstructGPT's KL coefficient
    kl_target: Optional[float] = None  # set (e.g. 6.0 nats) for Ziegler's adaptive beta
    kl_horizon: int = 10000
    whiten_rewards: bool = False  # normalise the per-token rewards of each batch (mean kept)
    # Where the KL to the reference goes: into the per-token reward (PPO, RLOO, REINFORCE++), or
    # (false) out of it, and then as kl_loss_coef x the mean per-token KL (kl_estimator, taken
    # on the current policy) added to the policy loss (GRPO, with k3)
    kl_in_reward: bool = True
    kl_loss_coef: float = 0.0
    # grpo: divide by the group's std (Shao et al.); false = Dr. GRPO (Liu et al. 2025)
    scale_by_std: bool = True
    group_baseline: bool = False  # reinforce_pp: subtract the group's mean score first (REINFORCE++-baseline)
    # --- optimisation
    mini_batch_size: int = 32  # responses per optimizer step; must divide rollout_batch_size
    # responses per forward (rollout scoring) and forward/backward pass (training); null =
    # mini_batch_size. Lower it to save activation memory: gradients accumulate, so the optimizer
    # step is the same. Must divide mini_batch_size.
    micro_batch_size: Optional[int] = None
    ppo_epochs: int = 4  # passes over each rollout batch
    learning_rate: float = 1e-5  # policy
    max_grad_norm: float = 1.0  # global clipping, policy and critic each
    gamma: float = 1.0  # discount (GAE)
    lam: float = 0.95  # GAE's lambda
    clip: float = 0.2  # policy ratio clip: [1 - clip, 1 + clip_high]
    clip_high: Optional[float] = None  # null = clip; DAPO's "clip-higher" 0.28, GSPO's sequence ratio 4e-4
    # How per-token policy losses become the minibatch's: token_mean (PPO, DAPO),
    # seq_mean_token_mean (GRPO, GSPO: each response's mean, then the mean over responses),
    # seq_mean_token_sum_norm (Dr. GRPO: token sums over a constant, no division by length)
    loss_agg: str = "token_mean"
    # DAPO's dynamic sampling: groups whose scores are all equal (zero group advantage) are left out
    # of the update instead of diluting it (counted: groups_dropped_frac); no resampling to refill
    drop_uniform_groups: bool = False
    # DAPO's soft overlong punishment: a response longer than max_new_tokens - overlong_buffer
    # tokens loses up to overlong_penalty of score, linearly; null = off
    overlong_buffer: Optional[int] = None
    overlong_penalty: float = 1.0
    entropy_coef: float = 0.0  # + entropy bonus (exploration); < 0 minimises entropy (sharpens the policy)
    # PPO-ptx: + ptx_coef x LM loss on the sft split's demonstrations (InstructGPT: 27.8); 0 = off
    ptx_coef: float = 0.0
    ptx_batch_size: int = 16
    ema_decay: Optional[float] = None  # e.g. 0.992 (InstructGPT): save an EMA of the policy weights
    # --- the critic (only with an estimator that uses one)
    value_learning_rate: Optional[float] = None  # null = learning_rate
    value_clip: float = 0.2
    vf_coef: float = 0.1
    critic_warmup_updates: int = 0  # train only the critic for the first N updates (ignored without a critic)
    # --- evaluation and checkpoints
    eval_every_updates: int = 10  # gold score / RM score on eval prompts (0: start and end only)
    eval_prompts: int = 256  # 0: none (the gold is measured by compare instead)
    save_every_updates: int = 50  # resumable checkpoint in <stage>/checkpoints (0: only at the end)
    # A non-finite reward, advantage, loss or gradient norm stops the run before the optimizer
    # steps (the last checkpoint kept, exit 4); true skips instead, counted: the whole update for
    # a bad reward or advantage, the mini-batch for a bad loss or gradient norm (under DeepSpeed,
    # which steps inside backward, a bad loss or gradient norm still stops the run).
    skip_nonfinite: bool = False


@dataclass
class VLLMConfig:
    """The vLLM engine of ppo.rollout_engine=vllm (rlhf/sampling/vllm_engine.py): one per rank,
    in the trainer's process, colocated with the training on the same device. Left out of the
    pipeline's fingerprint (as `deepspeed` is): these change how the rollouts run, not what they sample."""

    # Share of the GPU's memory vLLM may take for its weights and KV cache (vLLM's own default,
    # 0.9, leaves nothing for training beside it); ignored on CPU
    gpu_memory_utilization: float = 0.3
    # KV cache size in MiB; null = from gpu_memory_utilization on a GPU, 512 MiB on CPU
    kv_cache_mib: Optional[int] = None
    # true: no CUDA graphs / torch.compile (starts in seconds); null = eager on CPU (compiling
    # there takes minutes and gained 20%), compiled on a GPU
    enforce_eager: Optional[bool] = None
    # On a GPU, between rollouts: 1 = weights offloaded to CPU memory and the KV cache freed for
    # the training passes, 0 = the engine keeps its memory (faster; needs the room). vLLM's
    # sleep mode exists on CUDA only; ignored elsewhere.
    sleep_level: int = 1
    # Sequences decoded at once (vLLM's max_num_seqs); null = vLLM's default
    max_num_seqs: Optional[int] = None
