"""Stage 3's algorithms as registered pure functions, each kind with ONE signature, so the RL
loop (rlhf/stages/online_rl/loop.py) never branches on a method's name:

    advantages.py   ADVANTAGES       @register_advantage("gae", needs_critic=True)
    policy_loss.py  POLICY_LOSSES    @register_policy_loss("ppo_clip")
    kl.py           KL_ESTIMATORS    k1, k3; the fixed or adaptive KL coefficient
    rewards.py      from reward-model scores to per-token rewards
    critic.py       the clipped value loss and its diagnostics
    preference.py   the K-wise reward-model loss (DPO's loss comes from trl)

A variant is one decorated function plus a config value (conf/algo/<name>.yaml); an unknown
name is a config error that lists the registered ones.
"""
