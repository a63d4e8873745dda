"""The reference prompt template and how the reference filled it in (docs/profiles.md §5).

The template file is read exactly as the reference reads it (`open(...).read()`, UTF-8, universal
newlines). Values go in as the reference's pandas rows stringified them: Age as an integer, Religion
"None" as `nan` (pandas reads "None" as NaN), Banned/Allowed as the sorted Python-list strings.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from ..profile import UserProfile, format_category_list
from ..text_limits import MAX_PROMPT_CHARS, TextTooLong, check_text
from .base import EncoderError

# In the reference's replacement order.
PLACEHOLDERS = ("<<AGE>>", "<<AGE_GROUP>>", "<<GENDER>>", "<<RELIGION>>", "<<MENTAL>>", "<<PHYSICAL>>",
                "<<BANNED>>", "<<ALLOWED>>")
_PLACEHOLDER = re.compile(r"<<[A-Za-z_]+>>")


@dataclass(frozen=True)
class PromptTemplate:
    text: str
    source: str = "<text>"

    def __post_init__(self) -> None:
        check_text(self.text, f"template {self.source}")
        found = set(_PLACEHOLDER.findall(self.text))
        unknown = sorted(found - set(PLACEHOLDERS))
        if unknown:
            raise EncoderError(f"template {self.source}: unknown placeholder(s) {', '.join(unknown)}; "
                               f"allowed: {' '.join(PLACEHOLDERS)}")
        if not found:
            raise EncoderError(f"template {self.source} contains none of the profile placeholders "
                               f"{' '.join(PLACEHOLDERS)}, so every profile would get the same embedding; "
                               "use the reference get_embeds.txt for the published adapters")

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def load_template(path: str | Path) -> PromptTemplate:
    path = Path(path)
    if not path.is_file():
        raise EncoderError(f"template file not found: {path}; give the reference get_embeds.txt (for the "
                           "published adapters) or your own template with the placeholders "
                           f"{' '.join(PLACEHOLDERS)}")
    size = path.stat().st_size
    if size > 4 * MAX_PROMPT_CHARS:  # UTF-8 takes at most 4 bytes a character: surely too long, not read
        raise TextTooLong(f"template {path.name} is {size} bytes long, more than {MAX_PROMPT_CHARS} characters; "
                          f"allowed: at most {MAX_PROMPT_CHARS} characters")
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except UnicodeDecodeError as error:
        raise EncoderError(f"template {path.name} is not UTF-8 text ({error})") from None
    return PromptTemplate(text, path.name)


def reference_values(profile: UserProfile) -> dict[str, str]:
    return {
        "<<AGE>>": str(profile.age),
        "<<AGE_GROUP>>": profile.age_group,
        "<<GENDER>>": profile.gender,
        "<<RELIGION>>": "nan" if profile.religion == "None" else profile.religion,
        "<<MENTAL>>": profile.mental_condition,
        "<<PHYSICAL>>": profile.physical_condition,
        "<<BANNED>>": format_category_list(profile.banned),
        "<<ALLOWED>>": format_category_list(profile.allowed),
    }


def render_prompt(template: PromptTemplate, profile: UserProfile) -> str:
    text = template.text
    for placeholder, value in reference_values(profile).items():
        text = text.replace(placeholder, value)
    return text
