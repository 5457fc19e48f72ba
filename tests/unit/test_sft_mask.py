"""SFT trains on response tokens only: the labels are exactly the response ids (and EOS)."""

import torch
from trl import SFTConfig, SFTTrainer

from rlhf.config import ModelConfig
from rlhf.data import Demonstration, encode
from rlhf.models import load_causal_lm
from rlhf.stages.sft import sft_dataset

DEMOS = [
    Demonstration("sort ascending: 3 1 2", "1 2 3"),
    Demonstration(({"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                   {"role": "assistant", "content": "hello"}, {"role": "user", "content": "sort descending: 1 5"}),
                  "5 1"),
]


def test_labels_are_exactly_the_response_tokens(tokenizer, tmp_path):
    args = SFTConfig(output_dir=str(tmp_path), completion_only_loss=True, max_length=None, report_to="none",
                     use_cpu=True, per_device_train_batch_size=2)
    trainer = SFTTrainer(model=load_causal_lm(ModelConfig(), tokenizer), args=args, processing_class=tokenizer,
                         train_dataset=sft_dataset(tokenizer, DEMOS))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    by_input = {tuple(ex["input_ids"]): ex for ex in trainer.train_dataset}  # the trainer may shuffle
    for demo in DEMOS:
        prompt_ids, response_ids = encode(tokenizer, demo.prompt, demo.response)
        row = [i for i in range(2) if batch["input_ids"][i, : len(prompt_ids + response_ids)].tolist()
               == prompt_ids + response_ids][0]
        labels = batch["labels"][row]
        trained = labels[labels != -100].tolist()
        assert trained == response_ids  # the same tokens, in order, EOS last
        assert trained[-1] == tokenizer.eos_token_id
        # and at the same positions as in the input: prompt and padding are masked
        assert labels[: len(prompt_ids)].eq(-100).all()
        assert torch.equal(labels[len(prompt_ids): len(prompt_ids) + len(response_ids)],
                           torch.tensor(response_ids))
        assert labels[len(prompt_ids) + len(response_ids):].eq(-100).all()
        assert tuple(prompt_ids + response_ids) in by_input
