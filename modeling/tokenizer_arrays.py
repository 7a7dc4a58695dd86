"""The SWE tokenisation loop (spec §5.4) on numpy arrays, for long texts and batches of lines.

The loop decides at each position from the 1 to 3 characters there: the lowest id among the prefixes in
the vocabulary wins.  So the decision of every position is computed at once, by table lookups on the code
points.  Which positions the loop visits follows from the token lengths: a position that no token starting
at one of the two positions before it can jump over is always visited, and the few tokens between two such
positions are followed in a handful of vectorised steps.

The texts given here have their tags already replaced by one character each (the encoder does that), so no
token is longer than 3 characters.  For short texts the encoder uses its Python loop: this module's fixed
cost, some 50 µs a call, would dominate.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

TEXT_SEPARATOR = "\U0010fffd"   # private use: separates the texts of a batch
NO_ID = np.int32(np.iinfo(np.int32).max)   # no candidate at this position: out-of-vocabulary fallback
SEPARATOR_ID = np.int32(-1)
_NO_PAIR = int(NO_ID) >> 2     # pair-table id of a 2-character prefix that is not itself a surface
_EMPTY = np.uint64(np.iinfo(np.uint64).max)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _codes(surfaces: list[str], which: np.ndarray, length: int) -> np.ndarray:
    """Code points of the chosen surfaces (all of `length` characters), one row each."""
    text = "".join([surfaces[index] for index in which.tolist()])
    return np.frombuffer(text.encode("utf-32-le"), np.uint32).reshape(-1, length)


class ProbeTable:
    """A hash table uint64 -> int32 (linear probing, load <= 1/4) built and queried for many keys at once."""

    ABSENT = np.int32(-2)   # the value of a missing key: negative (no id) and even (no flag bit)

    def __init__(self, keys: np.ndarray, values: np.ndarray):
        bits = max(4, (4 * len(keys)).bit_length())
        self._shift = np.uint64(64 - bits)
        self._mask = np.uint64((1 << bits) - 1)
        self._keys = np.full(1 << bits, _EMPTY, np.uint64)
        self._values = np.full(1 << bits, self.ABSENT, np.int32)
        slots = self._home(keys)
        pending = np.arange(len(keys))
        while pending.size:   # each round, one pending key per free slot takes it; the others move on
            free = pending[self._keys[slots[pending]] == _EMPTY]
            taken, first = np.unique(slots[free], return_index=True)
            self._keys[taken] = keys[free[first]]
            self._values[taken] = values[free[first]]
            pending = np.setdiff1d(pending, free[first], assume_unique=True)
            slots[pending] = (slots[pending] + np.uint64(1)) & self._mask

    def _home(self, keys: np.ndarray) -> np.ndarray:
        return (keys * _GOLDEN) >> self._shift

    def get(self, keys: np.ndarray) -> np.ndarray:
        """The value of each key, ABSENT for keys not in the table."""
        slots = self._home(keys)
        found = self._keys[slots]
        values = np.where(found == keys, self._values[slots], self.ABSENT)
        rest = np.flatnonzero((found != keys) & (found != _EMPTY))   # most keys sit in their home slot
        slots = slots[rest]
        while rest.size:
            slots = (slots + np.uint64(1)) & self._mask
            found = self._keys[slots]
            hit = found == keys[rest]
            values[rest[hit]] = self._values[slots[hit]]
            more = ~hit & (found != _EMPTY)
            rest, slots = rest[more], slots[more]
        return values


class ArrayTokenizer:
    """Token ids of prepared texts (pre-substitutions, emoji and clean tags applied), exactly as the loop."""

    def __init__(self, swe: Mapping[str, int], singles: Mapping[str, int],
                 fallback: Callable[[str], tuple[int, ...]]):
        """`singles`: characters that are one token each without being surfaces (the tags' stand-ins)."""
        self._fallback = fallback
        surfaces = list(swe)
        ids = np.fromiter(swe.values(), np.int32, len(surfaces))
        lengths = np.fromiter(map(len, surfaces), np.int64, len(surfaces))
        codes = {n: _codes(surfaces, np.flatnonzero(lengths == n), n) for n in (1, 2, 3)}
        ids = {n: ids[lengths == n] for n in (1, 2, 3)}
        extra = {**singles, TEXT_SEPARATOR: SEPARATOR_ID}
        extra_codes = np.array([ord(char) for char in extra], np.uint32)
        present = np.zeros(0x110000, bool)
        for array in (*codes.values(), extra_codes):
            present[array.ravel()] = True
        self._char_index = (np.cumsum(present, dtype=np.int32) * present).astype(np.int32)   # 0: in no surface
        self._width = np.uint64(present.sum() + 1)
        self._single = np.full(int(self._width), NO_ID, np.int32)
        self._single[self._char_index[codes[1][:, 0]]] = ids[1]
        self._single[self._char_index[extra_codes]] = list(extra.values())
        not_tag = codes[3][:, 0] != ord("<")   # 3-character surfaces starting with '<' are tags
        self._pairs, self._triples = self._tables(self._key(codes[2]), ids[2], self._key(codes[3][not_tag]),
                                                  ids[3][not_tag])
        self._pair_first = np.zeros(int(self._width), bool)
        self._pair_second = np.zeros(int(self._width), bool)
        for pairs in (codes[2], codes[3][not_tag]):
            self._pair_first[self._char_index[pairs[:, 0]]] = True
            self._pair_second[self._char_index[pairs[:, 1]]] = True

    def _key(self, codes: np.ndarray) -> np.ndarray:
        """Surfaces of one length (rows of code points) as numbers: character indices in base `_width`."""
        keys = np.zeros(len(codes), np.uint64)
        for column in range(codes.shape[1]):
            keys = keys * self._width + self._char_index[codes[:, column]].astype(np.uint64)
        return keys

    def _tables(self, pair_keys: np.ndarray, pair_ids: np.ndarray, triple_keys: np.ndarray,
                triple_ids: np.ndarray) -> tuple[ProbeTable, ProbeTable]:
        """Pairs: id * 2 + (a 3-character surface starting with the pair can win); triples: those surfaces.

        A 3-character surface wins only against higher (or equal) ids of its 2- and 1-character prefixes,
        so only those are kept; their 2-character prefixes enter the pair table with the flag (with the id
        _NO_PAIR if they are not surfaces themselves).
        """
        order = np.argsort(pair_keys)
        sorted_keys = np.append(pair_keys[order], _EMPTY)    # the sentinel keeps every search in range
        prefixes = triple_keys // self._width
        at = np.searchsorted(sorted_keys, prefixes)
        is_pair = sorted_keys[at] == prefixes
        prefix_ids = np.where(is_pair, np.append(pair_ids[order], NO_ID)[at], NO_ID)
        first_ids = self._single[(prefixes // self._width).astype(np.int64)]
        wins = triple_ids <= np.minimum(prefix_ids, first_ids)
        values = pair_ids.astype(np.int64) * 2
        values[order[at[wins & is_pair]]] |= 1
        extra = np.unique(prefixes[wins & ~is_pair])
        return (ProbeTable(np.concatenate([pair_keys, extra]),
                           np.concatenate([values, np.full(len(extra), _NO_PAIR * 2 + 1)]).astype(np.int32)),
                ProbeTable(triple_keys[wins], triple_ids[wins]))

    # -- encoding ------------------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of one prepared text (tags replaced; no TEXT_SEPARATOR)."""
        return self._ids(text).tolist()

    def encode_batch(self, text: str) -> list[list[int]]:
        """Token ids of each of several prepared texts joined by TEXT_SEPARATOR."""
        ids = self._ids(text)
        cuts = np.flatnonzero(ids == SEPARATOR_ID).tolist()
        flat = ids.tolist()
        return [flat[start + 1:end] for start, end in zip([-1] + cuts, cuts + [len(flat)])]

    def _ids(self, text: str) -> np.ndarray:
        codes = np.frombuffer(text.encode("utf-32-le"), np.uint32)
        ids, lengths = self._decisions(self._char_index[codes])
        visited = self._visited(lengths)
        return self._with_fallbacks(ids[visited], codes[visited])

    def _decisions(self, chars: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Id and length of the token the loop would take at each position (NO_ID, 1: no candidate)."""
        ids = self._single[chars]
        lengths = np.ones(len(chars), np.int8)
        if len(chars) < 2:
            return ids, lengths
        wide = chars.astype(np.uint64)
        pair_keys = wide[:-1] * self._width + wide[1:]
        at = np.flatnonzero(self._pair_first[chars[:-1]] & self._pair_second[chars[1:]])
        found = self._pairs.get(pair_keys[at])         # id * 2 + flag, or ABSENT
        pair_ids = found >> 1
        wins = (pair_ids >= 0) & (pair_ids < _NO_PAIR) & (pair_ids <= ids[at])
        ids[at[wins]] = pair_ids[wins]
        lengths[at[wins]] = 2
        at = at[(found & 1).astype(bool) & (at < len(chars) - 2)]
        triple_ids = self._triples.get(pair_keys[at] * self._width + wide[at + 2])
        wins = triple_ids >= 0
        ids[at[wins]] = triple_ids[wins]
        lengths[at[wins]] = 3
        return ids, lengths

    @staticmethod
    def _visited(lengths: np.ndarray) -> np.ndarray:
        """Positions the loop visits.

        Position p is certainly visited when the tokens at p-1 and p-2 (lengths 1 and at most 2) cannot jump
        over it; from each such position the loop is followed, all at once, up to the next such position.
        """
        certain = np.ones(len(lengths), bool)
        certain[1:] = lengths[:-1] == 1
        certain[2:] &= lengths[:-2] <= 2
        visited = certain.copy()
        position = np.flatnonzero(certain)
        while position.size:
            position = position + lengths[position]
            position = position[position < len(lengths)]
            position = position[~certain[position]]
            visited[position] = True
        return visited

    def _with_fallbacks(self, ids: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Replace NO_ID by the fallback tokens of the character (spec §5.6: 1 to 4 tokens)."""
        unknown = np.flatnonzero(ids == NO_ID)
        if not unknown.size:
            return ids
        chars, which = np.unique(codes[unknown], return_inverse=True)
        fallbacks = [self._fallback(chr(code)) for code in chars.tolist()]
        counts = np.ones(len(ids), np.int64)
        counts[unknown] = np.array([len(f) for f in fallbacks])[which]
        expanded = np.repeat(ids, counts)
        starts = (np.cumsum(counts) - counts)[unknown]
        for index, fallback in enumerate(fallbacks):
            at = starts[which == index]
            for offset, token_id in enumerate(fallback):
                expanded[at + offset] = token_id
        return expanded
