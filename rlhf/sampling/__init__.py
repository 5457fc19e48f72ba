"""Sampling from policies and scoring with reward models: the services every stage calls.

    generate.py  one KV-cache sampler (`sample`: one prefill per prompt for its n answers,
                 finished answers out of the batch), `generate` for lists of prompts, and the
                 log-probabilities of given responses
    prefix.py    forward passes over rows that share prompts: each prompt read once, no
                 column that every row pads
    score.py     reward-model scores, normalised as the RM stage saved them
    reward.py    reward sources (registered): a model, a function, an ensemble of models, the
                 verifier of data=ifeval, a weighted sum
    gold.py      gold-scorer evaluation of greedy and sampled answers (toy task)
    best_of_n.py n samples per prompt, the best by the reward source kept
"""

from rlhf.sampling.generate import Sample, generate, response_logprob_sums, response_logprobs, sample  # noqa: F401
from rlhf.sampling.best_of_n import BestOfN, best_of_n  # noqa: F401
from rlhf.sampling.gold import gold_evaluation  # noqa: F401
from rlhf.sampling.score import score  # noqa: F401
from rlhf.sampling.reward import (EnsembleReward, FunctionReward, ModelReward, VerifierReward, WeightedSum,  # noqa: F401
                                 build_reward, reward_scores)
