#!/usr/bin/python3
"""Checks FastServe's greedy output against PyTorch's reference_outputs.jsonl for a trained model directory.

    /usr/bin/python3 tools/gec/compare.py --model DIR [--fastserve "dotnet runtime/FastServe.Cli/bin/Release/net10.0/fastserve.dll"]
        [--limit N] [-- extra fastserve batch options, e.g. --quantize fp8 --kv-dtype bf16]

Runs `fastserve batch` twice over the test prompts: once from the prompt text (so FastServe's tokenizer is
used) and once from the reference prompt ids; reports how often the prompt token counts agree and how often the
generated ids equal PyTorch's, and lists each difference with the reference's smallest top-1/top-2 logit gap
(a near-tie explains a flip). Exit status 1 when fewer than 99 % agree.
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile

DEFAULT_CLI = "dotnet runtime/FastServe.Cli/bin/Release/net10.0/fastserve.dll"


def run_batch(cli, model, requests, extra):
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = os.path.join(tmp, "in.jsonl"), os.path.join(tmp, "out.jsonl")
        with open(inp, "w", encoding="utf-8") as f:
            for r in requests:
                f.write(json.dumps(r) + "\n")
        cmd = shlex.split(cli) + ["batch", "--model", model, "--input", inp, "--output", out, "--json"] + extra
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        with open(out, encoding="utf-8") as f:
            return [json.loads(line) for line in f]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--fastserve", default=DEFAULT_CLI)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("extra", nargs="*", help="options passed on to fastserve batch")
    a = ap.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import format as fmt

    with open(os.path.join(a.model, "reference_outputs.jsonl"), encoding="utf-8") as f:
        ref = [json.loads(line) for line in f]
    if a.limit:
        ref = ref[:a.limit]
    max_new = max(len(r["output_ids"]) for r in ref)
    common = {"max_tokens": max_new, "temperature": 0}
    by_text = run_batch(a.fastserve, a.model, [dict(common, prompt=fmt.prompt(r["source"])) for r in ref], a.extra)
    by_ids = run_batch(a.fastserve, a.model, [dict(common, prompt_ids=r["prompt_ids"]) for r in ref], a.extra)

    def ids(res):
        t = list(res.get("token_ids", []))
        return t

    prompt_ok = sum(t.get("prompt_tokens") == len(r["prompt_ids"]) for t, r in zip(by_text, ref))
    same, diffs = 0, []
    for k, (r, t, i) in enumerate(zip(ref, by_text, by_ids)):
        want = r["output_ids"]
        got_t, got_i = ids(t), ids(i)
        # FastServe may leave the final EOS out of token_ids; compare without it.
        strip = lambda x: x[:-1] if x[-1:] == [fmt.EOS_ID] else x  # noqa: E731
        if strip(got_t) == strip(want) and strip(got_i) == strip(want):
            same += 1
        else:
            diffs.append({"index": k, "gap": r["min_top2_logit_gap"], "want": want, "text_prompt": got_t, "id_prompt": got_i})
    n = len(ref)
    print(json.dumps({"examples": n, "prompt_token_count_agree": prompt_ok, "greedy_agree": same,
                      "greedy_agree_share": same / n, "differences": diffs[:20]}, indent=1))
    sys.exit(0 if same >= 0.99 * n else 1)


if __name__ == "__main__":
    main()
