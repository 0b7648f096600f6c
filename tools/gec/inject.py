"""Rule-based grammatical error injection for the GEC data set.

A sentence is split into word and punctuation tokens (tokenize / detokenize round-trip exactly on the
cleaned sentences data.py keeps). Each rule takes the token list, a random.Random and a Lexicon and
returns a new token list, or None when the rule does not apply to the sentence. corrupt() applies one
to three rules and names them; the rule names are the "errors" field of the data set.
"""
import random
import re

TOKEN_RE = re.compile(r"[A-Za-z0-9]+(?:['-][A-Za-z0-9]+)*|[^\sA-Za-z0-9]")
NO_SPACE_BEFORE = {",", ".", "?", "!"}


def tokenize(sentence):
    return TOKEN_RE.findall(sentence)


def detokenize(tokens):
    out = ""
    for i, t in enumerate(tokens):
        if i > 0 and t not in NO_SPACE_BEFORE:
            out += " "
        out += t
    return out


class Lexicon:
    """Word lists the rules consult: verb base forms, irregular inflections (form -> base), all known words."""

    def __init__(self, verbs, irregular, words):
        self.verbs = set(verbs)
        self.irregular = dict(irregular)           # inflected form -> base
        self.words = set(words) | self.verbs | set(self.irregular)
        self.forms = {}                            # base -> sorted inflected forms (no -ing forms)
        for form, base in sorted(self.irregular.items()):
            if not form.endswith("ing"):
                self.forms.setdefault(base, []).append(form)

    @staticmethod
    def from_wordnet(root="/usr/share/wordnet"):
        def lemmas(path):
            out = []
            with open(path, encoding="latin-1") as f:
                for line in f:
                    if line.startswith(" "):
                        continue
                    w = line.split(" ", 1)[0]
                    if w.isalpha() and w.islower():
                        out.append(w)
            return out

        verbs = lemmas(f"{root}/index.verb")
        words = set(verbs)
        for pos in ("noun", "adj", "adv"):
            words.update(lemmas(f"{root}/index.{pos}"))
        irregular = {}
        for pos in ("verb", "noun", "adj", "adv"):
            with open(f"{root}/{pos}.exc", encoding="latin-1") as f:
                for line in f:
                    parts = line.split()
                    if len(parts) >= 2 and parts[0].isalpha() and parts[1].isalpha():
                        words.add(parts[0])
                        if pos == "verb":
                            irregular.setdefault(parts[0], parts[1])
        return Lexicon(verbs, irregular, words)

    def base_of(self, word):
        """Base form of an inflected verb (irregular or regular -ed/-s), or None."""
        w = word.lower()
        if w in self.irregular and not w.endswith("ing"):
            return self.irregular[w]
        if w.endswith("ed") and len(w) > 4:
            cands = [w[:-2], w[:-1]]
            if len(w) > 5 and w[-3] == w[-4]:
                cands.append(w[:-3])
            if w.endswith("ied"):
                cands.append(w[:-3] + "y")
            for c in cands:
                if c in self.verbs:
                    return c
        return None


def third_person(verb):
    if re.search(r"(s|sh|ch|x|z|o)$", verb):
        return verb + "es"
    if re.search(r"[^aeiou]y$", verb):
        return verb[:-1] + "ies"
    return verb + "s"


def strip_third_person(verb):
    """Candidate base forms of a third-person singular verb, most likely first."""
    c = []
    if verb.endswith("ies"):
        c.append(verb[:-3] + "y")
    if verb.endswith("es"):
        c.append(verb[:-2])
    if verb.endswith("s") and not verb.endswith("ss"):
        c.append(verb[:-1])
    return c


def past_form(base, lex):
    forms = lex.forms.get(base)
    if forms:
        return forms[0]
    if base.endswith("e"):
        return base + "d"
    if re.search(r"[^aeiou]y$", base):
        return base[:-1] + "ied"
    return base + "ed"


def match_case(new, old):
    """new, with old's capitalisation of the first letter."""
    if old[:1].isupper():
        return new[:1].upper() + new[1:]
    return new


def _is_word(t):
    return t[:1].isalpha()


def _positions(tokens, pred):
    return [i for i, t in enumerate(tokens) if pred(i, t)]


def _replace(tokens, i, new):
    out = list(tokens)
    out[i] = match_case(new, tokens[i])
    return out


# --- rules ------------------------------------------------------------------------------------------------

AGREEMENT_SWAPS = {
    "is": "are", "are": "is", "was": "were", "were": "was", "has": "have", "have": "has",
    "does": "do", "do": "does", "doesn't": "don't", "don't": "doesn't", "isn't": "aren't",
    "aren't": "isn't", "wasn't": "weren't", "weren't": "wasn't",
}
SINGULAR_SUBJECTS = {"he", "she", "it"}
PLURAL_SUBJECTS = {"i", "you", "we", "they"}
AUXILIARIES = set(AGREEMENT_SWAPS) | {"be", "been", "being", "am", "had", "did", "will", "would", "can", "could",
                                      "shall", "should", "may", "might", "must"}


def subject_verb(tokens, rng, lex):
    cands = []
    for i, t in enumerate(tokens):
        w = t.lower()
        if w in AGREEMENT_SWAPS and not (w == "have" and i > 0 and tokens[i - 1].lower() in MODALS | {"to"}):
            cands.append((i, AGREEMENT_SWAPS[w]))
        if i + 1 < len(tokens):
            nxt = tokens[i + 1]
            n = nxt.lower()
            if w in SINGULAR_SUBJECTS and n not in AUXILIARIES and n.endswith("s"):
                for base in strip_third_person(n):
                    if base in lex.verbs:
                        cands.append((i + 1, base))
                        break
            elif w in PLURAL_SUBJECTS and n in lex.verbs and n not in AUXILIARIES and nxt.islower():
                cands.append((i + 1, third_person(n)))
    if not cands:
        return None
    i, new = rng.choice(cands)
    return _replace(tokens, i, new)


VOWEL_SOUND = re.compile(r"^[aeiouAEIOU]")


def article_form(tokens, rng, lex):
    pos = _positions(tokens, lambda i, t: t.lower() in ("a", "an") and i + 1 < len(tokens) and _is_word(tokens[i + 1]))
    if not pos:
        return None
    i = rng.choice(pos)
    return _replace(tokens, i, "an" if tokens[i].lower() == "a" else "a")


def article_missing(tokens, rng, lex):
    pos = _positions(tokens, lambda i, t: i > 0 and t.lower() in ("a", "an", "the"))
    if not pos:
        return None
    i = rng.choice(pos)
    return tokens[:i] + tokens[i + 1:]


DETERMINERS = {"a", "an", "the", "this", "that", "these", "those", "my", "your", "his", "her", "its", "our",
               "their", "some", "any", "no", "every", "each", "all", "many", "much", "more", "most", "few",
               "several", "one", "two", "three", "another", "other", "such", "what", "which", "whose"}
FUNCTION_WORDS = DETERMINERS | AUXILIARIES | SINGULAR_SUBJECTS | PLURAL_SUBJECTS | {
    "and", "or", "but", "not", "to", "of", "in", "on", "at", "for", "with", "from", "by", "as", "than", "so",
    "if", "when", "then", "there", "here", "very", "too", "me", "him", "us", "them", "who", "how", "why",
    "where", "up", "down", "out", "off", "over", "into", "about", "after", "before", "under", "again"}


def article_extra(tokens, rng, lex):
    # Before a content word that is not an inflected verb or an adverb: 'She likes the apples', not 'She the liked'.
    pos = _positions(tokens, lambda i, t: i > 0 and t.isalpha() and t.islower() and t not in FUNCTION_WORDS
                     and lex.base_of(t) is None and not t.endswith("ly")
                     and tokens[i - 1].lower() not in DETERMINERS and not tokens[i - 1].endswith("'s"))
    if not pos:
        return None
    i = rng.choice(pos)
    return tokens[:i] + [rng.choice(["the", "the", "a"])] + tokens[i:]


def article_choice(tokens, rng, lex):
    pos = _positions(tokens, lambda i, t: t.lower() in ("a", "an", "the") and i + 1 < len(tokens) and _is_word(tokens[i + 1]))
    if not pos:
        return None
    i = rng.choice(pos)
    if tokens[i].lower() == "the":
        new = "an" if VOWEL_SOUND.match(tokens[i + 1]) else "a"
    else:
        new = "the"
    return _replace(tokens, i, new)


def _confusion(group, expanded, wrong_for_expanded):
    """Swap one word of group for another; or write the uncontracted pair (e.g. 'it is') as a wrong word of group.

    WordNet's examples rarely contain the contractions themselves, so the expanded forms widen the rule's reach.
    """
    def rule(tokens, rng, lex):
        cands = [(i, 1, g) for i, t in enumerate(tokens) if t.lower() in group
                 for g in group if g != t.lower()]
        cands += [(i, 2, g) for i in range(len(tokens) - 1)
                  if (tokens[i].lower(), tokens[i + 1].lower()) == expanded for g in wrong_for_expanded]
        if not cands:
            return None
        i, n, g = rng.choice(cands)
        return tokens[:i] + [match_case(g, tokens[i])] + tokens[i + n:]
    return rule


their_there = _confusion(("their", "there", "they're"), ("they", "are"), ("their", "there"))
its_its = _confusion(("its", "it's"), ("it", "is"), ("its",))
your_youre = _confusion(("your", "you're"), ("you", "are"), ("your",))

MODALS = {"will", "would", "can", "could", "shall", "should", "may", "might", "must", "did", "didn't", "does",
          "doesn't", "do", "don't", "won't", "can't", "couldn't", "wouldn't", "shouldn't"}
PERFECT = {"has", "have", "had", "hasn't", "haven't", "hadn't"}


def verb_tense(tokens, rng, lex):
    """Verb forms that the context rules out: 'will went', 'to took', 'has take', 'did walked'."""
    cands = []
    for i in range(1, len(tokens)):
        prev, w = tokens[i - 1].lower(), tokens[i]
        if not w.isalpha() or not w.islower():
            continue
        if (prev in MODALS or prev == "to") and w in lex.verbs and w not in AUXILIARIES:
            cands.append((i, past_form(w, lex)))
        elif prev in PERFECT and w not in AUXILIARIES:
            base = lex.base_of(w)
            if base and base != w:
                cands.append((i, base))
    if not cands:
        return None
    i, new = rng.choice(cands)
    return _replace(tokens, i, new)


def doubled_word(tokens, rng, lex):
    pos = _positions(tokens, lambda i, t: _is_word(t))
    if not pos:
        return None
    i = rng.choice(pos)
    return tokens[:i + 1] + [tokens[i].lower() if i == 0 else tokens[i]] + tokens[i + 1:]


PREPOSITIONS = ["in", "on", "at", "to", "for", "of", "with", "from", "by", "into", "about"]


def preposition(tokens, rng, lex):
    pos = _positions(tokens, lambda i, t: t.lower() in PREPOSITIONS)
    if not pos:
        return None
    i = rng.choice(pos)
    return _replace(tokens, i, rng.choice([p for p in PREPOSITIONS if p != tokens[i].lower()]))


def capitalization(tokens, rng, lex):
    first = tokens[0] if tokens else ""
    opts = []
    if _is_word(first) and first[0].isupper() and first != "I" and not first.isupper():
        opts.append("first")
    mids = _positions(tokens, lambda i, t: i > 0 and t.isalpha() and t.islower() and len(t) >= 3)
    if mids:
        opts.append("mid")
    if not opts:
        return None
    if rng.choice(opts) == "first":
        return [first[0].lower() + first[1:]] + tokens[1:]
    i = rng.choice(mids)
    out = list(tokens)
    out[i] = tokens[i].capitalize()
    return out


def final_punctuation(tokens, rng, lex):
    if len(tokens) < 2 or tokens[-1] not in (".", "?", "!"):
        return None
    return tokens[:-1]


MISSPELLINGS = {
    "receive": "recieve", "believe": "beleive", "separate": "seperate", "definitely": "definately",
    "occurred": "occured", "until": "untill", "which": "wich", "because": "becuase", "friend": "freind",
    "beginning": "begining", "government": "goverment", "necessary": "neccessary", "tomorrow": "tommorow",
    "different": "diffrent", "really": "realy", "would": "woud", "their": "thier", "writing": "writting",
    "environment": "enviroment", "usually": "usualy", "finally": "finaly", "always": "allways",
}


def spelling(tokens, rng, lex):
    pos = _positions(tokens, lambda i, t: t.isalpha() and t.islower() and (len(t) >= 5 or t in MISSPELLINGS))
    if not pos:
        return None
    for _ in range(8):
        i = rng.choice(pos)
        w = tokens[i]
        if w in MISSPELLINGS and rng.random() < 0.7:
            new = MISSPELLINGS[w]
        else:
            k = rng.randrange(1, len(w) - 1)
            kind = rng.choice(["swap", "drop", "double"])
            if kind == "swap":
                new = w[:k] + w[k + 1] + w[k] + w[k + 2:]
            elif kind == "drop":
                new = w[:k] + w[k + 1:]
            else:
                new = w[:k] + w[k] + w[k:]
        if new != w and new not in lex.words:
            out = list(tokens)
            out[i] = new
            return out
    return None


RULES = {
    "subject_verb": subject_verb,
    "article_form": article_form,
    "article_missing": article_missing,
    "article_extra": article_extra,
    "article_choice": article_choice,
    "their_there": their_there,
    "its_its": its_its,
    "your_youre": your_youre,
    "verb_tense": verb_tense,
    "doubled_word": doubled_word,
    "preposition": preposition,
    "capitalization": capitalization,
    "final_punctuation": final_punctuation,
    "spelling": spelling,
}

# Relative weights when picking rules: the rare-but-targeted confusions are always taken when they apply.
WEIGHTS = {
    "subject_verb": 3, "article_form": 1, "article_missing": 2, "article_extra": 1, "article_choice": 1,
    "their_there": 6, "its_its": 6, "your_youre": 6, "verb_tense": 3, "doubled_word": 1, "preposition": 2,
    "capitalization": 1.5, "final_punctuation": 1.5, "spelling": 2,
}


def corrupt(sentence, rng, lex, n_errors):
    """(source, [rule names]) with up to n_errors rules applied to sentence; n_errors 0 returns it unchanged.

    Rules are drawn without replacement, weighted, among those that change the sentence; final_punctuation is
    applied last so other rules still see the sentence's end. Returns fewer errors when fewer rules apply.
    """
    tokens = tokenize(sentence)
    applied = []
    names = sorted(RULES)
    while len(applied) < n_errors:
        avail = [n for n in names if n not in applied and not (n == "final_punctuation" and len(applied) + 1 < n_errors)]
        picked = None
        while avail:
            name = rng.choices(avail, weights=[WEIGHTS[n] for n in avail])[0]
            out = RULES[name](tokens, rng, lex)
            if out is not None and out != tokens:
                picked = name
                tokens = out
                break
            avail.remove(name)
        if picked is None:
            break
        applied.append(picked)
    return detokenize(tokens), applied
