"""ReaDe's rewards (Eq. 2-4): the think/answer format reward with its six-part structured caption, and the
multi-dimensional content reward with an injected matching judge.

Pure Python: no judge model and no prompting; the paper's LLM judges come in as callables.

Output format: `<think>reasoning</think>` then `<answer>caption</answer>`, the caption being the six-part structured
caption adopted from Any2Caption (Appendix Table 8), numbered parts in this order, each heading followed by a colon:
"1. Dense caption:", "2. Main object caption:", "3. Background caption:", "4. Movement caption:",
"5. Style caption:", "6. Camera caption:". Headings match case-insensitively and may sit on one line or several.

Well-formedness (Eq. 2; tags are exact and case-sensitive):
- think: exactly one `<think>` and one `</think>`, in that order, only whitespace before `<think>`, non-blank
  reasoning without any think / answer tag inside.
- answer: exactly one `<answer>` and one `</answer>`, in that order, only whitespace after `</answer>`, a content
  without tags that parses as the six-part caption, and before `<answer>` either only whitespace or text ending in
  `</think>` plus whitespace (the answer follows the reasoning directly).
So misordered blocks (answer first), nested blocks and unclosed tags satisfy neither format or only the other one.
"""

import dataclasses
import numbers
import re
from collections.abc import Callable, Mapping, Sequence

import numpy as np

CAPTION_PARTS: tuple[tuple[str, str], ...] = (
    ("dense", "Dense caption"), ("main_object", "Main object caption"), ("background", "Background caption"),
    ("movement", "Movement caption"), ("style", "Style caption"), ("camera", "Camera caption"),
)
CONTENT_WEIGHTS = (1.0, 1.0, 0.8, 0.7)  # alpha, rho, gamma, lambda (Appendix D.3)
KEY_INFO_FIELDS = ("objects", "actions", "camera", "style")  # Appendix Table 9's key-information JSON
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_HEADING = re.compile(r"(?<!\S)([0-9]+)\.\s*(" + "|".join(h for _, h in CAPTION_PARTS) + r")\s*:", re.IGNORECASE)


def parse_caption(text: str) -> dict[str, str]:
  """The six-part structured caption -> {part: text} keyed by CAPTION_PARTS' names, in order; ValueError naming
  what is wrong (text before part 1, a missing / repeated / misnumbered / misordered heading, an empty part)."""
  if not isinstance(text, str):
    raise ValueError(f"caption must be a string, got {type(text).__name__}")
  headings = list(_HEADING.finditer(text))
  found = [m.group(2).lower() for m in headings]
  wanted = [h.lower() for _, h in CAPTION_PARTS]
  if found != wanted:
    expected = [f"{i + 1}. {h}:" for i, (_, h) in enumerate(CAPTION_PARTS)]
    raise ValueError(f"the caption must have the headings {expected} once each and in this order; found {found}")
  if text[:headings[0].start()].strip():
    raise ValueError(f"text before '1. Dense caption:': {text[:headings[0].start()].strip()[:60]!r}")
  parts = {}
  for i, ((name, heading), match) in enumerate(zip(CAPTION_PARTS, headings)):
    if int(match.group(1)) != i + 1:
      raise ValueError(f"heading {heading!r} is numbered {match.group(1)}, expected {i + 1}")
    end = headings[i + 1].start() if i + 1 < len(headings) else len(text)
    body = text[match.end():end].strip()
    if not body:
      raise ValueError(f"the caption part {heading!r} is empty")
    parts[name] = body
  return parts


def think_well_formed(text: str) -> bool:
  """Whether the output's <think> block is well-formed (module docstring)."""
  if not _one_pair(text, "think"):
    return False
  start, end = text.index("<think>"), text.index("</think>")
  reasoning = text[start + len("<think>"):end]
  return not text[:start].strip() and bool(reasoning.strip()) and not _has_tag(reasoning)


def answer_well_formed(text: str) -> bool:
  """Whether the output's <answer> block is well-formed and holds the six-part caption (module docstring)."""
  if not _one_pair(text, "answer"):
    return False
  start, end = text.index("<answer>"), text.index("</answer>")
  before, content = text[:start].rstrip(), text[start + len("<answer>"):end]
  if text[end + len("</answer>"):].strip() or (before and not before.endswith("</think>")) or _has_tag(content):
    return False
  try:
    parse_caption(content)
  except ValueError:
    return False
  return True


def format_reward(text: str) -> float:
  """R_format (Eq. 2): 1.0 when both the think and the answer format hold, 0.2 when one does, 0.0 otherwise."""
  if not isinstance(text, str):
    raise ValueError(f"the output must be a string, got {type(text).__name__}")
  satisfied = think_well_formed(text) + answer_well_formed(text)
  return (0.0, 0.2, 1.0)[satisfied]


def extract_answer(text: str) -> str:
  """The caption inside the output's well-formed <answer> block; ValueError when there is none."""
  if not isinstance(text, str) or not answer_well_formed(text):
    raise ValueError(f"no well-formed <answer> block with a six-part caption in {str(text)[:80]!r}")
  return text[text.index("<answer>") + len("<answer>"):text.index("</answer>")].strip()


@dataclasses.dataclass(frozen=True)
class CaptionReference:
  """The reference elements of one training example, extracted offline from its gold caption (Section 3.2.1):

  - user (U): essential details the user's textual instruction asks for (Table 9 "User Input Key Info."), scored
    by R_user;
  - detail (S): supplementary information derived from the non-textual conditions (Table 9 "Supplementary key
    Info."), scored by R_detail;
  - supp (Z): reasonable imaginative details (Table 9 "Imaging Key Info."), scored by R_supp.
  """

  user: tuple[str, ...]
  detail: tuple[str, ...]
  supp: tuple[str, ...]

  def __post_init__(self):
    for field in dataclasses.fields(self):
      elements = getattr(self, field.name)
      if not isinstance(elements, tuple) or not all(isinstance(e, str) and e.strip() for e in elements):
        raise ValueError(f"CaptionReference.{field.name} must be a tuple of non-empty strings, got {elements!r}")

  @classmethod
  def from_json(cls, data: Mapping) -> "CaptionReference":
    """From {"user": ..., "detail": ..., "supp": ...}, each a list of element strings or a key-information dict
    (flattened by `key_info_elements`)."""
    if not isinstance(data, Mapping) or set(data) != {"user", "detail", "supp"}:
      keys = sorted(data) if isinstance(data, Mapping) else type(data).__name__
      raise ValueError(f"a caption reference needs exactly the keys ['detail', 'supp', 'user'], got {keys}")
    return cls(**{name: _elements(name, data[name]) for name in ("user", "detail", "supp")})


def key_info_elements(info: Mapping) -> tuple[str, ...]:
  """Table 9's key-information dict -> its elements, one per value the judge checks: each object's name, each
  attribute as "name: attribute", then every action, camera and style entry."""
  if not isinstance(info, Mapping) or not set(info) <= set(KEY_INFO_FIELDS):
    keys = sorted(info) if isinstance(info, Mapping) else type(info).__name__
    raise ValueError(f"key information must be a dict with keys among {list(KEY_INFO_FIELDS)}, got {keys}")
  elements = []
  for obj in info.get("objects", []):
    if not isinstance(obj, Mapping) or not isinstance(obj.get("name"), str) or set(obj) - {"name", "attributes"}:
      raise ValueError(f"an object must be {{'name': str, 'attributes': [str, ...]}}, got {obj!r}")
    elements.append(obj["name"])
    elements += [f"{obj['name']}: {a}" for a in _strings(f"attributes of {obj['name']!r}", obj.get("attributes", []))]
  for field in KEY_INFO_FIELDS[1:]:
    elements += _strings(field, info.get(field, []))
  return tuple(elements)


def content_reward(answer: str, reference, match_fn: Callable[[str, str], bool],
                   weights: Sequence[float] = CONTENT_WEIGHTS, *, contradict_fn: Callable[[str], bool]) -> dict:
  """R = alpha R_user + rho R_detail + gamma R_supp - lambda R_contra (Eq. 3-4) of a caption.

  Args:
    answer: the predicted caption (e.g. `extract_answer(output)`).
    reference: a CaptionReference or a dict for `CaptionReference.from_json`.
    match_fn: M(element, caption) -> bool, whether the caption states the element (the paper's LLM judge).
    weights: (alpha, rho, gamma, lambda); Appendix D.3's (1.0, 1.0, 0.8, 0.7) by default.
    contradict_fn: caption -> bool, whether the caption contradicts itself: R_contra = 1[contradict(y)] is an
      indicator on the caption alone, not a fraction of reference elements.

  Returns:
    {"reward", "user", "detail", "supp", "contra"}: each R_* is the fraction of its elements matched; an empty
    element list scores 1.0 (nothing of that aspect is missing), which shifts every rollout of the prompt alike.
  """
  if not isinstance(answer, str):
    raise ValueError(f"answer must be the caption string, got {type(answer).__name__}")
  if not isinstance(reference, CaptionReference):
    reference = CaptionReference.from_json(reference)
  if len(weights) != 4 or not all(isinstance(w, numbers.Real) and not isinstance(w, bool) for w in weights):
    raise ValueError(f"weights must be four numbers (alpha, rho, gamma, lambda), got {weights!r}")
  alpha, rho, gamma, lam = (float(w) for w in weights)
  parts = {name: _coverage(getattr(reference, name), answer, match_fn) for name in ("user", "detail", "supp")}
  contradicts = contradict_fn(answer)
  if not isinstance(contradicts, (bool, np.bool_)):
    raise ValueError(f"contradict_fn must return a bool, got {contradicts!r}")
  parts["contra"] = float(bool(contradicts))
  parts["reward"] = alpha * parts["user"] + rho * parts["detail"] + gamma * parts["supp"] - lam * parts["contra"]
  return parts


def _one_pair(text: str, tag: str) -> bool:
  """Exactly one <tag> and one </tag>, the opening one first."""
  opening, closing = f"<{tag}>", f"</{tag}>"
  return (text.count(opening) == 1 and text.count(closing) == 1
          and text.index(opening) < text.index(closing))


def _has_tag(text: str) -> bool:
  return any(tag in text for tag in _TAGS)


def _strings(name: str, values) -> list[str]:
  if isinstance(values, str) or not isinstance(values, Sequence) or not all(isinstance(v, str) for v in values):
    raise ValueError(f"{name} must be a list of strings, got {values!r}")
  return list(values)


def _elements(name: str, value) -> tuple[str, ...]:
  if isinstance(value, Mapping):
    return key_info_elements(value)
  return tuple(_strings(f"reference {name!r}", value))


def _coverage(elements: tuple[str, ...], caption: str, match_fn) -> float:
  if not elements:
    return 1.0
  hits = []
  for element in elements:
    hit = match_fn(element, caption)
    if not isinstance(hit, (bool, np.bool_)):
      raise ValueError(f"match_fn must return a bool, got {hit!r} for the element {element!r}")
    hits.append(bool(hit))
  return sum(hits) / len(hits)


__all__ = [
    "CAPTION_PARTS", "CONTENT_WEIGHTS", "KEY_INFO_FIELDS", "CaptionReference", "answer_well_formed",
    "content_reward", "extract_answer", "format_reward", "key_info_elements", "parse_caption", "think_well_formed",
]
