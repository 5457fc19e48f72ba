"""The shared data layer: every stage gets its records, splits and formatting from here."""

from rlhf.data.formatting import encode, encode_prompts, encode_responses, render_prompt, render_response
from rlhf.data.loader import DataBundle, Split, assign_splits, describe_source, load_data
from rlhf.data.records import Comparison, DataError, Demonstration, Prompt, RecordError, preference_pairs, prompt_key

__all__ = [
    "Comparison", "DataBundle", "DataError", "Demonstration", "Prompt", "RecordError", "Split",
    "assign_splits", "describe_source", "encode", "encode_prompts", "encode_responses", "load_data",
    "preference_pairs", "prompt_key", "render_prompt", "render_response",
]
