"""Frame captions from grounded StoryReasoning text, checked against hand-written strings."""

from __future__ import annotations

import pytest

from storyreason.data.captions import frame_captions, strip_grounding
from storyreason.data.errors import DataError

STORY = """Some title outside the spans <gdo char9>Nobody</gdo>
<gdi image1>
In the sterile environment of a sparse room filled with <gdo obj1>cardboard boxes</gdo>, <gdo obj5>a blue
blanket</gdo>, and <gdo bg26>a table</gdo>, <gdo char1>James</gdo> <gda char1>enters</gda> with a neutral look.
</gdi>
<gdi image2>   <gdo char1 char2>James and Sarah</gdo>   <gda char1 char2>walk</gda> down
<gdl bg1>the Urban Street</gdl> toward <gdl lm3>the old clock tower</gdl>.</gdi>
<gdi image3><gdo char2>She</gdo><gda char2>'s smiling</gda> now.</gdi>
"""


def test_captions_are_span_text_without_tags() -> None:
    assert frame_captions(STORY) == [
        "In the sterile environment of a sparse room filled with cardboard boxes, a blue blanket, "
        "and a table, James enters with a neutral look.",
        "James and Sarah walk down the Urban Street toward the old clock tower.",
        "She's smiling now.",
    ]


def test_spans_are_ordered_by_image_number() -> None:
    story = "<gdi image2> second </gdi> <gdi image1> <gdo char1>first</gdo> </gdi>"
    assert frame_captions(story) == ["first", "second"]


def test_strip_grounding_keeps_words_and_folds_whitespace() -> None:
    assert strip_grounding("<gdl bg2>A\n\tdark</gdl>   <gdo obj3 obj4>alley</gdo>") == "A dark alley"


@pytest.mark.parametrize(
    "story",
    [
        "<gdi image1> a </gdi> <gdi image3> c </gdi>",  # a gap
        "<gdi image1> a </gdi> <gdi image1> again </gdi>",  # twice
        "<gdi image1> a <gdi image2> b </gdi>",  # an unclosed span
    ],
)
def test_misnumbered_spans_are_refused(story: str) -> None:
    with pytest.raises(DataError, match="<gdi> spans are numbered"):
        frame_captions(story)


def test_story_without_spans_has_no_captions() -> None:
    assert frame_captions("just text") == []
