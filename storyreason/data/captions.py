"""Frame captions from a grounded StoryReasoning story.

A story wraps the text of frame N in `<gdi imageN> ... </gdi>`; inside, entities, actions and
landmarks are marked `<gdo char1>...</gdo>`, `<gda char1>...</gda>`, `<gdl bg2>...</gdl>`. A frame's
caption is its span's text with every grounding tag removed (the words between tags kept) and
whitespace folded.
"""

from __future__ import annotations

import re

from storyreason.data.errors import DataError

# an unclosed span must not swallow the next one: the text may not contain another <gdi
_FRAME_SPAN = re.compile(r"<gdi\s+image(\d+)[^>]*>((?:(?!<gdi\b).)*?)</gdi\s*>", re.DOTALL | re.IGNORECASE)
_GROUNDING_TAG = re.compile(r"</?gd[a-z]*\b[^>]*>", re.IGNORECASE)


def strip_grounding(text: str) -> str:
    """`text` without grounding tags, whitespace folded to single spaces."""
    return " ".join(_GROUNDING_TAG.sub("", text).split())


def frame_captions(story: str) -> list[str]:
    """Caption of every frame in image order; a DataError unless the spans are image1..imageN, once each."""
    spans = [(int(number), text) for number, text in _FRAME_SPAN.findall(story)]
    numbers = sorted(number for number, _ in spans)
    if numbers != list(range(1, len(spans) + 1)):
        raise DataError(f"<gdi> spans are numbered {numbers}, not image1..image{len(spans)}")
    return [strip_grounding(text) for _, text in sorted(spans)]
