#!/usr/bin/python3
"""Trains a small Llama-architecture grammar-correction model on CPU and writes a Hugging Face model directory.

    nice -n 19 /usr/bin/python3 tools/gec/train.py --config gec-small --out models/gec-small
    nice -n 19 /usr/bin/python3 tools/gec/train.py --config gec-tiny  --out models/gec-tiny
    nice -n 19 /usr/bin/python3 tools/gec/train.py --config smoke     --out /tmp/gec-smoke   # ~1 minute

The model is HF LlamaForCausalLM written in plain PyTorch (1.13, Debian's python3-torch): RMSNorm, RoPE
(rotate-half, theta in config.json), grouped-query attention, SwiGLU MLP, untied lm_head, no biases. Tensor
names and shapes are transformers' (model.embed_tokens.weight, model.layers.N.self_attn.q_proj.weight, ...,
model.norm.weight, lm_head.weight), so FastServe (and transformers) load the directory unchanged.

Training: sequences <|bos|> prompt answer <|eos|> (tools/gec/format.py), loss on the answer tokens and EOS only,
AdamW, linear warm-up then cosine decay to 10 %, gradient clipping at 1, fixed seeds, at most 2 threads. After training
the weights are rounded to BF16 (what is shipped) and every metric and reference output is computed from the
rounded weights, in F32 arithmetic, with greedy decoding and a KV cache.

Output directory: config.json, generation_config.json, model.safetensors (BF16), vocab.json, merges.txt,
tokenizer_config.json, special_tokens_map.json, MODEL_CARD.md, reference_outputs.jsonl (test set),
dev_outputs.jsonl, train_log.json.
"""
import argparse
import json
import math
import os
import random
import shutil
import struct
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bpe  # noqa: E402
import format as fmt  # noqa: E402
from data import sha256, write_jsonl  # noqa: E402  (one copy of the data files' writer and checksum)

# Model shapes and the training defaults for each. steps is what fits the time budget on the 2-core development
# machine with BF16 autocast (README.md: gec-small 2.7 steps/s, gec-tiny ~10 steps/s when the machine is not
# busy); time_budget_min bounds a slower or busier machine (the schedule then follows time).
CONFIGS = {
    "gec-small": dict(hidden=384, layers=6, heads=6, kv_heads=2, head_dim=64, intermediate=1024,
                      batch=32, lr=1.5e-3, warmup=200, steps=6000, time_budget_min=42),
    "gec-tiny": dict(hidden=192, layers=4, heads=3, kv_heads=1, head_dim=64, intermediate=512,
                     batch=32, lr=2e-3, warmup=200, steps=6000, time_budget_min=13),
    # Proves the pipeline end to end in about a minute; the model it makes is not meant to be good.
    "smoke": dict(hidden=64, layers=2, heads=2, kv_heads=1, head_dim=32, intermediate=128,
                  batch=16, lr=3e-3, warmup=5, steps=40, time_budget_min=2),
}
VOCAB_SIZE = 4096
MAX_LEN = 128            # longest training sequence (tokens incl. BOS/EOS); max_position_embeddings is twice that
ROPE_THETA = 10000.0
RMS_EPS = 1e-5
MAX_NEW_TOKENS = 64


# --- model ---------------------------------------------------------------------------------------------------

class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def rope_tables(head_dim, n, theta):
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freqs = torch.outer(torch.arange(n, dtype=torch.float32), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.h, self.kv, self.d = c["heads"], c["kv_heads"], c["head_dim"]
        self.q_proj = nn.Linear(c["hidden"], self.h * self.d, bias=False)
        self.k_proj = nn.Linear(c["hidden"], self.kv * self.d, bias=False)
        self.v_proj = nn.Linear(c["hidden"], self.kv * self.d, bias=False)
        self.o_proj = nn.Linear(self.h * self.d, c["hidden"], bias=False)

    def forward(self, x, cos, sin, cache=None):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.h, self.d).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv, self.d).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv, self.d).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if cache is not None:
            if cache[0] is not None:
                k = torch.cat((cache[0], k), dim=2)
                v = torch.cat((cache[1], v), dim=2)
            cache[0], cache[1] = k, v
        rep = self.h // self.kv
        if rep > 1:
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        s = k.shape[2]
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.d)
        if t > 1:
            # Causal over the whole key range: query i (absolute position s - t + i) sees keys 0..s - t + i.
            mask = torch.ones(t, s, dtype=torch.bool).triu(s - t + 1)
            scores = scores.masked_fill(mask, float("-inf"))
        y = scores.softmax(dim=-1) @ v
        return self.o_proj(y.transpose(1, 2).reshape(b, t, self.h * self.d))


class MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.gate_proj = nn.Linear(c["hidden"], c["intermediate"], bias=False)
        self.up_proj = nn.Linear(c["hidden"], c["intermediate"], bias=False)
        self.down_proj = nn.Linear(c["intermediate"], c["hidden"], bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.input_layernorm = RMSNorm(c["hidden"], RMS_EPS)
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c["hidden"], RMS_EPS)
        self.mlp = MLP(c)

    def forward(self, x, cos, sin, cache=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embed_tokens = nn.Embedding(VOCAB_SIZE, c["hidden"])
        self.layers = nn.ModuleList(Layer(c) for _ in range(c["layers"]))
        self.norm = RMSNorm(c["hidden"], RMS_EPS)


class LlamaForCausalLM(nn.Module):
    """Module names mirror transformers', so state_dict() keys are the checkpoint's tensor names."""

    def __init__(self, c):
        super().__init__()
        self.c = c
        self.model = Decoder(c)
        self.lm_head = nn.Linear(c["hidden"], VOCAB_SIZE, bias=False)
        cos, sin = rope_tables(c["head_dim"], 2 * MAX_LEN, ROPE_THETA)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def init_weights(self, gen):
        scaled = 0.02 / math.sqrt(2 * self.c["layers"])
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p)
            else:
                std = scaled if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
                with torch.no_grad():
                    p.copy_(torch.randn(p.shape, generator=gen) * std)

    def hidden(self, ids, start=0, caches=None):
        """Final-norm hidden states [batch, time, hidden]; caches: per layer [k, v] lists, filled and extended."""
        t = ids.shape[1]
        cos = self.rope_cos[start:start + t]
        sin = self.rope_sin[start:start + t]
        x = self.model.embed_tokens(ids)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, None if caches is None else caches[i])
        return self.model.norm(x)

    def forward(self, ids, start=0, caches=None):
        return self.lm_head(self.hidden(ids, start, caches))

    def loss(self, ids, labels):
        """Mean cross-entropy over the labelled positions; lm_head runs on those positions only."""
        h = self.hidden(ids)
        keep = labels != -100
        logits = self.lm_head(h[keep])
        return F.cross_entropy(logits.float(), labels[keep])


def count_params(m):
    return sum(p.numel() for p in m.parameters())


# --- data ----------------------------------------------------------------------------------------------------

def encode_example(tok, row):
    p = [fmt.BOS_ID] + tok.encode(fmt.prompt(row["source"]))
    a = tok.encode(fmt.answer(row["target"])) + [fmt.EOS_ID]
    return p, a


def batches(examples, batch, rng):
    """Endless batches: each epoch shuffled, then chunks of 50 batches sorted by length to cut padding."""
    order = list(range(len(examples)))
    while True:
        rng.shuffle(order)
        chunk = 50 * batch
        out = []
        for s in range(0, len(order), chunk):
            part = sorted(order[s:s + chunk], key=lambda i: len(examples[i][0]) + len(examples[i][1]))
            out.extend(part[k:k + batch] for k in range(0, len(part), batch))
        rng.shuffle(out)
        yield from out


def collate(examples, idx):
    seqs = [examples[i][0] + examples[i][1] for i in idx]
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), fmt.PAD_ID, dtype=torch.long)
    labels = torch.full((len(seqs), n), -100, dtype=torch.long)
    for r, i in enumerate(idx):
        p, a = examples[i]
        s = p + a
        ids[r, :len(s)] = torch.tensor(s)
        # labels[t] is the token predicted at position t, i.e. s[t + 1]; only the answer and EOS count.
        labels[r, len(p) - 1:len(s) - 1] = torch.tensor(a)
    return ids, labels


def lr_at(step, progress, warmup, peak):
    """Linear warm-up over the first steps, then cosine from peak to 10 % of it as progress goes 0 -> 1."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


@torch.no_grad()
def eval_loss(model, examples, batch=64, bf16=False):
    model.eval()
    total, count = 0.0, 0
    for s in range(0, len(examples), batch):
        ids, labels = collate(examples, range(s, min(len(examples), s + batch)))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            n = int((labels != -100).sum())
            total += model.loss(ids, labels).item() * n
        count += n
    model.train()
    return total / count


def cpu_has_bf16():
    """Whether oneDNN has native BF16 matrix instructions here (AVX512-BF16 or AMX); without them BF16 is emulated."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@torch.no_grad()
def greedy(model, prompts, max_new=MAX_NEW_TOKENS, batch=64):
    """Greedy continuation of each prompt (token ids, BOS included) until EOS or max_new tokens.

    Prompts of equal length are decoded together (no padding, so each row's arithmetic is that of a batch of
    one up to BLAS blocking). Returns, per prompt, (generated ids incl. EOS if reached, smallest top-1/top-2
    logit gap over the generated steps).
    """
    model.eval()
    results = [None] * len(prompts)
    by_len = {}
    for i, p in enumerate(prompts):
        by_len.setdefault(len(p), []).append(i)
    for n in sorted(by_len):
        group = by_len[n]
        for s in range(0, len(group), batch):
            idx = group[s:s + batch]
            ids = torch.tensor([prompts[i] for i in idx])
            caches = [[None, None] for _ in model.model.layers]
            logits = model(ids, 0, caches)[:, -1]
            out = [[] for _ in idx]
            margin = [float("inf")] * len(idx)
            done = [False] * len(idx)
            pos = n
            for _ in range(max_new):
                top = logits.topk(2, dim=-1)
                nxt = top.indices[:, 0]
                for r in range(len(idx)):
                    if not done[r]:
                        out[r].append(int(nxt[r]))
                        margin[r] = min(margin[r], float(top.values[r, 0] - top.values[r, 1]))
                        done[r] = int(nxt[r]) == fmt.EOS_ID
                if all(done) or pos >= model.rope_cos.shape[0]:
                    break
                logits = model(nxt.view(-1, 1), pos, caches)[:, -1]
                pos += 1
            for r, i in enumerate(idx):
                results[i] = (out[r], margin[r])
    model.train()
    return results


def decode_answer(tok, ids):
    return tok.decode([i for i in ids if i != fmt.EOS_ID])


def evaluate(model, tok, rows, encoded):
    outs = greedy(model, [p for p, _ in encoded])
    records, exact = [], 0
    for k, (row, (ids, margin)) in enumerate(zip(rows, outs)):
        text = decode_answer(tok, ids)
        ok = ids[-1:] == [fmt.EOS_ID] and text == fmt.answer(row["target"])
        exact += ok
        records.append({
            "index": k, "source": row["source"], "target": row["target"], "errors": row["errors"],
            "prompt_ids": encoded[k][0], "output_ids": ids, "text": text,
            "finish": "eos" if ids[-1:] == [fmt.EOS_ID] else "length",
            "exact_match": bool(ok), "min_top2_logit_gap": round(margin, 5),
        })
    return records, exact / max(1, len(rows))


def summarize(records):
    n = len(records)
    em = sum(r["exact_match"] for r in records)
    correct_inputs = [r for r in records if not r["errors"]]
    copy_baseline = sum(r["source"] == r["target"] for r in records)
    per_rule = {}
    for r in records:
        for e in r["errors"]:
            a = per_rule.setdefault(e, [0, 0])
            a[0] += r["exact_match"]
            a[1] += 1
    return {
        "examples": n,
        "exact_match": em / n,
        "copy_baseline_exact_match": copy_baseline / n,
        "copy_rate_on_correct_inputs": sum(r["text"] == fmt.answer(r["source"]) and r["finish"] == "eos"
                                           for r in correct_inputs) / max(1, len(correct_inputs)),
        "finished_with_eos": sum(r["finish"] == "eos" for r in records) / n,
        "exact_match_by_rule": {k: round(v[0] / v[1], 4) for k, v in sorted(per_rule.items())},
    }


# --- output --------------------------------------------------------------------------------------------------

def write_safetensors(path, tensors, metadata):
    """safetensors by hand: u64 LE header length, JSON header (space-padded to 8 bytes), raw little-endian data."""
    header, blobs, off = {}, [], 0
    for name, t in tensors.items():
        t = t.detach().contiguous()
        if t.dtype == torch.bfloat16:
            data, dtype = t.view(torch.int16).numpy().tobytes(), "BF16"
        elif t.dtype == torch.float32:
            data, dtype = t.numpy().tobytes(), "F32"
        else:
            raise ValueError(f"{name}: unsupported dtype {t.dtype}")
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def hf_config(c):
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": fmt.BOS_ID,
        "eos_token_id": fmt.EOS_ID,
        "pad_token_id": fmt.PAD_ID,
        "head_dim": c["head_dim"],
        "hidden_act": "silu",
        "hidden_size": c["hidden"],
        "initializer_range": 0.02,
        "intermediate_size": c["intermediate"],
        "max_position_embeddings": 2 * MAX_LEN,
        "mlp_bias": False,
        "num_attention_heads": c["heads"],
        "num_hidden_layers": c["layers"],
        "num_key_value_heads": c["kv_heads"],
        "pretraining_tp": 1,
        "rms_norm_eps": RMS_EPS,
        "rope_scaling": None,
        "rope_theta": ROPE_THETA,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.57.1",
        "use_cache": True,
        "vocab_size": VOCAB_SIZE,
    }


def write_json(path, obj):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def model_card(name, c, args, n_params, log, metrics, info):
    L = []
    L.append(f"# {name}: a small grammar-correction model\n")
    L.append("A Llama-architecture decoder (Hugging Face `LlamaForCausalLM` layout, BF16 weights) trained from scratch on "
             "CPU by `tools/gec/train.py` for FastServe's grammar-correction demo and evaluation harness (issue 18). "
             "It corrects one English sentence at a time; it has seen nothing but the data below.\n")
    L.append("## Prompt format\n")
    L.append("The runtime prepends `<|bos|>` (id 1). The model continues `Correct: <sentence>\\nFixed:` with "
             "` <corrected sentence>\\n` and then `<|eos|>` (id 2). Decode greedily. (tools/gec/format.py)\n")
    L.append("## Data\n")
    L.append("Example sentences from the glosses of WordNet 3.0 (Debian package `wordnet-base`, files "
             "`/usr/share/wordnet/data.{noun,verb,adj,adv}`), cleaned and split by sentence into train / dev / test, "
             "with grammatical errors injected by rules (`tools/gec/inject.py`); about 20 % of examples are left correct. "
             "WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved. Used under the WordNet 3.0 licence "
             "(use, copy, modify and distribute for any purpose without fee, keeping this notice; provided \"as is\" "
             "without warranties: see `/usr/share/doc/wordnet-base/copyright`).\n")
    L.append(f"| split | examples | file sha256 |\n| --- | --- | --- |")
    for k in ("train", "dev", "test"):
        L.append(f"| {k} | {info['split_sizes'][k]} | `{info['data_sha256'][k][:16]}…` |")
    L.append(f"\nExamples longer than {MAX_LEN} tokens dropped from train: {info['dropped_long']}.\n")
    L.append("## Model\n")
    L.append("| field | value |\n| --- | --- |")
    for k, v in [("parameters", f"{n_params:,} ({n_params / 1e6:.2f} M)"), ("hidden_size", c["hidden"]),
                 ("num_hidden_layers", c["layers"]), ("num_attention_heads / num_key_value_heads", f"{c['heads']} / {c['kv_heads']}"),
                 ("head_dim", c["head_dim"]), ("intermediate_size", c["intermediate"]), ("vocab_size", VOCAB_SIZE),
                 ("max_position_embeddings", 2 * MAX_LEN), ("rope_theta", ROPE_THETA), ("rms_norm_eps", RMS_EPS),
                 ("tie_word_embeddings", "false"), ("weights", f"BF16, {info['safetensors_bytes']:,} bytes")]:
        L.append(f"| {k} | {v} |")
    L.append("\nTokenizer: byte-level BPE (GPT-2 byte mapping and pre-tokenization regex), 4,096 tokens including "
             "`<|pad|>` = 0, `<|bos|>` = 1, `<|eos|>` = 2, trained on the training examples by `tools/gec/bpe.py`.\n")
    L.append("## Training\n")
    L.append("| hyperparameter | value |\n| --- | --- |")
    for k, v in [("optimizer", "AdamW (β 0.9 / 0.95, weight decay 0.1 on matrices)"), ("peak learning rate", args.lr),
                 ("schedule", f"linear warm-up {args.warmup} steps, cosine to 10 % over max(steps / {info['planned_steps']}, "
                              f"time / {args.time_budget_min} min)"),
                 ("batch", f"{args.batch} sequences"), ("steps run", info["steps"]),
                 ("time budget bound first", info["stopped_by_budget"]), ("gradient clip", 1.0), ("seed", args.seed),
                 ("threads", args.threads if info["steps_by_threads"] is None else
                  f"auto: {info['steps_by_threads'][1]} steps on 1, {info['steps_by_threads'][2]} on 2"), ("arithmetic", "BF16 autocast, F32 master weights" if info["bf16_autocast"] else "F32"),
                 ("training wall time", f"{info['train_seconds']:.0f} s"),
                 ("speed", f"{info['steps_per_second']:.3f} steps/s, {info['tokens_per_second']:.0f} tokens/s (padding included)"),
                 ("answer tokens seen", f"{info['answer_tokens']:,}")]:
        L.append(f"| {k} | {v} |")
    L.append("\n### Loss curve\n")
    L.append("Train loss: mean over the steps since the previous row; dev loss: teacher-forced, answer tokens, nats/token.\n")
    L.append("| step | train loss | dev loss | lr | elapsed (min) |\n| --- | --- | --- | --- | --- |")
    for r in log:
        dev = f"{r['dev_loss']:.4f}" if r.get("dev_loss") is not None else ""
        L.append(f"| {r['step']} | {r['train_loss']:.4f} | {dev} | {r['lr']:.2e} | {r['elapsed'] / 60:.1f} |")
    L.append("\n## Results\n")
    L.append("Greedy decoding with the shipped BF16 weights (F32 arithmetic). Exact match: the generated answer equals "
             "` <target>\\n` followed by EOS. Copy baseline: exact match of returning the input unchanged.\n")
    L.append("| split | examples | exact match | copy baseline | copy rate on correct inputs | ended with EOS |\n"
             "| --- | --- | --- | --- | --- | --- |")
    for k in ("dev", "test"):
        m = metrics[k]
        L.append(f"| {k} | {m['examples']} | {100 * m['exact_match']:.1f} % | {100 * m['copy_baseline_exact_match']:.1f} % | "
                 f"{100 * m['copy_rate_on_correct_inputs']:.1f} % | {100 * m['finished_with_eos']:.1f} % |")
    L.append("\nTest exact match by injected rule (examples containing that error):\n")
    L.append("| rule | exact match |\n| --- | --- |")
    for k, v in metrics["test"]["exact_match_by_rule"].items():
        L.append(f"| {k} | {100 * v:.1f} % |")
    L.append("\n`reference_outputs.jsonl` holds PyTorch's greedy output for every test example (prompt ids with BOS, "
             "output ids with the final EOS, text, and the smallest top-1/top-2 logit gap seen while decoding, which "
             "flags near-ties). FastServe's greedy output must equal it on at least 99 % of examples.\n")
    return "\n".join(L) + "\n"


# --- main ----------------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=sorted(CONFIGS), required=True)
    ap.add_argument("--out", required=True, help="model directory to write (replaced if it exists)")
    ap.add_argument("--data", default=os.path.join(HERE, "data"), help="folder with train/dev/test.jsonl")
    ap.add_argument("--tokenizer", help="reuse this tokenizer folder instead of training one (bpe.py train)")
    ap.add_argument("--steps", type=int, help="optimizer steps the schedule is planned for")
    ap.add_argument("--time-budget-min", type=float,
                    help="training time limit in minutes (evaluation excluded; 0 = none); when it binds first, the "
                         "cosine schedule follows elapsed time instead of steps")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--warmup", type=int)
    ap.add_argument("--seed", type=int, default=18)
    ap.add_argument("--threads", default="auto",
                    help="compute threads, or 'auto': every 200 steps time 5 steps on 1 thread and 5 on 2 and keep the "
                         "faster (on a shared machine 2 threads can be 2-8x slower than 1; see README.md)")
    ap.add_argument("--bf16", choices=["auto", "on", "off"], default="auto",
                    help="BF16 autocast for training (F32 master weights); auto = on where the CPU has AVX512-BF16/AMX")
    ap.add_argument("--eval-limit", type=int, default=0, help="greedy-decode only the first N dev/test examples (0 = all)")
    a = ap.parse_args()
    c = dict(CONFIGS[a.config])
    for k in ("steps", "batch", "lr", "warmup", "time_budget_min"):
        if getattr(a, k) is None:
            setattr(a, k, c[k])

    auto_threads = a.threads == "auto"
    torch.set_num_threads(2 if auto_threads else int(a.threads))
    bf16 = a.bf16 == "on" or (a.bf16 == "auto" and cpu_has_bf16())
    torch.manual_seed(a.seed)
    rng = random.Random(a.seed)
    t_start = time.time()

    train_path = os.path.join(a.data, "train.jsonl")
    if not os.path.exists(train_path):
        sys.exit(f"{train_path} is missing: run /usr/bin/python3 tools/gec/data.py first")
    rows = {k: bpe.read_jsonl(os.path.join(a.data, f"{k}.jsonl")) for k in ("train", "dev", "test")}
    if a.eval_limit:
        rows["dev"], rows["test"] = rows["dev"][:a.eval_limit], rows["test"][:a.eval_limit]

    out = os.path.abspath(a.out)
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)
    if a.tokenizer:
        for f in bpe.TOKENIZER_FILES:
            shutil.copy(os.path.join(a.tokenizer, f), out)
    else:
        vocab, merges = bpe.train(bpe.example_texts(rows["train"]), VOCAB_SIZE)
        bpe.save(out, vocab, merges, model_max_length=2 * MAX_LEN)
    tok = bpe.Tokenizer(out)
    assert len(tok) == VOCAB_SIZE, len(tok)
    bad = bpe.round_trip_failures(tok, bpe.example_texts(rows["test"]))
    assert not bad, f"tokenizer does not round-trip: {bad[0]!r}"

    enc = {k: [encode_example(tok, r) for r in v] for k, v in rows.items()}
    train = [e for e in enc["train"] if len(e[0]) + len(e[1]) <= MAX_LEN]
    dropped = len(enc["train"]) - len(train)
    print(f"[{a.config}] data: {len(train)} train ({dropped} too long), {len(enc['dev'])} dev, {len(enc['test'])} test; "
          f"tokenizer {len(tok)} tokens", flush=True)

    model = LlamaForCausalLM(c)
    model.init_weights(torch.Generator().manual_seed(a.seed))
    n_params = count_params(model)
    print(f"[{a.config}] {n_params:,} parameters; {'BF16 autocast' if bf16 else 'F32'} training", flush=True)

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8)

    # The schedule runs on progress = max(steps done / --steps, time spent / --time-budget-min): whichever runs out
    # first ends the run with the learning rate fully decayed. On a machine fast enough for --steps in the budget
    # (the defaults are set so) the run is step-bound and exactly reproducible.
    budget_s = a.time_budget_min * 60 if a.time_budget_min > 0 else float("inf")
    log, window, tokens, answer_tokens = [], [], 0, 0
    stream = batches(train, a.batch, rng)
    t_train = time.time()
    step, progress, next_log, eval_s = 0, 0.0, 1 / 15, 0.0
    probe, best_threads, thread_steps = [0.0, 0.0], 2, {1: 0, 2: 0}
    while progress < 1.0:
        if auto_threads:
            cycle = step % 200
            n_threads = 1 if cycle < 5 else 2 if cycle < 10 else best_threads
            torch.set_num_threads(n_threads)
            thread_steps[n_threads] += 1
            t_step = time.time()
        ids, labels = collate(train, next(stream))
        lr = lr_at(step, progress, a.warmup, a.lr)
        for g in opt.param_groups:
            g["lr"] = lr
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model.loss(ids, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if auto_threads and cycle < 10:
            probe[cycle // 5] += time.time() - t_step
            if cycle == 9:
                best_threads = 1 if probe[0] < probe[1] else 2
                probe = [0.0, 0.0]
        step += 1
        window.append(loss.item())
        tokens += ids.numel()
        answer_tokens += int((labels != -100).sum())
        elapsed = time.time() - t_train - eval_s   # training time: the dev-loss passes do not count
        progress = max(step / a.steps, elapsed / budget_s)
        if progress >= next_log or progress >= 1.0 or step == 1:
            dev = None
            if progress >= next_log or progress >= 1.0:
                t_dev = time.time()
                dev = eval_loss(model, enc["dev"][:300], bf16=bf16)
                eval_s += time.time() - t_dev
                while next_log <= progress:
                    next_log += 1 / 15
            log.append({"step": step, "train_loss": sum(window) / len(window), "dev_loss": dev, "lr": lr,
                        "elapsed": time.time() - t_train})
            window = []
            print(f"[{a.config}] step {step}/{a.steps} loss {log[-1]['train_loss']:.4f}"
                  + (f" dev {dev:.4f}" if dev is not None else "") + f" lr {lr:.2e} {elapsed:.0f}s", flush=True)
    stopped_by_budget = step < a.steps
    if auto_threads:
        print(f"[{a.config}] steps on 1 / 2 threads: {thread_steps[1]} / {thread_steps[2]}", flush=True)
    train_s = time.time() - t_train

    # What is shipped, and what every number below is computed from: the weights rounded to BF16.
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    state = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    st = os.path.join(out, "model.safetensors")
    write_safetensors(st, state, {"format": "pt", "fastserve_gec_config": a.config, "seed": str(a.seed)})
    write_json(os.path.join(out, "config.json"), hf_config(c))
    write_json(os.path.join(out, "generation_config.json"), {
        "bos_token_id": fmt.BOS_ID, "eos_token_id": fmt.EOS_ID, "pad_token_id": fmt.PAD_ID, "do_sample": False,
        "max_new_tokens": MAX_NEW_TOKENS, "transformers_version": "4.57.1"})

    t_eval = time.time()
    metrics, records = {}, {}
    for k in ("dev", "test"):
        records[k], _ = evaluate(model, tok, rows[k], enc[k])
        metrics[k] = summarize(records[k])
        metrics[k]["dev_loss" if k == "dev" else "test_loss"] = eval_loss(model, enc[k])
        print(f"[{a.config}] {k}: exact match {100 * metrics[k]['exact_match']:.1f} % "
              f"(copy baseline {100 * metrics[k]['copy_baseline_exact_match']:.1f} %)", flush=True)
    eval_s = time.time() - t_eval
    write_jsonl(os.path.join(out, "reference_outputs.jsonl"), records["test"])
    write_jsonl(os.path.join(out, "dev_outputs.jsonl"), records["dev"])

    info = {
        "config": a.config, "shape": c, "parameters": n_params, "seed": a.seed, "threads": a.threads, "steps_by_threads": thread_steps if auto_threads else None,
        "steps": step, "planned_steps": a.steps, "stopped_by_budget": stopped_by_budget,
        "batch": a.batch, "lr": a.lr, "warmup": a.warmup, "time_budget_min": a.time_budget_min,
        "bf16_autocast": bf16, "train_seconds": train_s, "eval_seconds": eval_s, "total_seconds": time.time() - t_start,
        "steps_per_second": step / train_s, "tokens_per_second": tokens / train_s, "answer_tokens": answer_tokens,
        "split_sizes": {k: len(v) for k, v in rows.items()}, "dropped_long": dropped,
        "data_sha256": {k: sha256(os.path.join(a.data, f"{k}.jsonl")) for k in ("train", "dev", "test")},
        "safetensors_bytes": os.path.getsize(st), "torch": torch.__version__, "metrics": metrics, "log": log,
    }
    write_json(os.path.join(out, "train_log.json"), info)
    with open(os.path.join(out, "MODEL_CARD.md"), "w", encoding="utf-8") as f:
        f.write(model_card(a.config, c, a, n_params, log, metrics, info))
    print(f"[{a.config}] wrote {out}: train {train_s:.0f}s ({step / train_s:.3f} steps/s, {tokens / train_s:.0f} tok/s), "
          f"eval {eval_s:.0f}s", flush=True)


if __name__ == "__main__":
    main()
