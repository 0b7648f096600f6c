#!/usr/bin/python3
"""Builds the grammar-correction data set from WordNet 3.0's example sentences (Debian package wordnet-base).

    /usr/bin/python3 tools/gec/data.py [--wordnet /usr/share/wordnet] [--out tools/gec/data] [--seed 18]

Source: the double-quoted usage examples in the glosses of /usr/share/wordnet/data.{noun,verb,adj,adv}
(WordNet 3.0, Copyright 2006 by Princeton University, under the WordNet 3.0 licence: use, copy, modify and
distribute for any purpose without fee, keeping the copyright notice and disclaimer; see
/usr/share/doc/wordnet-base/copyright).

Writes train.jsonl, dev.jsonl, test.jsonl ({"source", "target", "errors"} per line), stats.json (counts per
split and rule) and SHA256SUMS. Deterministic for a given seed and wordnet-base version.
"""
import argparse
import hashlib
import json
import os
import random
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import inject  # noqa: E402

ALLOWED = re.compile(r"^[A-Za-z0-9 ,.?!'-]+$")
QUOTED = re.compile(r'"([^"]+)"')
PRONOUNS = {"i", "you", "he", "she", "it", "we", "they"}
FINITE_HINTS = {"is", "are", "was", "were", "has", "have", "had", "will", "would", "can", "could", "should", "may",
                "might", "must", "does", "did", "do", "isn't", "aren't", "wasn't", "weren't", "don't", "doesn't",
                "didn't", "can't", "won't"}
MIN_WORDS, MAX_WORDS, MAX_CHARS = 4, 15, 80


def extract(wordnet_dir):
    """Every quoted example in the data files' glosses, in file order."""
    out = []
    for pos in ("noun", "verb", "adj", "adv"):
        with open(os.path.join(wordnet_dir, f"data.{pos}"), encoding="latin-1") as f:
            for line in f:
                if line.startswith("  "):     # the licence header
                    continue
                gloss = line.split("|", 1)
                if len(gloss) == 2:
                    out.extend(QUOTED.findall(gloss[1]))
    return out


def clean(raw):
    """A cleaned sentence, or None when the example is a fragment, too long/short, or has unusual characters."""
    s = " ".join(raw.split())
    s = s.replace(" ,", ",")
    if not s or not ALLOWED.match(s) or "--" in s or "''" in s:
        return None
    words = s.split()
    if not (MIN_WORDS <= len(words) <= MAX_WORDS):
        return None
    first = words[0]
    lower = [w.lower().strip(",.?!") for w in words]
    # Examples that start with a capital are sentences in WordNet's style; lower-case ones are often noun
    # phrases ("the old woman's shriveled skin"), kept only when they have a subject pronoun or finite auxiliary.
    if not (first[0].isupper() or lower[0] in PRONOUNS or any(w in FINITE_HINTS for w in lower)):
        return None
    s = s[0].upper() + s[1:]
    if s[-1] not in ".?!":
        s += "."
    if s[-2] in ",.?!" or len(s) > MAX_CHARS:
        return None
    if inject.detokenize(inject.tokenize(s)) != s:
        return None
    return s


def sentences(wordnet_dir):
    seen, out = set(), []
    for raw in extract(wordnet_dir):
        s = clean(raw)
        if s is None:
            continue
        key = s.lower().rstrip(".?!")
        if key in seen:
            continue
        seen.add(key)
        out.append(s)
    return out


def n_errors(rng, correct_share):
    r = rng.random()
    if r < correct_share:
        return 0
    r = (r - correct_share) / (1 - correct_share)
    return 1 if r < 0.6 else 2 if r < 0.9 else 3


def make_examples(sents, rng, lex, variants, correct_share):
    out = []
    for s in sents:
        for _ in range(variants):
            src, errs = inject.corrupt(s, rng, lex, n_errors(rng, correct_share))
            if src == s:
                errs = []
            out.append({"source": src, "target": s, "errors": errs})
    return out


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wordnet", default="/usr/share/wordnet")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "data"))
    ap.add_argument("--seed", type=int, default=18)
    ap.add_argument("--test-sentences", type=int, default=1200)
    ap.add_argument("--dev-sentences", type=int, default=600)
    ap.add_argument("--train-variants", type=int, default=4, help="corrupted versions per training sentence")
    ap.add_argument("--correct-share", type=float, default=0.2, help="share of examples left unchanged")
    a = ap.parse_args()

    lex = inject.Lexicon.from_wordnet(a.wordnet)
    sents = sentences(a.wordnet)
    rng = random.Random(a.seed)
    rng.shuffle(sents)
    test = sents[:a.test_sentences]
    dev = sents[a.test_sentences:a.test_sentences + a.dev_sentences]
    train = sents[a.test_sentences + a.dev_sentences:]
    # Held-out means held-out: no test/dev sentence may appear in train, compared case- and punctuation-blind.
    key = lambda s: s.lower().rstrip(".?!")  # noqa: E731
    assert not ({key(s) for s in train} & {key(s) for s in test + dev})

    os.makedirs(a.out, exist_ok=True)
    splits = {
        "test": make_examples(test, random.Random(a.seed * 1000 + 1), lex, 1, a.correct_share),
        "dev": make_examples(dev, random.Random(a.seed * 1000 + 2), lex, 1, a.correct_share),
        "train": make_examples(train, random.Random(a.seed * 1000 + 3), lex, a.train_variants, a.correct_share),
    }
    stats = {"seed": a.seed, "wordnet_examples": len(extract(a.wordnet)), "clean_sentences": len(sents), "splits": {}}
    for name, rows in splits.items():
        write_jsonl(os.path.join(a.out, f"{name}.jsonl"), rows)
        counts = {}
        for r in rows:
            for e in r["errors"]:
                counts[e] = counts.get(e, 0) + 1
        stats["splits"][name] = {
            "sentences": len({r["target"] for r in rows}),
            "examples": len(rows),
            "correct_examples": sum(1 for r in rows if not r["errors"]),
            "errors": dict(sorted(counts.items())),
        }
    with open(os.path.join(a.out, "stats.json"), "w") as f:
        json.dump(stats, f, indent=2)
        f.write("\n")
    with open(os.path.join(a.out, "SHA256SUMS"), "w") as f:
        for name in ("train", "dev", "test"):
            f.write(f"{sha256(os.path.join(a.out, name + '.jsonl'))}  {name}.jsonl\n")
    print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    main()
