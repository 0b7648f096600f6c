"""Unit tests for the error-injection rules (tools/gec/inject.py) and the data cleaning (data.py)."""
import os
import random
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data  # noqa: E402
import format as fmt  # noqa: E402
import inject  # noqa: E402

LEX = inject.Lexicon(
    verbs=["go", "take", "walk", "like", "watch", "carry", "stop", "be", "have", "do", "see", "run", "smile"],
    irregular={"went": "go", "gone": "go", "took": "take", "taken": "take", "saw": "see", "seen": "see",
               "ran": "run", "was": "be", "were": "be", "had": "have", "did": "do", "done": "do"},
    words=["apple", "house", "receive", "friend", "garden", "table", "yesterday", "quickly", "rapid"],
)


def apply(rule, sentence, seed=0):
    out = inject.RULES[rule](inject.tokenize(sentence), random.Random(seed), LEX)
    return None if out is None else inject.detokenize(out)


def all_outputs(rule, sentence, seeds=40):
    return {apply(rule, sentence, s) for s in range(seeds)}


class TokenizeTests(unittest.TestCase):
    def test_round_trip(self):
        for s in ["She doesn't like apples.", "Is it well-known, or not?", "He's 7 years old!", "The cat's toy."]:
            self.assertEqual(inject.detokenize(inject.tokenize(s)), s)


class RuleTests(unittest.TestCase):
    def test_subject_verb_aux_swap(self):
        self.assertEqual(apply("subject_verb", "The dogs are hungry."), "The dogs is hungry.")
        self.assertEqual(apply("subject_verb", "She doesn't like it."), "She don't like it.")

    def test_subject_verb_third_person(self):
        self.assertEqual(apply("subject_verb", "He likes apples."), "He like apples.")
        self.assertEqual(apply("subject_verb", "She watches birds."), "She watch birds.")
        self.assertEqual(apply("subject_verb", "They carry bags."), "They carries bags.")

    def test_article_form_flips_a_an(self):
        self.assertEqual(apply("article_form", "I ate an apple."), "I ate a apple.")
        self.assertEqual(apply("article_form", "I saw a house."), "I saw an house.")

    def test_article_missing_never_at_start(self):
        self.assertEqual(all_outputs("article_missing", "The dog saw the cat."), {"The dog saw cat."})
        self.assertIsNone(apply("article_missing", "Dogs bark."))

    def test_article_extra_inserts_one_article(self):
        for out in all_outputs("article_extra", "She likes apples in summer."):
            self.assertEqual(len(inject.tokenize(out)), len(inject.tokenize("She likes apples in summer.")) + 1)
            self.assertTrue(" the " in out or " a " in out)

    def test_article_extra_skips_inflected_verbs(self):
        self.assertNotIn("She the walked home.", all_outputs("article_extra", "She walked home."))

    def test_article_choice(self):
        self.assertEqual(apply("article_choice", "He took the apple."), "He took an apple.")
        self.assertEqual(apply("article_choice", "He took a pear."), "He took the pear.")

    def test_confusions_keep_case(self):
        self.assertEqual(all_outputs("their_there", "Their house is big."), {"There house is big.", "They're house is big."})
        self.assertEqual(apply("its_its", "The dog wagged its tail."), "The dog wagged it's tail.")
        self.assertEqual(apply("your_youre", "You're late."), "Your late.")

    def test_confusions_from_uncontracted_pairs(self):
        self.assertEqual(apply("its_its", "It is late."), "Its late.")
        self.assertEqual(apply("your_youre", "I think you are right."), "I think your right.")
        self.assertEqual(all_outputs("their_there", "They are here."), {"Their here.", "There here."})
        self.assertIsNone(apply("its_its", "He is late."))

    def test_verb_tense_after_modal_and_perfect(self):
        self.assertIn(apply("verb_tense", "I will go home."), {"I will went home.", "I will gone home."})
        self.assertEqual(apply("verb_tense", "She wants to walk."), "She wants to walked.")
        self.assertEqual(apply("verb_tense", "He has taken it."), "He has take it.")
        self.assertIsNone(apply("verb_tense", "He took it."))

    def test_doubled_word(self):
        out = apply("doubled_word", "Birds sing loudly.")
        self.assertIn(out, {"Birds birds sing loudly.", "Birds sing sing loudly.", "Birds sing loudly loudly."})

    def test_preposition(self):
        out = apply("preposition", "He sat on the table.")
        self.assertRegex(out, r"^He sat (in|at|to|for|of|with|from|by|into|about) the table\.$")

    def test_capitalization(self):
        outs = all_outputs("capitalization", "The garden is green.")
        self.assertIn("the garden is green.", outs)
        self.assertIn("The Garden is green.", outs)
        self.assertIsNone(apply("capitalization", "I am."))

    def test_final_punctuation(self):
        self.assertEqual(apply("final_punctuation", "Is it late?"), "Is it late")
        self.assertIsNone(apply("final_punctuation", "No stop"))

    def test_spelling_changes_one_word_into_a_non_word(self):
        for out in all_outputs("spelling", "We receive the garden."):
            a, b = inject.tokenize("We receive the garden."), inject.tokenize(out)
            diff = [(x, y) for x, y in zip(a, b) if x != y]
            self.assertEqual(len(a), len(b))
            self.assertEqual(len(diff), 1)
            self.assertNotIn(diff[0][1], LEX.words)


class CorruptTests(unittest.TestCase):
    def test_zero_errors_is_identity(self):
        self.assertEqual(inject.corrupt("He likes apples.", random.Random(1), LEX, 0), ("He likes apples.", []))

    def test_named_rules_are_distinct_and_change_the_sentence(self):
        rng = random.Random(7)
        for _ in range(200):
            src, errs = inject.corrupt("The dogs are in the garden, and they like their house.", rng, LEX, 3)
            self.assertTrue(1 <= len(errs) <= 3)
            self.assertEqual(len(set(errs)), len(errs))
            self.assertNotEqual(src, "The dogs are in the garden, and they like their house.")
            self.assertTrue(set(errs) <= set(inject.RULES))

    def test_final_punctuation_only_last(self):
        rng = random.Random(3)
        for _ in range(300):
            _, errs = inject.corrupt("The dogs are in the garden.", rng, LEX, 3)
            if "final_punctuation" in errs:
                self.assertEqual(errs[-1], "final_punctuation")


class DataTests(unittest.TestCase):
    def test_clean(self):
        self.assertEqual(data.clean("they went hungry that day"), "They went hungry that day.")
        self.assertEqual(data.clean("The children went hungry that day"), "The children went hungry that day.")
        self.assertIsNone(data.clean("the old woman's shriveled skin"))     # noun phrase
        self.assertIsNone(data.clean("go home"))                            # too short
        self.assertIsNone(data.clean("He said (quietly) no more"))          # unusual characters

    def test_prompt_format(self):
        self.assertEqual(fmt.prompt("She don't like apples."), "Correct: She don't like apples.\nFixed:")
        self.assertEqual(fmt.answer("She doesn't like apples."), " She doesn't like apples.\n")
        self.assertEqual(fmt.parse_answer(" She doesn't like apples.\n"), "She doesn't like apples.")

    def test_shipped_test_set_is_held_out(self):
        d = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
        with open(os.path.join(d, "test.jsonl"), encoding="utf-8") as f:
            test = f.readlines()
        self.assertGreaterEqual(len(test), 1000)
        train_path = os.path.join(d, "train.jsonl")
        if os.path.exists(train_path):
            import json
            key = lambda s: s.lower().rstrip(".?!")  # noqa: E731
            with open(train_path, encoding="utf-8") as f:
                train = {key(json.loads(l)["target"]) for l in f}
            self.assertFalse(train & {key(json.loads(l)["target"]) for l in test})


if __name__ == "__main__":
    unittest.main()
