"""What visitors type in the search box, for loads that must miss the search cache.

    SEARCH_TEXTS        # a few hundred texts, from the seed's own vocabulary

The site keeps each search page until the data changes (webapp/data_cache.py), so a
load that repeats one text measures the cache. A configuration with
``request.search_texts = true`` sends these in turn instead (lab/loadgen.py's wrk
script), so what is measured is a search made afresh. They are the words and names
the seed's episodes are made of (webapp/db/seed.py), as a listener would type them: a
topic, a sub-topic, a guest, a topic with an angle of a title, a word of a show's notes;
most match some episodes, some match none.
"""

from __future__ import annotations

import re

from webapp.db.seed import ANGLES, FIRST_NAMES, LAST_NAMES, SENTENCES, TOPICS, guests_pool

#: Words of the show notes' sentences worth searching for (not the template's {slots}).
_NOTE_WORDS = sorted(
    {
        word.lower()
        for sentence in SENTENCES
        for word in re.findall(r"(?<!\{)\b[A-Za-z]{5,}\b(?!\})", sentence)
    }
)


def _texts() -> tuple[str, ...]:
    subjects = [text for topic in TOPICS for text in topic]
    candidates = [
        *subjects,
        *(word for text in subjects for word in re.findall(r"[A-Za-z]{4,}", text)),
        *FIRST_NAMES,
        *LAST_NAMES,
        *(name for _, name, _ in guests_pool()),
        *(f"{topic} {angle}" for topic, _, _ in TOPICS for angle in ANGLES),
        *_NOTE_WORDS,
    ]
    # Lower case, words and spaces only: the load script spells them itself (see loadgen).
    cleaned = (" ".join(re.findall(r"[a-z0-9]+", text.lower())) for text in candidates)
    return tuple(dict.fromkeys(text for text in cleaned if text))


SEARCH_TEXTS = _texts()
