"""Adapter references: ``[namespace/]name[:version|:tag]``.

Each part matches ``^[a-z0-9][a-z0-9._-]{0,95}$`` and holds no ``..`` and no ``--``. A bare
reference means the newest version (``latest``). Names are catalog keys only: they never become
filesystem paths.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lora_hub.errors import InvalidNameError

_PART = re.compile(r"^[a-z0-9][a-z0-9._-]{0,95}$")
LATEST = "latest"


def check_part(part: str, what: str = "name") -> str:
    """Return ``part`` if it is a valid name part, else raise ``InvalidNameError`` saying why."""
    if not part:
        raise InvalidNameError(f"empty {what}", hint="names look like `acme/sql-lora`")
    if len(part) > 96:
        raise InvalidNameError(f"{what} {part[:20]!r}... is {len(part)} characters long; the limit is 96")
    if part != part.lower() and _PART.match(part.lower()):
        raise InvalidNameError(f"{what} {part!r} has upper-case letters", hint=f"use {part.lower()!r}")
    if ".." in part or "--" in part:
        raise InvalidNameError(f"{what} {part!r} contains '..' or '--', which are not allowed")
    if not _PART.match(part):
        raise InvalidNameError(
            f"{what} {part!r} is not valid",
            hint="use lower-case letters, digits, '.', '_' and '-', starting with a letter or digit",
        )
    return part


def check_tag(tag: str) -> str:
    """A tag is a name part that is not a number (numbers are versions) and not ``latest``."""
    check_part(tag, "tag")
    if tag.isdigit():
        raise InvalidNameError(
            f"tag {tag!r} is a number, which would read as a version", hint="use e.g. 'v" + tag + "'"
        )
    if tag == LATEST:
        raise InvalidNameError("'latest' is implicit: it always names the newest version and cannot be set")
    return tag


@dataclass(frozen=True)
class AdapterName:
    namespace: str  # "" when the name has none
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    @classmethod
    def parse(cls, text: str) -> AdapterName:
        if ":" in text:
            raise InvalidNameError(f"{text!r} names a version; give the name alone")
        ref = Ref.parse(text)
        return ref.adapter


@dataclass(frozen=True)
class Ref:
    """A parsed reference. ``selector`` is ``latest``, a version number, or a tag."""

    adapter: AdapterName
    selector: str = LATEST

    @property
    def version(self) -> int | None:
        return int(self.selector) if self.selector.isdigit() else None

    def __str__(self) -> str:
        return f"{self.adapter}:{self.selector}"

    @classmethod
    def parse(cls, text: str) -> Ref:
        text = text.strip()
        if not text:
            raise InvalidNameError("empty adapter reference", hint="references look like `acme/sql-lora:3`")
        body, sep, selector = text.partition(":")
        if sep and not selector:
            raise InvalidNameError(f"{text!r} ends with ':'", hint="give a version or tag after ':', or drop it")
        parts = body.split("/")
        if len(parts) > 2:
            raise InvalidNameError(
                f"{text!r} has more than one '/'", hint="references look like `namespace/name[:version]`"
            )
        namespace, name = (parts[0], parts[1]) if len(parts) == 2 else ("", parts[0])
        if len(parts) == 2:
            check_part(namespace, "namespace")
        check_part(name, "name")
        if not sep:
            selector = LATEST
        elif selector.isdigit():
            if int(selector) < 1:
                raise InvalidNameError(f"version {selector} does not exist: versions start at 1")
            selector = str(int(selector))
        elif selector != LATEST:
            check_part(selector, "tag")
        return cls(AdapterName(namespace, name), selector)
