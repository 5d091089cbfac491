"""A tiny, random-weight llama GGUF chat model, built on the fly for tests.

Tests must never download a model, yet the local-LLM code path (llama-cpp-python loading a
GGUF file, formatting a chat, sampling under a JSON grammar) deserves a real end-to-end run.
`build_tiny_gguf` writes a complete, valid llama-architecture GGUF file of a few hundred
kilobytes in a few tens of milliseconds:

- 2 transformer blocks, width 64, 4 heads, SwiGLU FFN of 128, 4096-token context, float32
  weights drawn from a seeded numpy generator (so the output is gibberish, but deterministic);
- a byte-level BPE tokenizer ("gpt2" model, "gpt-2" pre-tokenizer) holding all 256 byte
  symbols, so any UTF-8 text (Chinese included) can be encoded, about a hundred merges
  learned here from a few in-memory sentences, and the ChatML special tokens (365 tokens);
- the standard ChatML chat template, so llama-cpp-python formats messages as ChatML.

It is a test fixture only: the text it generates means nothing. No weight shaping is needed:
with the weights left purely random, JSON-grammar-constrained chat completions at
temperature 1.0 end on their own after a few hundred tokens at most (the tokenizer's merges
make tokens such as `"`, `",` and `"}` a sizeable share of what the grammar allows), so a
completion takes well under a second on a CPU.
"""

from __future__ import annotations

import re
from collections import Counter
from itertools import pairwise
from pathlib import Path

import gguf
import numpy as np

N_LAYERS = 2
N_EMBD = 64
N_HEAD = 4
N_FF = 128
N_CTX = 4096
HEAD_DIM = N_EMBD // N_HEAD
MAX_MERGES = 240  # an upper bound; merges stop once no pair occurs twice
WEIGHT_STD = 0.02

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
BOS_TOKEN, EOS_TOKEN = "<|endoftext|>", "<|im_end|>"

# The exact template llama-cpp-python knows as "chatml" (llama_chat_format.CHATML_CHAT_TEMPLATE).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# The text the BPE merges are learned from: a little English, JSON and Chinese.
TRAINING_TEXT = (
    "You are a helpful assistant that writes short educational videos for teachers.",
    "Make a one minute video about the water cycle for ten year old students.",
    "The sun heats the water in the ocean, and the water turns into vapour.",
    "Plants make their food from sunlight, water and carbon dioxide.",
    'Reply with JSON only: {"title": "The water cycle", "scenes": [{"narration": '
    '"Water falls as rain.", "seconds": 4}, {"narration": "Rivers carry it to the sea.", '
    '"seconds": 5}]}',
    '{"reply": "Here is your storyboard.", "items": [{"text": "Clouds form", "n": 3}]}',
    '{"title": "光合作用", "scenes": [{"narration": "植物用阳光制造食物。", "seconds": 6}]}',
    "请为小学生制作一个关于水循环的短视频。太阳加热海洋里的水，水变成水蒸气。",
    "老师，这是你的分镜脚本。每个场景都有旁白和时长。",
)

# Rough stand-in for the GPT-2 pre-tokenizer regex (Python's `re` has no \p{L}); it only has
# to split the training text into word-like chunks, llama.cpp does the real pre-tokenizing.
_WORD_RE = re.compile(r" ?[^\W\d_]+| ?\d+| ?[^\s\w]+|\s+")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _train_bpe() -> tuple[list[str], list[str]]:
    """Learn byte-level BPE merges from TRAINING_TEXT; return (vocabulary, merges).

    The vocabulary starts with the 256 byte symbols; each merge appends its result. Ties are
    broken on the pair itself, so the result is the same on every run.
    """
    byte_map = _bytes_to_unicode()
    vocab = [byte_map[b] for b in range(256)]
    known = set(vocab)
    words: Counter[tuple[str, ...]] = Counter()
    for text in TRAINING_TEXT:
        for chunk in _WORD_RE.findall(text):
            words[tuple(byte_map[b] for b in chunk.encode("utf-8"))] += 1

    merges: list[str] = []
    while len(merges) < MAX_MERGES:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in words.items():
            for pair in pairwise(word):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        if pairs[best] < 2:
            break
        left, right = best
        merges.append(f"{left} {right}")
        if left + right not in known:
            known.add(left + right)
            vocab.append(left + right)
        merged: Counter[tuple[str, ...]] = Counter()
        for word, count in words.items():
            out: list[str] = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(left + right)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += count
        words = merged
    return vocab, merges


def _random_tensors(rng: np.random.Generator, n_vocab: int) -> dict[str, np.ndarray]:
    """Small random float32 weights for every tensor llama.cpp's llama architecture loads.

    numpy shapes are (rows, cols); GGUF stores them reversed, so token_embd (n_vocab, n_embd)
    becomes llama.cpp's {n_embd, n_vocab}, attn_q (n_embd, n_embd) maps x -> q, and so on.
    """

    def normal(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * WEIGHT_STD).astype(np.float32)

    ones = np.ones(N_EMBD, dtype=np.float32)
    tensors = {"token_embd.weight": normal(n_vocab, N_EMBD)}
    for i in range(N_LAYERS):
        tensors |= {
            f"blk.{i}.attn_norm.weight": ones.copy(),
            f"blk.{i}.attn_q.weight": normal(N_EMBD, N_EMBD),
            f"blk.{i}.attn_k.weight": normal(N_EMBD, N_EMBD),
            f"blk.{i}.attn_v.weight": normal(N_EMBD, N_EMBD),
            f"blk.{i}.attn_output.weight": normal(N_EMBD, N_EMBD),
            f"blk.{i}.ffn_norm.weight": ones.copy(),
            f"blk.{i}.ffn_gate.weight": normal(N_FF, N_EMBD),
            f"blk.{i}.ffn_up.weight": normal(N_FF, N_EMBD),
            f"blk.{i}.ffn_down.weight": normal(N_EMBD, N_FF),
        }
    tensors["output_norm.weight"] = ones.copy()
    tensors["output.weight"] = normal(n_vocab, N_EMBD)
    return tensors


def build_tiny_gguf(path: Path, *, seed: int = 0) -> Path:
    """Write a tiny random llama GGUF chat model (ChatML template) to `path` and return it."""
    path = Path(path)
    vocab, merges = _train_bpe()
    tokens = [*vocab, *SPECIAL_TOKENS]
    token_types = [gguf.TokenType.NORMAL] * len(vocab)
    token_types += [gguf.TokenType.CONTROL] * len(SPECIAL_TOKENS)
    rng = np.random.default_rng(seed)
    tensors = _random_tensors(rng, len(tokens))

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name("lessonreel tiny random test model")
    writer.add_description("Random weights; a test fixture, not a language model.")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_vocab_size(len(tokens))
    writer.add_context_length(N_CTX)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYERS)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_rope_freq_base(10000.0)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokens.index(BOS_TOKEN))
    writer.add_eos_token_id(tokens.index(EOS_TOKEN))
    writer.add_pad_token_id(tokens.index(BOS_TOKEN))
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML_TEMPLATE)

    for name, data in tensors.items():
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
