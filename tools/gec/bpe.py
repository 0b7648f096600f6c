#!/usr/bin/python3
"""Byte-level BPE (GPT-2 style) trainer, encoder and decoder, written for the GEC model's tokenizer.

    /usr/bin/python3 tools/gec/bpe.py train --data tools/gec/data/train.jsonl --vocab-size 4096 --out DIR
    /usr/bin/python3 tools/gec/bpe.py check --tokenizer DIR --data tools/gec/data/test.jsonl

The files are what GPT-2 ships and what FastServe's vocab.json + merges.txt loader takes
(runtime/FastServe.Runtime/Tokenization/BpeLoader.FromVocabAndMerges: GPT-2 pre-tokenization regex, GPT-2
byte-to-unicode mapping, merges by rank, special tokens from tokenizer_config.json's added_tokens_decoder,
BOS/EOS from config.json's bos_token_id/eos_token_id or tokenizer_config.json's bos_token/eos_token):

    vocab.json             token (byte-level string) -> id; ids 0..2 are <|pad|>, <|bos|>, <|eos|>, ids 3..258
                           the 256 single bytes in byte order, then one token per merge, in merge order
    merges.txt             "#version: 0.2" then one "left right" merge per line, highest priority first
    tokenizer_config.json  added_tokens_decoder (the three specials, special: true), bos/eos/pad tokens
    special_tokens_map.json

Training: the text is every training example's full formatted sequence (format.prompt + format.answer), split
by the GPT-2 regex; the most frequent adjacent pair is merged repeatedly (ties: the lexicographically smallest
pair), so the result is deterministic.
"""
import argparse
import heapq
import json
import os
import sys
from collections import Counter, defaultdict

import regex

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import format as fmt  # noqa: E402

# Exactly KnownPatterns.Gpt2 in runtime/FastServe.Runtime/Tokenization/PreTokenization.cs.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
PAT = regex.compile(GPT2_PATTERN)


def bytes_to_unicode():
    """GPT-2's reversible byte -> printable character map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


BYTE_ENCODER = bytes_to_unicode()
BYTE_DECODER = {c: b for b, c in BYTE_ENCODER.items()}


def pretokenize(text):
    """Byte-level pieces of text: each GPT-2 regex match, its UTF-8 bytes mapped to characters."""
    return ["".join(BYTE_ENCODER[b] for b in m.encode("utf-8")) for m in PAT.findall(text)]


def train(texts, vocab_size):
    """(vocab dict token -> id, merges list of (left, right)) for the given texts."""
    counts = Counter()
    for t in texts:
        counts.update(pretokenize(t))
    words = [list(w) for w in sorted(counts)]
    freq = [counts[w] for w in sorted(counts)]

    vocab = {tok: i for i, tok in enumerate(fmt.SPECIAL_TOKENS)}
    for b in range(256):
        vocab[BYTE_ENCODER[b]] = len(vocab)

    pair_count = defaultdict(int)
    where = defaultdict(set)
    for i, w in enumerate(words):
        for a, b in zip(w, w[1:]):
            pair_count[(a, b)] += freq[i]
            where[(a, b)].add(i)
    heap = [(-c, p) for p, c in pair_count.items()]
    heapq.heapify(heap)

    merges = []
    while len(vocab) < vocab_size and heap:
        negc, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) != -negc:
            continue  # stale entry; the current count was pushed when it changed
        if -negc < 2:
            break
        a, b = pair
        merged = a + b
        merges.append(pair)
        if merged not in vocab:
            vocab[merged] = len(vocab)
        changed = set()
        for i in sorted(where.pop(pair, ())):
            w = words[i]
            out, j, hit = [], 0, False
            while j < len(w):
                if j + 1 < len(w) and w[j] == a and w[j + 1] == b:
                    out.append(merged)
                    j += 2
                    hit = True
                else:
                    out.append(w[j])
                    j += 1
            if not hit:
                continue
            for p in zip(w, w[1:]):
                pair_count[p] -= freq[i]
                changed.add(p)
            for p in zip(out, out[1:]):
                pair_count[p] += freq[i]
                where[p].add(i)
                changed.add(p)
            words[i] = out
        pair_count.pop(pair, None)
        for p in changed:
            c = pair_count.get(p, 0)
            if c > 0 and p != pair:
                heapq.heappush(heap, (-c, p))
            elif c <= 0:
                pair_count.pop(p, None)
    return vocab, merges


def save(out_dir, vocab, merges, model_max_length=256):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False, indent=None)
        f.write("\n")
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
    added = {str(vocab[t]): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                             "single_word": False, "special": True} for t in fmt.SPECIAL_TOKENS}
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "bos_token": fmt.BOS,
        "eos_token": fmt.EOS,
        "pad_token": fmt.PAD,
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "model_max_length": model_max_length,
        "tokenizer_class": "GPT2Tokenizer",
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, ensure_ascii=False, indent=2)
        f.write("\n")
    with open(os.path.join(out_dir, "special_tokens_map.json"), "w", encoding="utf-8") as f:
        json.dump({"bos_token": fmt.BOS, "eos_token": fmt.EOS, "pad_token": fmt.PAD}, f, indent=2)
        f.write("\n")


TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


class Tokenizer:
    """Encoder/decoder over saved vocab.json + merges.txt; encode never adds BOS/EOS nor matches special tokens."""

    def __init__(self, directory):
        with open(os.path.join(directory, "vocab.json"), encoding="utf-8") as f:
            self.vocab = json.load(f)
        self.ranks = {}
        with open(os.path.join(directory, "merges.txt"), encoding="utf-8") as f:
            for n, line in enumerate(f):
                line = line.rstrip("\n")
                if not line or (n == 0 and line.startswith("#version")):
                    continue
                a, b = line.split(" ")
                self.ranks.setdefault((a, b), len(self.ranks))
        self.id_to_token = {i: t for t, i in self.vocab.items()}
        self.special_ids = {self.vocab[t] for t in fmt.SPECIAL_TOKENS}
        self._cache = {}

    def __len__(self):
        return len(self.vocab)

    def _bpe(self, piece):
        if piece in self._cache:
            return self._cache[piece]
        w = list(piece)
        while len(w) > 1:
            best = min(((self.ranks.get(p, 1 << 30), k) for k, p in enumerate(zip(w, w[1:]))))
            if best[0] == 1 << 30:
                break
            a, b = w[best[1]], w[best[1] + 1]
            out, j = [], 0
            while j < len(w):
                if j + 1 < len(w) and w[j] == a and w[j + 1] == b:
                    out.append(a + b)
                    j += 2
                else:
                    out.append(w[j])
                    j += 1
            w = out
        ids = [self.vocab[t] for t in w]
        self._cache[piece] = ids
        return ids

    def encode(self, text):
        ids = []
        for piece in pretokenize(text):
            ids.extend(self._bpe(piece))
        return ids

    def decode(self, ids):
        """Text of ids; special tokens decode to their text (as FastServe's TextTokenizer.Decode does)."""
        out = bytearray()
        for i in ids:
            t = self.id_to_token.get(i)
            if t is None:
                continue
            if i in self.special_ids:
                out += t.encode("utf-8")
            else:
                out += bytes(BYTE_DECODER[c] for c in t)
        return out.decode("utf-8", errors="replace")


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def example_texts(rows):
    return [fmt.prompt(r["source"]) + fmt.answer(r["target"]) for r in rows]


def round_trip_failures(tok, texts):
    return [t for t in texts if tok.decode(tok.encode(t)) != t]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--data", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "train.jsonl"))
    t.add_argument("--vocab-size", type=int, default=4096)
    t.add_argument("--out", required=True)
    c = sub.add_parser("check")
    c.add_argument("--tokenizer", required=True)
    c.add_argument("--data", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "test.jsonl"))
    a = ap.parse_args()

    if a.cmd == "train":
        vocab, merges = train(example_texts(read_jsonl(a.data)), a.vocab_size)
        save(a.out, vocab, merges)
        print(f"{len(vocab)} tokens ({len(merges)} merges) -> {a.out}")
    texts = example_texts(read_jsonl(a.data if a.cmd == "check" else
                                     os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "test.jsonl")))
    tok = Tokenizer(a.tokenizer if a.cmd == "check" else a.out)
    bad = round_trip_failures(tok, texts)
    n = sum(len(tok.encode(x)) for x in texts)
    print(f"round trip: {len(texts) - len(bad)}/{len(texts)} identical; {n / len(texts):.1f} tokens per example "
          f"(without BOS/EOS)")
    if bad:
        print("first failure:", repr(bad[0]))
        sys.exit(1)


if __name__ == "__main__":
    main()
