"""Regenerate ``_lexicon_data.py`` (R11 name lexicon). Development tool, never imported at run time.

Sources, all independent of the evaluation dataset (presidio-research synth_dataset_v2):

* first names and surnames: the person providers of Faker (MIT licence, every locale whose
  names are written in a cased script) and the 1990 US Census name files as packaged by
  ``names`` (MIT licence; the Census data itself is public domain);
* common English words: Faker's ``lorem`` en_US word list, Webster's 2nd International word
  list (``web2``, public domain, via the ``english-words`` package, MIT) and word counts over
  the English prose shipped with the build machine (Vim, Perl and man-page documentation, the
  Python standard library's sources, Newton's *Opticks* from Go's test data); see
  ``_english_words`` for the rule. A name that is also a common word ("Will", "May", "Baker",
  "Long") is then only taken as a name with more evidence (a second name, a title, a context
  phrase). The corpora make the output depend on the build machine: the generated file is
  committed, and regenerating it is only needed to change the lists.

Run (the two packages need not be installed in the project's venv)::

    pip install --target /tmp/lexsrc 'Faker==40.54.0' 'names==0.3.0' 'english-words==2.0.1'
    PYTHONPATH=/tmp/lexsrc .venv/bin/python -m streams.policy.redaction._build_lexicon
"""

from __future__ import annotations

import collections
import gzip
import importlib
import os
import pkgutil
import re
import sys
import sysconfig
import textwrap
from collections.abc import Iterable, Iterator
from pathlib import Path

OUT = Path(__file__).with_name("_lexicon_data.py")
_TOKEN = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)?")
# A word in running prose: between spaces/punctuation, not part of an identifier, path, e-mail.
_PROSE_WORD = re.compile(r"(?<=[\s(\"'])([A-Za-z]+)(?=[\s,;:!?)\"']|\.(?![A-Za-z0-9_]))")

CORPORA = [
    "/usr/share/vim",
    "/usr/share/perl",
    "/usr/share/man/man1",
    "/usr/share/man/man3",
    "/usr/share/man/man5",
    "/usr/share/man/man7",
    "/usr/share/man/man8",
    sysconfig.get_paths()["stdlib"],
    "/usr/local/go/src/testdata",
]


def _faker_names() -> tuple[set[str], set[str]]:
    import faker.providers.person as person

    first: set[str] = set()
    last: set[str] = set()
    for module in pkgutil.iter_modules(person.__path__):
        provider = importlib.import_module(f"faker.providers.person.{module.name}").Provider
        for attr, value in vars(provider).items():
            if attr.startswith("_") or callable(value) or isinstance(value, property | str):
                continue
            if "first" in attr and "pair" not in attr and "kana" not in attr:
                first.update(_cased(value))
            elif "last" in attr and "pair" not in attr and "kana" not in attr:
                last.update(_cased(value))
    return first, last


def _cased(values: Iterable[object]) -> Iterator[str]:
    for value in values:
        if not isinstance(value, str):
            continue
        for token in _TOKEN.findall(value):
            if len(token) >= 2 and token[0].isupper() and token.lower() != token.upper():
                yield token.lower()


def _places() -> set[str]:
    """Words of country names, US/CA/AU/GB state, province and county names (English) and the
    cities of the IANA time-zone names (stdlib ``zoneinfo``: "Europe/Berlin")."""
    import zoneinfo

    out: set[str] = set()
    for locale in ("en", "en_US", "en_CA", "en_AU", "en_GB"):
        provider = importlib.import_module(f"faker.providers.address.{locale}").Provider
        for attr in ("countries", "states", "provinces", "counties"):
            value = vars(provider).get(attr)
            if isinstance(value, tuple | list):
                out.update(_cased(value))
    for zone in zoneinfo.available_timezones():
        out.update(_cased([zone.rsplit("/", 1)[-1].replace("_", " ")]))
    # (Faker geo.land_coords towns were tried: too many are also surnames.)
    return out


def _census_names() -> tuple[dict[str, int], dict[str, int]]:
    """Census first names and surnames with their frequency rank (1 = most frequent)."""
    import names

    base = Path(names.__file__).parent
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for fname, target in (
        ("dist.male.first", first),
        ("dist.female.first", first),
        ("dist.all.last", last),
    ):
        for line in (base / fname).read_text().splitlines():
            if line.strip():
                name, rank = line.split()[0].lower(), int(line.split()[3])
                target[name] = min(rank, target.get(name, rank))
    return first, last


def _corpus_counts() -> tuple[collections.Counter[str], collections.Counter[str]]:
    lower: collections.Counter[str] = collections.Counter()
    title: collections.Counter[str] = collections.Counter()
    for root in CORPORA:
        for path in _text_files(root):
            try:
                if path.suffix == ".gz":
                    with gzip.open(path, "rt", encoding="utf-8", errors="ignore") as f:
                        text = "\n".join(ln for ln in f.read().splitlines() if ln[:1] != ".")
                else:
                    text = path.read_text(encoding="utf-8", errors="ignore")
            except (OSError, EOFError, gzip.BadGzipFile):
                continue
            for match in _PROSE_WORD.finditer(text):
                word = match.group(1)
                if word.islower():
                    lower[word] += 1
                elif word[0].isupper() and word[1:].islower():
                    title[word.lower()] += 1
    return lower, title


def _inflected(word: str, web2: set[str]) -> bool:
    """Plural / adverb / past forms of a web2 word (web2 lists base forms only)."""
    for suffix, repl in (("ies", "y"), ("es", ""), ("s", ""), ("ly", ""), ("ed", ""), ("ed", "e")):
        if word.endswith(suffix) and word[: -len(suffix)] + repl in web2:
            return True
    return False


def _english_words(names: set[str], rank: dict[str, int]) -> set[str]:
    """English words, for the name logic: a capitalised one is a name only with more evidence.

    * a word of Webster's 2nd (the public-domain ``web2`` list, lower-case entries, with
      plural/-ly/-ed forms) that is no name is a word ("guilty", "pleasures");
    * a web2 word that is also a name is a word when the corpora use it as one (seen in lower
      case in prose 20+ times and 5 times as often as capitalised: "will", "may", "hope") or
      when it is a rare name (not in the Census top 1500 first names / top 5000 surnames:
      "wisdom", "border", "princess"), so "Smith", "Baker", "Mark" stay names;
    * a word outside web2 counts when seen 5+ times in lower case and mostly so ("python").
    """
    from english_words import get_english_words_set
    from faker.providers.lorem.en_US import Provider as Lorem

    web2 = {w for w in get_english_words_set(["web2"], lower=False, alpha=True) if w.islower()}
    lower, title = _corpus_counts()
    common = set()
    for w in web2 | {w for w in lower if _inflected(w, web2)}:
        if len(w) < 3 or len(w) > 14:
            continue
        n, t = lower[w], title[w]
        if w not in names or (n >= 20 and n >= 5 * t) or rank.get(w, 10**6) > 5000:
            common.add(w)
    for w, n in lower.items():
        if w not in web2 and w not in names and len(w) >= 2 and n >= 5 and n >= 2 * title[w]:
            common.add(w)
    common.update(w.lower() for w in Lorem.word_list)
    return common


def _text_files(root: str) -> Iterator[Path]:
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            if f.endswith((".txt", ".pod", ".py", ".gz")):
                yield Path(dirpath) / f


def _block(words: Iterable[str]) -> str:
    return "\n".join(textwrap.wrap(" ".join(sorted(words)), 96, break_on_hyphens=False))


def main() -> None:
    f1, l1 = _faker_names()
    f2, l2 = _census_names()
    first, last = f1 | set(f2), l1 | set(l2)
    # Rank used to tell a rare name from a word: Census rank, first names weighted so that
    # the top 1500 first names count like the top 5000 surnames; Faker-only names are rare.
    rank = {n: r * 10 // 3 for n, r in f2.items()}
    for n, r in l2.items():
        rank[n] = min(r, rank.get(n, r))
    common = _english_words(first | last, rank)
    places = _places()
    body = [
        '"""Generated by _build_lexicon.py: do not edit. R11 name lexicon (lower case).',
        "",
        "FIRST_NAMES / SURNAMES: Faker person providers (MIT) and the 1990 US Census name files",
        "(public domain, via the `names` package, MIT). COMMON_WORDS: English words (Webster's",
        "2nd word list via `english-words`, word counts over local documentation, Faker's lorem",
        "list; see _english_words). PLACES: words of country, state, province and county names,",
        'and time-zone cities."""',
        "",
        f'FIRST_NAMES = """\n{_block(first)}\n"""',
        "",
        f'SURNAMES = """\n{_block(last)}\n"""',
        "",
        f'COMMON_WORDS = """\n{_block(common)}\n"""',
        "",
        f'PLACES = """\n{_block(places)}\n"""',
        "",
    ]
    OUT.write_text("\n".join(body), encoding="utf-8")
    sizes = f"first={len(first)} surnames={len(last)} common={len(common)} places={len(places)}"
    print(f"{sizes} -> {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
