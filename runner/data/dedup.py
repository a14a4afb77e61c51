"""Duplicate detection over a stream of pairs: exact (normalized text) and near (MinHash LSH)."""

from __future__ import annotations

import hashlib
import re
import unicodedata
import zlib

_WHITESPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    """Case, Unicode compatibility forms and whitespace runs do not make two texts different."""
    if not text.isascii():      # NFKC leaves ASCII alone; skipping it halves the cost
        text = unicodedata.normalize("NFKC", text)
    return _WHITESPACE.sub(" ", text.casefold()).strip()


class ExactDedup:
    """Remembers 8-byte digests of normalized texts in one sorted array: about 8 bytes per unique
    text (a Python set would take ~70), so ten million pairs stay under 100 MB."""

    def __init__(self):
        import numpy as np

        self._np = np
        self._seen = np.empty(0, dtype=np.uint64)

    @staticmethod
    def digest(text: str) -> int:
        return int.from_bytes(hashlib.blake2b(normalize(text).encode(), digest_size=8).digest(),
                              "little")

    def duplicates(self, texts: list[str]) -> list[bool]:
        """For each text in order: does it repeat an earlier text (of this or earlier calls)?"""
        return self.duplicate_digests([self.digest(text) for text in texts])

    def duplicate_digests(self, values: list[int]) -> list[bool]:
        np = self._np
        digests = np.array(values, dtype=np.uint64)
        seen = self._seen
        where = np.searchsorted(seen, digests)
        known = np.zeros(len(digests), dtype=bool)
        if len(seen):
            known = seen[np.minimum(where, len(seen) - 1)] == digests
        _, first = np.unique(digests, return_index=True)
        repeated = np.ones(len(digests), dtype=bool)
        repeated[first] = False
        duplicate = known | repeated
        fresh = np.sort(digests[~duplicate])
        self._seen = np.insert(seen, np.searchsorted(seen, fresh), fresh)
        return duplicate.tolist()


class NearDedup:
    """A text is a near duplicate when its estimated Jaccard similarity (word shingles) with an
    earlier kept text exceeds `threshold`: MinHash signatures, banded LSH (datasketch's band
    count and width for the threshold). The index keeps one 8-byte key per band of each kept
    text, about 0.5 KB per text instead of datasketch MinHashLSH's 4 KB."""

    def __init__(self, threshold: float, num_perm: int, shingle_size: int):
        from datasketch import MinHash, MinHashLSH

        self.shingle_size = shingle_size
        # CRC32 is enough: datasketch 2 mixes every input hash (MurmurHash3 finalizer) before
        # its permutations, and it is ~10x cheaper than the default SHA-1 per shingle.
        self._template = MinHash(num_perm=num_perm, seed=1, hashfunc=zlib.crc32)
        # datasketch needs 0 < threshold < 1; the ends mean "identical only" / "everything".
        shape = MinHashLSH(threshold=min(max(threshold, 0.01), 0.99), num_perm=num_perm)
        self._rows = shape.r
        self._bands: list[set[int]] = [set() for _ in range(shape.b)]

    def signature(self, text: str):
        from datasketch import MinHash

        words = normalize(text).split()
        size = self.shingle_size
        shingles = {" ".join(words[i:i + size]) for i in range(max(1, len(words) - size + 1))}
        template = self._template
        minhash = MinHash(num_perm=len(template.hashvalues), hashfunc=zlib.crc32,
                          permutations=template.permutations, scheme=template.scheme)
        minhash.update_batch([s.encode() for s in shingles])
        return minhash.hashvalues

    def is_duplicate(self, text: str) -> bool:
        values, rows = self.signature(text), self._rows
        keys = [_band_key(values[i * rows:(i + 1) * rows].tobytes())
                for i in range(len(self._bands))]
        if any(key in band for key, band in zip(keys, self._bands, strict=True)):
            return True
        for key, band in zip(keys, self._bands, strict=True):
            band.add(key)
        return False


def _band_key(band: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(band, digest_size=8).digest(), "little")
