"""Load a GGUF file with transformers, as the Python scripts beside this one all do.

transformers reads the tokenizer and the weights from the GGUF, dequantizing the weights to f32
(it cannot run them quantized). Progress bars and info logs are turned off so the scripts' JSON
output stays clean.
"""

import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging


def load(gguf, threads=0):
    """(tokenizer, f32 model) from the GGUF file `gguf`; `threads` > 0 sets torch's threads."""
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    if threads:
        torch.set_num_threads(threads)
    folder, name = os.path.split(os.path.abspath(gguf))
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    return tok, model
