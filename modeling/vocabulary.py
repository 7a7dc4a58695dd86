"""Builders of the project's own tokenizer files: ``emoji.json`` (build-emoji) and a vocabulary (build-vocab).

Both write the original's formats (``../shared/spec/swe-tokenizer.md``), read by ``modeling/tokenizer.py``.
"""

from __future__ import annotations

import collections
import heapq
import json
import os
import re
import unicodedata
from typing import Iterable, Iterator, Mapping, Sequence

from modeling.tokenizer import EMOJI_TAGS, SPECIAL_TAIL, TokenizerError


# ----------------------------------------------------------------------------------------------------------
# Building an emoji table (build-emoji): 12 categories in the layout of the original emoji.json, derived
# from Unicode character names, plus kaomoji written for this project.  Keys are stored longest first so
# that, applied in file order, a sequence (skin tone, keycap, flag, VS16 form) wins over its parts.
# ----------------------------------------------------------------------------------------------------------
EMOJI_BLOCKS = ((0x1F300, 0x1F5FF), (0x1F600, 0x1F64F), (0x1F680, 0x1F6FF), (0x1F7E0, 0x1F7EB),
                (0x1F900, 0x1F9FF), (0x1FA70, 0x1FAFF), (0x1F191, 0x1F19A))
# Emoji among the older symbol blocks; text symbols used in Japanese prose (☆★♪→○…) are deliberately absent.
EMOJI_SYMBOLS = ("☀☁☂☃☄☎☔☕☘☝☠☢☣☦☪☮☯☸☹☺♈♉♊♋♌♍♎♏♐♑♒♓♠♣♥♦♨♻♿⚓⚔⚕⚖⚗⚙⚛⚜⚠⚡⚰⚱⚽⚾⛄⛅⛈⛎⛏⛑⛓⛔⛩⛪⛰⛱"
                 "⛲⛳⛴⛵⛷⛸⛹⛺⛽✂✅✈✉✊✋✌✍✏✒✔✖✝✡✨✳✴❄❇❌❎❓❔❕❗❣❤➕➖➗➡➰➿⤴⤵⬅⬆⬇⬛⬜⭐⭕")
SKIN_TONES = tuple(map(chr, range(0x1F3FB, 0x1F400)))
FLAG_COUNTRIES = ("JP US GB FR DE IT ES PT NL BE CH AT SE NO DK FI IS IE PL CZ HU GR TR RU UA CN KR TW HK MO "
                  "SG MY TH VN PH ID IN PK BD LK NP MN AU NZ CA MX BR AR CL PE CO VE CU ZA EG NG KE MA SA AE "
                  "QA IL IR IQ").split()
KAOMOJI = ("(^_^)", "(^^)", "(^o^)", "(^-^)", "(*^_^*)", "(*^^*)", "(^_^)v", "(^_-)", "(^_^;)", "(^^;",
           "(^^;)", "(-_-)", "(-_-;)", "(-_-)zzz", "(T_T)", "(T-T)", "(;_;)", "(;o;)", "(>_<)", "(>_<;)",
           "(*_*)", "(@_@)", "(+_+)", "(=_=)", "(~_~)", "(o^^o)", "(^▽^)", "(≧▽≦)", "(・∀・)", "(´・ω・`)",
           "(´；ω；`)", "(*´ω`*)", "(｀・ω・´)", "(´∀｀)", "(´ー`)", "(￣▽￣)", "(￣ー￣)", "(・_・;)", "(゜o゜)",
           "(=^・^=)", "ヽ(^o^)丿", "\\(^o^)/", "m(__)m", "(^ω^)", "(*'▽')")
EMOJI_REPRESENTATIVES = ("😊", "😡", "🎉", "🐶", "🇯🇵", "🍣", "👕", "👍", "💕", "🆗", "🌸", "(^^)")
_PEOPLE_WORDS = frozenset(
    "HAND HANDS FINGER FINGERS THUMBS FIST PERSON MAN WOMAN MEN WOMEN BOY GIRL BABY CHILD ADULT OLDER PRINCE "
    "PRINCESS FAMILY COUPLE GUARDSMAN DETECTIVE WORKER POLICE ANGEL SANTA MERPERSON MERMAID MERMAN ELF FAIRY "
    "VAMPIRE ZOMBIE GENIE MAGE SUPERHERO SUPERVILLAIN NINJA PEOPLE RUNNER PEDESTRIAN DANCER DANCING MUSCLE "
    "FOOT EYE TONGUE MOUTH LIPS BRAIN NAIL SELFIE CLAPPING WAVING PREGNANT BREAST-FEEDING "
    "BRIDE GROOM TUXEDO CROWN".split())
_ANIMAL_WORDS = frozenset(
    "CAT DOG MOUSE RAT COW OX TIGER RABBIT DRAGON SNAKE HORSE SHEEP RAM GOAT MONKEY ROOSTER CHICKEN BIRD "
    "CHICK PENGUIN FROG BEAR PANDA KOALA PIG BOAR WHALE DOLPHIN FISH OCTOPUS SNAIL BUG ANT HONEYBEE BEETLE "
    "SPIDER SCORPION TURTLE LIZARD CROCODILE LEOPARD ELEPHANT CAMEL GIRAFFE ZEBRA DEER BAT WOLF FOX LION "
    "UNICORN EAGLE DUCK OWL SHARK BUTTERFLY CRAB SHRIMP SQUID LOBSTER HEDGEHOG HIPPOPOTAMUS RHINOCEROS "
    "GORILLA ORANGUTAN SLOTH OTTER SKUNK KANGAROO BADGER SWAN PEACOCK PARROT FLAMINGO MOSQUITO MICROBE DODO "
    "MAMMOTH BISON BEAVER SEAL FLY WORM COCKROACH POODLE LLAMA RACCOON SAUROPOD T-REX CRICKET TURKEY DOVE "
    "PAW".split())
_SMILE_WORDS = frozenset("SMILING SMILE GRINNING GRIN LAUGHING JOY WINKING SMIRKING STAR-STRUCK HALO "
                         "UPSIDE-DOWN ROLLING SAVOURING".split())
_SICK_WORDS = frozenset("ANGRY POUTING SYMBOLS THERMOMETER BANDAGE NAUSEATED VOMITING SNEEZING HOT COLD WOOZY "
                        "DIZZY EXPLODING MASK STEAM SKULL IMP OGRE GOBLIN CURSING".split())
_LOVE_WORDS = frozenset("HEART HEARTS KISS KISSING LOVE".split())
_EVENT_WORDS = frozenset(
    "BALL TROPHY MEDAL PARTY CONFETTI FIREWORKS SPARKLER BALLOON WRAPPED RIBBON TICKET TICKETS CHRISTMAS "
    "JACK-O-LANTERN BOWLING GOLF TENNIS SKI SKIER SNOWBOARDER SURFER SWIMMER FENCER WRESTLERS JUGGLING "
    "BADMINTON HOCKEY BOXING MARTIAL GOAL DART YO-YO KITE PINATA GAME DIE TANABATA DECORATION CHEQUERED "
    "FISHING SPORTS CAROUSEL CIRCUS PERFORMING CLAPPER".split())
_PLACE_WORDS = frozenset(
    "GLOBE EARTH MOUNTAIN VOLCANO BEACH DESERT ISLAND BUILDING HOUSE CASTLE TOWER STATION CAR AUTOMOBILE BUS "
    "TRAIN RAILWAY TRAM AIRPLANE SHIP BOAT ROCKET SUN MOON STAR CLOUD RAIN SNOWFLAKE SNOWMAN TREE FLOWER "
    "BLOSSOM LEAF LEAVES RAINBOW WATER WAVE FIRE DROPLET TORNADO FOG UMBRELLA CYCLONE BRIDGE CITYSCAPE "
    "SUNRISE SUNSET NIGHT HOTEL OFFICE HOSPITAL BANK SCHOOL CHURCH MOSQUE TEMPLE SHRINE FOUNTAIN TENT "
    "BICYCLE MOTORCYCLE TAXI TRUCK HELICOPTER SAILBOAT CANOE ANCHOR FUEL SEEDLING HERB CACTUS PALM TULIP "
    "ROSE SUNFLOWER HIBISCUS MUSHROOM COMET ZAP".split())
_SIGN_WORDS = frozenset("SYMBOL SIGN ARROW ARROWS SQUARED SQUARE CIRCLE BUTTON KEYCAP MARK NEGATIVE "
                        "DIAMOND TRIANGLE".split())


def _emoji_category(char: str) -> int:
    """Category 1-11 of one emoji code point, from its Unicode name (12 is kaomoji)."""
    code = ord(char)
    words = set(unicodedata.name(char, "").replace(" WITH ", " ").split())
    food = 0x1F32D <= code <= 0x1F32F or 0x1F345 <= code <= 0x1F37F or 0x1F950 <= code <= 0x1F96F \
        or 0x1F9C0 <= code <= 0x1F9CB or 0x1FAD0 <= code <= 0x1FADF or char == "☕"
    if "FACE" in words and not words & _ANIMAL_WORDS and "CLOCK" not in words:
        return 1 if words & _SMILE_WORDS else 2 if words & _SICK_WORDS else 9
    rules = ((food, 6), (words & _ANIMAL_WORDS, 4), ("FLAG" in words and "MAILBOX" not in words, 5),
             (words & _PEOPLE_WORDS, 8), (words & _LOVE_WORDS, 9), (words & _SICK_WORDS, 2),
             (words & _EVENT_WORDS, 3), (words & _PLACE_WORDS, 11),
             (words & _SIGN_WORDS or 0x1F7E0 <= code <= 0x1F7EB, 10))
    return next((category for matched, category in rules if matched), 7)


def build_emoji_table() -> dict[str, dict[str, str]]:
    """Our emoji.json: {"emoji": {key: "<|emojiN|>"}, "emoji_inv": {"<|emojiN|>": representative}}."""
    chars = [chr(c) for low, high in EMOJI_BLOCKS for c in range(low, high + 1)
             if unicodedata.name(chr(c), None) and not 0x1F3FB <= c <= 0x1F3FF]
    chars += EMOJI_SYMBOLS
    category = {char: _emoji_category(char) for char in chars}
    keys = dict(category)
    for char, cat in category.items():
        keys[char + "\ufe0f"] = cat
        if cat == 8:
            keys.update((char + tone, cat) for tone in SKIN_TONES)
    keys.update((c + "\ufe0f\u20e3", 10) for c in "0123456789#*")
    keys.update((c + "\u20e3", 10) for c in "0123456789#*")
    keys.update(("".join(chr(0x1F1E6 + ord(letter) - ord("A")) for letter in country), 5)
                for country in FLAG_COUNTRIES)
    keys.update((kaomoji, 12) for kaomoji in KAOMOJI)
    ordered = sorted(keys, key=lambda key: (-len(key), key))
    emoji = {key: EMOJI_TAGS[keys[key] - 1] for key in ordered}
    inverse = {}
    for tag, representative in zip(EMOJI_TAGS, EMOJI_REPRESENTATIVES):
        members = [key for key in ordered if emoji[key] == tag]
        inverse[tag] = representative if representative in members else min(members, key=len)
    return {"emoji": emoji, "emoji_inv": inverse}


def emoji_table_json(table: Mapping) -> str:
    """ASCII-escaped JSON, as the original emoji.json."""
    return json.dumps(table, ensure_ascii=True)


# ----------------------------------------------------------------------------------------------------------
# Building a vocabulary (build-vocab).  Layout as the original: multi-character tokens, single characters,
# then SPECIAL_TAIL.  A 3-character token is always placed before its 2-character prefix, so no id is dead.
# ----------------------------------------------------------------------------------------------------------
KANJI_CLASS = "々〆〇\u3400-\u4dbf\u4e00-\u9fff\U00020000-\U0003134f"
HIRAGANA_CLASS = "\u3041-\u3096\u309d\u309e"
KATAKANA_CLASS = "\u30a1-\u30fa\u30fc-\u30fe\u31f0-\u31ff"
SCRIPT_RUN_RES = ((re.compile(f"[{KANJI_CLASS}]{{2,}}"), (2,)),
                  (re.compile(f"[{HIRAGANA_CLASS}]{{2,}}"), (2, 3)),
                  (re.compile(f"[{KATAKANA_CLASS}]{{2,}}"), (2, 3)))
NOT_TOKENS = frozenset(" \u3000\t\n\r\u2014\u2212\ufeff")   # removed by the pre-substitutions
MAX_COUNTED_NGRAMS = 8_000_000


def count_corpus(paths: Sequence[str | os.PathLike], progress: bool | None = None
                 ) -> tuple[collections.Counter, collections.Counter]:
    """Streaming counts of script-bounded 2/3-grams and of characters over UTF-8 files.

    Memory stays bounded: when the n-gram table grows past MAX_COUNTED_NGRAMS, the rarest entries are
    dropped (they could not have been selected anyway on a corpus that large).
    """
    from tqdm import tqdm

    ngrams: collections.Counter = collections.Counter()
    chars: collections.Counter = collections.Counter()
    sizes = []
    for path in paths:
        try:
            sizes.append(os.path.getsize(path))
        except OSError as error:
            raise TokenizerError(f"cannot read corpus file {path}: {error.strerror}; check the path") from None
    disable = None if progress is None else not progress   # None: a bar only on a terminal
    with tqdm(total=sum(sizes), unit="B", unit_scale=True, desc="counting", disable=disable) as bar:
        for path in paths:
            for line in _read_lines(path):
                chars.update(line)
                for pattern, lengths in SCRIPT_RUN_RES:
                    for run in pattern.findall(line):
                        for length in lengths:
                            ngrams.update(run[i:i + length] for i in range(len(run) - length + 1))
                bar.update(len(line.encode("utf-8")))
                if len(ngrams) > MAX_COUNTED_NGRAMS:
                    _drop_rarest(ngrams)
    return ngrams, chars


def _read_lines(path: str | os.PathLike) -> Iterator[str]:
    """Lines of a UTF-8 file; an invalid byte is reported with the file name and byte offset."""
    offset = 0
    with open(path, "rb") as f:
        for raw in f:
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise TokenizerError(f"corpus file {path} is not valid UTF-8 (byte offset "
                                     f"{offset + error.start}); convert it to UTF-8") from None
            offset += len(raw)


def _drop_rarest(counts: collections.Counter) -> None:
    """Keep the most frequent half of the entries."""
    threshold = heapq.nlargest(len(counts) // 2, counts.values())[-1]
    for key in [key for key, count in counts.items() if count <= threshold]:
        del counts[key]


def _jis_characters() -> list[str]:
    """Every character of JIS X 0208 and JIS X 0213 (planes 1 and 2), from Python's Shift_JIS-2004 codec."""
    chars = []
    for lead in [*range(0x81, 0xA0), *range(0xE0, 0xFD)]:
        for trail in [*range(0x40, 0x7F), *range(0x80, 0xFD)]:
            try:
                text = bytes((lead, trail)).decode("shift_jis_2004")
            except UnicodeDecodeError:
                continue
            if len(text) == 1:
                chars.append(text)
    return chars


def _is_kanji(char: str) -> bool:
    return unicodedata.name(char, "").startswith("CJK UNIFIED IDEOGRAPH") or char in "々〆〇"


ENCLOSED_ALPHANUMERICS = ((0x2460, 0x24FF), (0x2776, 0x2793), (0x1F100, 0x1F1E5))
VARIANT_SOURCES = ENCLOSED_ALPHANUMERICS + ((0x2E80, 0x2FDF), (0x3200, 0x33FF), (0xF900, 0xFAFF),
                                            (0xFF61, 0xFFEF), (0x1F200, 0x1F2FF), (0x2F800, 0x2FA1F))


def _variant_of(char: str) -> str | None:
    """The character `char` is a variant of, derived from Unicode compatibility mappings (NFKC).

    Circled, parenthesised and full-stop digits and letters stand for the full-width character (as in the
    original); compatibility ideographs, radicals, half-width kana and enclosed ideographs for their
    one-character NFKC form.  Full-width ASCII keeps its own id, as in the original.
    """
    folded = unicodedata.normalize("NFKC", char)
    if folded == char or 0xFF01 <= ord(char) <= 0xFF5E:
        return None
    if any(low <= ord(char) <= high for low, high in ENCLOSED_ALPHANUMERICS):
        folded = folded.strip("().,")
        return chr(ord(folded) + 0xFEE0) if len(folded) == 1 and folded.isascii() and folded.isalnum() else None
    folded = folded.strip("()") if len(folded) == 3 else folded
    if len(folded) == 1 and not folded.isascii() and unicodedata.category(folded)[0] in "LNPS":
        return folded
    return None


def _kana_spellings(kana: str) -> list[str]:
    """Other spellings of a kana string: half-width katakana, decomposed and spacing voicing marks."""
    spellings = [unicodedata.normalize("NFD", kana)]
    spellings.append(spellings[0].replace("\u3099", "\u309b").replace("\u309a", "\u309c"))
    if all("\u30a0" <= c <= "\u30ff" for c in kana):
        spellings.append("".join(_HALF_WIDTH.get(c, c) for c in spellings[0]))
    return [s for s in spellings if s != kana and len(s) <= 3]


_HALF_WIDTH = {unicodedata.normalize("NFKC", chr(c)): chr(c) for c in range(0xFF66, 0xFFA0)}
_HALF_WIDTH.update({"\u3099": "\uff9e", "\u309a": "\uff9f"})


class VocabularyLayout:
    """Collects lines and their variant spellings, never using one spelling twice."""

    def __init__(self, forbidden: Iterable[str]):
        self.lines: list[list[str]] = []
        self.used: set[str] = set(forbidden)

    def add(self, canonical: str, variants: Iterable[str] = ()) -> bool:
        if canonical in self.used:
            return False
        self.used.add(canonical)
        members = [canonical]
        for variant in variants:
            if variant not in self.used and "," not in variant:
                self.used.add(variant)
                members.append(variant)
        self.lines.append(members)
        return True


def _is_single_token(char: str, emoji_keys: set[str]) -> bool:
    """A character that may have its own line: printable, not removed by pre-substitution, not an emoji."""
    return unicodedata.category(char)[0] not in "CZM" and char not in NOT_TOKENS and char not in emoji_keys


def single_characters(char_counts: Mapping[str, int], min_count: int, emoji_keys: set[str]
                      ) -> tuple[list[str], dict[str, list[str]]]:
    """Single-character lines in id order, and the variant spellings of each.

    JIS X 0208/0213 characters, ASCII, full-width forms, all kana and corpus characters seen `min_count`
    times; voiced kana come first so that spellings with a separate voicing mark (か゛, ｶﾞ, か + U+3099)
    beat the unvoiced character and reach their id.
    """
    candidates = set(_jis_characters()) | {c for c, n in char_counts.items() if n >= min_count}
    candidates.update(map(chr, [*range(0x21, 0x7F), *range(0xFF01, 0xFF5F), *range(0x3041, 0x3097),
                                *range(0x30A1, 0x30FB), *range(0x31F0, 0x3200)]))
    candidates.update(chr(c) for low, high in VARIANT_SOURCES for c in range(low, high + 1))
    variants: dict[str, list[str]] = collections.defaultdict(list)
    singles = set()
    for char in sorted(candidates):
        target = _variant_of(char)
        if target is not None and _is_single_token(target, emoji_keys):
            variants[target].append(char)
            singles.add(target)
        elif target is None and unicodedata.name(char, None) and _is_single_token(char, emoji_keys):
            singles.add(char)
    singles -= {v for members in variants.values() for v in members}
    voiced = sorted(c for c in singles if not _is_kanji(c) and unicodedata.normalize("NFD", c) != c
                    and unicodedata.normalize("NFD", c)[-1] in "\u3099\u309a")
    others = sorted(singles.difference(voiced), key=lambda c: (not _is_kanji(c), -char_counts.get(c, 0), c))
    for char in voiced:
        variants[char] += _kana_spellings(char)
    return voiced + others, variants


def rank_multi_character_tokens(ngrams: Mapping[str, int], count: int) -> list[str]:
    """The `count` most useful n-grams, ordered by frequency but each 3-character token before its prefix.

    Usefulness is occurrences x characters saved; placing abc before ab makes the lowest-id rule act as a
    longest match, so every selected token can be produced.
    """
    useful = [(n * (len(gram) - 1), gram) for gram, n in ngrams.items()]
    chosen = [gram for _score, gram in heapq.nlargest(count, useful)]
    score = {gram: ngrams[gram] for gram in chosen}
    key = dict(score)
    for gram in chosen:
        if len(gram) == 3 and gram[:2] in key:
            key[gram[:2]] = min(key[gram[:2]], score[gram])
    return sorted(chosen, key=lambda gram: (-key[gram], -len(gram), gram))


def build_vocabulary(paths: Sequence[str | os.PathLike], size: int, emoji: Mapping[str, Mapping[str, str]],
                     min_count: int = 3, progress: bool | None = None) -> list[str]:
    """Vocabulary lines (id = line number) from a UTF-8 corpus, in the original's format and layout."""
    ngrams, char_counts = count_corpus(paths, progress)
    emoji_keys = set(emoji["emoji"])
    singles, variants = single_characters(char_counts, min_count, emoji_keys)
    budget = size - len(singles) - len(SPECIAL_TAIL)
    if budget < 0:
        raise TokenizerError(f"--size {size} is too small: the single characters and special tokens alone need "
                             f"{len(singles) + len(SPECIAL_TAIL)} ids")
    usable = {gram: n for gram, n in ngrams.items() if not emoji_keys.intersection(gram)}
    multi = rank_multi_character_tokens(usable, budget)
    if len(multi) < budget:
        raise TokenizerError(f"the corpus yields only {len(multi)} multi-character tokens but --size {size} "
                             f"needs {budget}; use a larger corpus or a smaller --size")
    layout = VocabularyLayout(forbidden=SPECIAL_TAIL)
    for gram in multi:
        layout.add(gram, _token_spellings(gram, variants))
    for char in singles:
        layout.add(char, variants.get(char, ()) if char != "," else ())
    return [",".join(members) for members in layout.lines] + list(SPECIAL_TAIL)


def _token_spellings(gram: str, variants: Mapping[str, list[str]], limit: int = 16) -> list[str]:
    """Variant spellings of a multi-character token: kana forms, and ideograph variants per character."""
    if not _is_kanji(gram[0]):
        return _kana_spellings(gram)
    options = [[c] + [v for v in variants.get(c, ()) if len(v) == 1] for c in gram]
    spellings = [a + b for a in options[0] for b in options[1]] if len(gram) == 2 else []
    return spellings[1:limit]

