"""Sentence pairs: WordNet 3.0 (gloss → example sentence) of the same synset.

Source: the Debian package ``wordnet-base`` (WordNet 3.0 database files ``data.noun``,
``data.verb``, ``data.adj``, ``data.adv`` under ``/usr/share/wordnet``; install with
``apt-get install wordnet-base``). A synset's gloss is ``definition; "example"; "example"``.

Rules:

* query = the definition (the gloss before its first quoted example), target = the synset's
  first example sentence; one pair per synset (a second example would repeat the query);
* trivial pairs dropped: query or example of fewer than 3 words;
* duplicates dropped corpus-wide (first wins, files in the order noun, verb, adj, adv): a
  repeated normalised definition or example (WordNet reuses some examples across synsets);
* split by synset (SHA-1 of ``pos:offset``);
* ``duplicate_key``: the first 6 normalised words of the definition (near-identical glosses,
  e.g. "a member of the ... people").
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

from .common import PairCorpus, drop_duplicates, normalise_text, split_of

WORDNET_DIR = Path("/usr/share/wordnet")
DATA_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
MIN_WORDS = 3
DUPLICATE_KEY_WORDS = 6
_EXAMPLE = re.compile(r'"([^"]+)"')


def available(directory: Path = WORDNET_DIR) -> bool:
    """Whether the WordNet database files are installed."""
    return all((directory / name).exists() for name in DATA_FILES)


def parse_gloss(gloss: str) -> tuple[str, list[str]]:
    """Split a gloss into its definition and its quoted examples.

    >>> parse_gloss('a domesticated animal; "the dog barked all night"')
    ('a domesticated animal', ['the dog barked all night'])
    """
    first_quote = gloss.find('"')
    definition = gloss if first_quote < 0 else gloss[:first_quote]
    definition = re.sub(r"\s+", " ", definition).strip().rstrip(";").strip()
    examples = [re.sub(r"\s+", " ", e).strip() for e in _EXAMPLE.findall(gloss)]
    return definition, [e for e in examples if e]


def synset_glosses(directory: Path = WORDNET_DIR):
    """Yield ``(synset id, lemmas, gloss)`` of every synset, files in :data:`DATA_FILES` order."""
    for name in DATA_FILES:
        pos = name.split(".")[1]
        with open(directory / name, encoding="latin-1") as f:
            for line in f:
                if line.startswith("  "):  # license header
                    continue
                head, _, gloss = line.partition(" | ")
                fields = head.split()
                n_words = int(fields[3], 16)
                lemmas = [fields[4 + 2 * k].replace("_", " ") for k in range(n_words)]
                yield f"{pos}:{fields[0]}", lemmas, gloss.strip()


def build(directory: Path = WORDNET_DIR) -> PairCorpus:
    """Parse WordNet, drop trivial and duplicate pairs, split by synset."""
    if not available(directory):
        raise FileNotFoundError(
            f"WordNet 3.0 not found under {directory}: install the Debian package "
            "wordnet-base (apt-get install wordnet-base)"
        )
    queries, targets, groups = [], [], []
    dropped = {"no_example": 0, "short": 0}
    n_synsets = 0
    for synset, _lemmas, gloss in synset_glosses(directory):
        n_synsets += 1
        definition, examples = parse_gloss(gloss)
        if not examples:
            dropped["no_example"] += 1
            continue
        example = examples[0]
        if len(definition.split()) < MIN_WORDS or len(example.split()) < MIN_WORDS:
            dropped["short"] += 1
            continue
        queries.append(definition)
        targets.append(example)
        groups.append(synset)
    keep, dup = drop_duplicates(queries, targets)
    dropped.update(dup)
    queries = [queries[i] for i in keep]
    targets = [targets[i] for i in keep]
    groups = [groups[i] for i in keep]
    split = np.array([split_of(g) for g in groups])
    duplicate_key = [" ".join(normalise_text(q).split()[:DUPLICATE_KEY_WORDS]) for q in queries]
    meta = {"source": str(directory), "synsets": n_synsets, "dropped": dropped}
    return PairCorpus("wordnet", queries, targets, split, groups, duplicate_key, meta)


def load(*, rebuild: bool = False) -> PairCorpus:
    """The cached corpus (built on first use) from ``benchmarks/results/cache/wordnet.jsonl``."""
    return PairCorpus.cached("wordnet", build, rebuild=rebuild)


if __name__ == "__main__":
    c = load(rebuild="--rebuild" in sys.argv)
    print(c.counts(), c.meta)
