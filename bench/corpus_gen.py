"""A reproducible synthetic markdown corpus (documents.jsonl) of a given size, for benchmarks.

Pages look like scraped documentation: headings, paragraphs with inline code, links, URLs, bold,
stray HTML, file names, "e.g." and version numbers, fenced code, lists, tables and images.
"""

from __future__ import annotations

import hashlib
import json
import random
import string
from pathlib import Path

BOILERPLATE = ["Click here to download the next release.", "Share this page.",
               "Previous topic", "Table of contents", "Copyright 2024 Example Inc."]


class PageWriter:
    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        letters = string.ascii_lowercase
        self.words = ["".join(self.rng.choices(letters, k=self.rng.randint(2, 10)))
                      for _ in range(4000)]
        self.words += "the a of to and in is it that for with as on by this from".split() * 40

    def sentence(self) -> str:
        rng = self.rng
        words = rng.choices(self.words, k=rng.randint(6, 28))
        roll = rng.random()
        if roll < 0.15:
            words.insert(rng.randrange(len(words)), f"`{rng.choice(self.words)}()`")
        elif roll < 0.25:
            words.insert(rng.randrange(len(words)),
                         f"[{words[0]} guide](https://example.org/{words[1]}/{words[2]}.html)")
        elif roll < 0.30:
            words.insert(rng.randrange(len(words)), f"https://{words[0]}.example.com/{words[1]}")
        elif roll < 0.36:
            words.insert(rng.randrange(len(words)), f"**{words[0]}**")
        elif roll < 0.40:
            words.insert(rng.randrange(len(words)), f"<b>{words[0]}</b>")
        elif roll < 0.45:
            words.insert(rng.randrange(len(words)), rng.choice(
                ["e.g.", "i.e.", "version 3.11", "setup.py", "3.14", "etc."]))
        text = " ".join(words)
        return text[0].upper() + text[1:] + rng.choice(".......?!")

    def paragraph(self) -> str:
        lines, line = [], []
        for _ in range(self.rng.randint(2, 7)):
            line.append(self.sentence())
            if len(line) == 2:          # wrapped lines, as converters write them
                lines.append(" ".join(line))
                line = []
        return "\n".join(lines + ([" ".join(line)] if line else []))

    def extra_block(self) -> str:
        rng = self.rng
        kind = rng.randrange(6)
        if kind == 0:
            body = "\n".join(f"{rng.choice(self.words)} = {rng.randint(0, 99)}  # note"
                             for _ in range(rng.randint(2, 8)))
            return f"```python\n{body}\n```"
        if kind == 1:
            return "\n".join(f"- {self.sentence()}" for _ in range(rng.randint(2, 5)))
        if kind == 2:
            rows = [f"| {rng.choice(self.words)} | {rng.randint(0, 999)} |" for _ in range(4)]
            return "| name | value |\n| --- | --- |\n" + "\n".join(rows)
        if kind == 3:
            return f"![{rng.choice(self.words)}](images/{rng.choice(self.words)}.png)"
        if kind == 4:
            return rng.choice(BOILERPLATE)
        return f"> {self.sentence()}"

    def page(self, number: int) -> dict:
        rng = self.rng
        title = " ".join(rng.choices(self.words, k=3)).title()
        parts = [f"# {number}. {title}"]
        for section in range(rng.randint(5, 40)):
            level = "#" * rng.choice((2, 2, 3, 4))
            parts.append(f"{level} {section + 1}. {' '.join(rng.choices(self.words, k=3))}")
            parts += [self.paragraph() for _ in range(rng.randint(1, 5))]
            if rng.random() < 0.5:
                parts.append(self.extra_block())
        return {"id": hashlib.sha1(f"page-{number}".encode()).hexdigest()[:16],
                "source": "local", "url": f"https://docs.example.org/page{number}.html",
                "path": None, "title": title, "markdown": "\n\n".join(parts) + "\n",
                "metadata": {}}


def write_corpus(path: Path, megabytes: int, seed: int = 3407) -> dict:
    """Write pages until their markdown reaches `megabytes` MB; returns counts."""
    writer = PageWriter(seed)
    target = megabytes * 1_000_000
    chars = pages = 0
    with open(path, "w", encoding="utf-8") as out:
        while chars < target:
            page = writer.page(pages)
            out.write(json.dumps(page, ensure_ascii=False) + "\n")
            chars += len(page["markdown"])
            pages += 1
    return {"pages": pages, "markdown_mb": round(chars / 1e6, 1),
            "file_mb": round(path.stat().st_size / 1e6, 1)}
