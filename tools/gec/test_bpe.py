"""Unit tests for the byte-level BPE (tools/gec/bpe.py): byte map, pre-tokenization, training, files, round trip."""
import json
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bpe  # noqa: E402
import format as fmt  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


class ByteLevelTests(unittest.TestCase):
    def test_byte_map_is_a_bijection_onto_printable_characters(self):
        m = bpe.bytes_to_unicode()
        self.assertEqual(len(m), 256)
        self.assertEqual(len(set(m.values())), 256)
        self.assertEqual(m[ord(" ")], "Ġ")
        self.assertEqual(m[ord("\n")], "Ċ")
        self.assertEqual(m[ord("A")], "A")

    def test_gpt2_pretokenization(self):
        self.assertEqual(bpe.pretokenize("Correct: She don't  go!!\nFixed:"),
                         ["Correct", ":", "ĠShe", "Ġdon", "'t", "Ġ", "Ġgo", "!!", "Ċ", "Fixed", ":"])
        self.assertEqual(bpe.pretokenize("ab 123"), ["ab", "Ġ123"])

    def test_pattern_is_the_runtime_one(self):
        # runtime/FastServe.Runtime/Tokenization/PreTokenization.cs, KnownPatterns.Gpt2
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "runtime", "FastServe.Runtime",
                            "Tokenization", "PreTokenization.cs")
        if not os.path.exists(path):
            self.skipTest("runtime source not present")
        with open(path, encoding="utf-8") as f:
            self.assertIn('Gpt2 = @"' + bpe.GPT2_PATTERN + '"', f.read())


class TrainTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.rows = bpe.read_jsonl(os.path.join(DATA, "dev.jsonl"))
        cls.dir = tempfile.mkdtemp(prefix="gec-bpe-test-")
        vocab, merges = bpe.train(bpe.example_texts(cls.rows), 1024)
        bpe.save(cls.dir, vocab, merges)
        cls.vocab, cls.merges = vocab, merges
        cls.tok = bpe.Tokenizer(cls.dir)

    def test_size_and_special_ids(self):
        self.assertEqual(len(self.vocab), 1024)
        self.assertEqual([self.vocab[t] for t in fmt.SPECIAL_TOKENS], [fmt.PAD_ID, fmt.BOS_ID, fmt.EOS_ID])
        self.assertEqual(sorted(self.vocab.values()), list(range(1024)))

    def test_deterministic(self):
        vocab, merges = bpe.train(bpe.example_texts(self.rows), 1024)
        self.assertEqual(merges, self.merges)
        self.assertEqual(vocab, self.vocab)

    def test_every_merge_part_and_result_is_in_the_vocabulary(self):
        for a, b in self.merges:
            self.assertIn(a, self.vocab)
            self.assertIn(b, self.vocab)
            self.assertIn(a + b, self.vocab)

    def test_files(self):
        with open(os.path.join(self.dir, "merges.txt"), encoding="utf-8") as f:
            lines = f.read().split("\n")
        self.assertEqual(lines[0], "#version: 0.2")
        self.assertTrue(all(l.count(" ") == 1 for l in lines[1:] if l))
        with open(os.path.join(self.dir, "tokenizer_config.json"), encoding="utf-8") as f:
            cfg = json.load(f)
        self.assertEqual(cfg["bos_token"], fmt.BOS)
        self.assertEqual(cfg["eos_token"], fmt.EOS)
        self.assertEqual({int(k): v["content"] for k, v in cfg["added_tokens_decoder"].items()},
                         {0: fmt.PAD, 1: fmt.BOS, 2: fmt.EOS})
        self.assertTrue(all(v["special"] for v in cfg["added_tokens_decoder"].values()))

    def test_round_trip_on_the_test_set(self):
        texts = bpe.example_texts(bpe.read_jsonl(os.path.join(DATA, "test.jsonl")))
        self.assertEqual(bpe.round_trip_failures(self.tok, texts), [])

    def test_round_trip_beyond_the_training_alphabet(self):
        for t in ["café naïve — 😀", "\t tabs\r\n", "", "<|eos|> is text here"]:
            self.assertEqual(self.tok.decode(self.tok.encode(t)), t)
        self.assertNotIn(fmt.EOS_ID, self.tok.encode("<|eos|>"))

    def test_prompt_and_answer_encode_separately_as_together(self):
        # Training encodes them apart; the runtime encodes the prompt and generates the answer.
        for r in self.rows[:300]:
            p, a = fmt.prompt(r["source"]), fmt.answer(r["target"])
            self.assertEqual(self.tok.encode(p) + self.tok.encode(a), self.tok.encode(p + a))

    def test_merges_apply_by_rank(self):
        ids = self.tok.encode(" the")
        self.assertEqual(len(ids), 1)
        self.assertEqual(self.tok.decode(ids), " the")


if __name__ == "__main__":
    unittest.main()
