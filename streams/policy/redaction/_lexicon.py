"""R11 word lists loaded once: name lexicon (from ``_lexicon_data``) and small hand-made lists.

Everything here is lower case; callers lower-case the token they look up.
"""

from __future__ import annotations

from ._lexicon_data import COMMON_WORDS as _COMMON
from ._lexicon_data import FIRST_NAMES as _FIRST
from ._lexicon_data import PLACES as _PLACES
from ._lexicon_data import SURNAMES as _LAST

FIRST_NAMES: frozenset[str] = frozenset(_FIRST.split())
SURNAMES: frozenset[str] = frozenset(_LAST.split())
COMMON_WORDS: frozenset[str] = frozenset(_COMMON.split())
PLACES: frozenset[str] = frozenset(_PLACES.split())

HONORIFICS: frozenset[str] = frozenset(
    """mr mrs ms miss mx dr prof sir dame lady lord rev fr sr sra srta mme mlle herr frau
    madam madame monsieur señor señora signor signora don doña""".split()
)

# Words that are capitalised for another reason than being a name: calendar words, greetings,
# pronouns, organisation and place markers. They end or break a candidate name.
NOT_NAME: frozenset[str] = frozenset(
    """january february march april may june july august september october november december
    monday tuesday wednesday thursday friday saturday sunday today tomorrow yesterday
    i i'm i've i'll i'd he she they we you it his her their our my your its me him them us
    the a an and or but if of in on at to for from by with as is are was were be been
    this that these those there here what who whom whose which when where why how
    hi hello hey dear thanks thank regards cheers best sincerely yours ok okay yes no please
    sorry mom mum dad mother father brother sister son daughter aunt uncle grandma grandpa
    bot user assistant system customer agent admin support team staff client manager
    inc ltd llc plc gmbh ag sa corp co company corporation group bank university college
    school institute hospital church street st avenue ave road rd lane drive boulevard
    north south east west new old great saint san santa
    god lord jesus christ allah
    english british scottish welsh irish american canadian mexican brazilian argentinian
    spanish portuguese french german dutch belgian swiss austrian italian greek turkish
    swedish norwegian danish finnish icelandic polish czech slovak slovenian croatian serbian
    hungarian romanian bulgarian russian ukrainian chinese japanese korean vietnamese thai
    indian pakistani iranian iraqi israeli arab arabic egyptian african nigerian kenyan
    australian european asian latin hispanic jewish christian muslim catholic protestant
    apt apartment suite ste unit flat floor room box po
    inc llc ltd limited corp corporation gmbh plc sons brothers bros holdings partners associates
    orchestra band software technologies technology tech labs systems solutions services
    investments capital markets research insurance agency foundation institute industries
    enterprises international global media studios records consulting analytics networks
    pharmaceuticals motors airlines press publishing
    kafka docker jenkins django flask python ruby julia swift rust java kotlin scala pandas
    spark redis mongo postgres linux windows android apple google amazon microsoft oracle
    meta netflix uber tesla github gitlab slack zoom excel word outlook chrome firefox
    """.split()
)
