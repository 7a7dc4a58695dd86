"""Tokenizer speed: modeling.tokenizer.SWEEncoder against a literal implementation of the original algorithm.

Three texts of about 1 MiB each are generated here (deterministic, seeded): news-style prose, chat lines with
emoji, kaomoji and full-width symbols, and technical text with ASCII, URLs, numbers and code.  On each, both
implementations encode the whole text in one call and line by line, with and without ``clean``, in this
process, and the ids must be identical (the benchmark stops otherwise), so the ratios are meaningful even on a
busy machine.  The literal implementation is tests/test_tokenizer_reference.py (written from the spec).

Line by line is measured twice: one ``encode`` call per line, and ``encode_batch`` of all lines (the same
per-line ids from one call).  "cold" is the first call of a freshly built encoder (its caches empty).
``--records`` also times ``encode_swe.py records`` end to end on the three texts with 2 processes.

    python benchmarks/bench_tokenizer.py [--mib 1.0] [--repeat 3] [--texts news chat tech] [--records]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from modeling.tokenizer import SWEEncoder  # noqa: E402
from test_tokenizer_reference import ReferenceSWE, read_reference_files  # noqa: E402

# ----------------------------------------------------------------------------------------------------------
# The texts: each generator returns one line (a paragraph, a chat message, a line of a manual or log).
# ----------------------------------------------------------------------------------------------------------
PLACES = ("北海道 青森県 岩手県 宮城県 秋田県 新潟県 富山県 長野県 静岡県 愛知県 三重県 京都府 大阪府 兵庫県 奈良県 "
          "岡山県 広島県 山口県 香川県 高知県 福岡県 長崎県 熊本県 鹿児島県 沖縄県 札幌市 仙台市 横浜市 川崎市 "
          "名古屋市 神戸市 北九州市 那覇市").split()
SPEAKERS = ("政府は 東京都は 日本銀行は 大手自動車メーカーの担当者は 気象庁によると、 文部科学省は 県の教育委員会は "
            "警察によりますと、 国土交通省の発表では、 市の関係者は 専門家の間では 総務省の調査で 与党の幹部は "
            "野党各党は 厚生労働省は 経済産業省の担当者は 商工会議所は 労働組合の代表は 地元の住民団体は").split()
TOPICS = ("来年度の予算案 新たな経済対策 地方の人口減少 物価の上昇 再生可能エネルギーの導入 高齢者の医療費負担 "
          "子育て支援の拡充 大雨による被害 外国人観光客の増加 働き方改革の進み具合 半導体の供給不足 少子化への対応 "
          "道路や橋の老朽化 感染症の流行状況 円安の影響 農業の担い手不足 港湾の整備計画 行政手続きのデジタル化 "
          "公共交通の維持 空き家の活用 防災訓練の見直し 最低賃金の引き上げ").split()
VERBS = ("について検討を進める方針を明らかにしました|に関する報告書をまとめました|を巡って議論が続いています|"
         "について来月にも結論を出す見通しです|への対応を急ぐ考えを示しました|に関して慎重な姿勢を崩していません|"
         "について住民への説明会を開きました|の実態を詳しく調べることにしています|を受けて対策本部を設置しました|"
         "について「引き続き注視する」と述べました|をめぐり、関係団体から意見を聞きました").split("|")
TAILS = ("関係者は「できるだけ早く結論を出したい」と話しています。|今後の動向が注目されます。|"
         "影響は全国に広がる可能性があります。|政府は来週にも正式に決定する予定です。|地元では不安の声も上がっています。|"
         "詳しい原因はまだ分かっていません。|担当者は「前例のない事態だ」としています。|専門家は冷静な対応を呼びかけています。"
         ).split("|")
FAMILY = "佐藤 鈴木 高橋 田中 伊藤 渡辺 山本 中村 小林 加藤 吉田 山田 佐々木 山口 松本 井上 木村 林 清水 森".split()
GIVEN = "健太 翔太 大輔 美咲 陽子 直樹 智子 拓也 恵 浩二 由美 誠 さくら 亮 里奈".split()


def one_of(rng: random.Random, choices: Sequence[tuple[float, Callable[[], str]]]) -> str:
    """One of the templates, drawn with its probability (the last takes what is left)."""
    draw = rng.random()
    for probability, template in choices[:-1]:
        draw -= probability
        if draw < 0:
            return template()
    return choices[-1][1]()


def news_sentence(rng: random.Random) -> str:
    """One sentence of news-style prose (dates, figures, quotes, names)."""
    def n(low: int, high: int) -> int:
        return rng.randint(low, high)

    place, topic = rng.choice(PLACES), rng.choice(TOPICS)
    person = f"{rng.choice(FAMILY)}{rng.choice(GIVEN)}さん（{n(19, 88)}）"
    return one_of(rng, [
        (0.3, lambda: rng.choice(SPEAKERS) + topic + rng.choice(VERBS) + "。"),
        (0.15, lambda: f"{place}では{n(1, 12)}月{n(1, 28)}日、{topic}をテーマにした会合が開かれ、およそ"
                       f"{n(2, 90) * 10}人が参加しました。"),
        (0.13, lambda: f"{topic}に関する調査では、「賛成」と答えた人が{n(10, 70)}.{n(0, 9)}％、「反対」が{n(5, 40)}％でした。"),
        (0.1, lambda: f"事業費は総額{n(2, 900)}億円に上り、{place}が{n(1, 9)},{n(100, 999)}万円を負担します。"),
        (0.12, lambda: f"{place}に住む{person}は「{topic}が気がかりです」と話していました。"),
        (0.1, lambda: f"{2020 + n(0, 5)}年{n(1, 12)}月に始まった制度は、これまでに{n(1, 99)}万件あまりの申請を受け付けています。"),
        (0.1, lambda: rng.choice(TAILS)),
    ])


def news_line(rng: random.Random) -> str:
    """A paragraph of 2-6 sentences, sometimes after a headline."""
    paragraph = "".join(news_sentence(rng) for _ in range(rng.randint(2, 6)))
    if rng.random() < 0.15:
        return f"【{rng.choice(PLACES)}】{rng.choice(TOPICS)}　{rng.choice(['最新', '速報', '続報'])}\n" + paragraph
    return paragraph


CHAT_EMOJI = ("😀 😂 🤣 😊 😍 🥺 😭 😅 🤔 😇 🥳 😱 👍 👍🏻 👏🏼 🙏 🙇\u200d♂️ 🎉 ✨ 🔥 💦 ❤️ 💕 👋 👋🏽 🇯🇵 🍣 🍺 ☕ "
              "🌸 ⭐ 💯 🐱 🐶 🎂 🚃 ☔ 📱 💤 👨\u200d👩\u200d👧 🍜 🎮 🏃").split()
CHAT_KAOMOJI = ("(^_^)", "(´・ω・`)", "(笑)", "ｗｗｗ", "www", "(*´ω`*)", "m(_ _)m", "ヽ(・∀・)ノ", "(>_<)", "orz",
                "(T_T)", "(￣▽￣)", "（＾ω＾）", "(｀・ω・´)ゞ", "(^^;")
CHAT_PHRASES = ("おはよー|おつかれさま|今日の会議って何時からだっけ|まじで|それな|了解です|ちょっと遅れます|いまどこ？|"
                "駅前のカフェにいるよ|明日ひま？|写真ありがと|やばい|すごーぃ|ありがとぉ|ファイト|ウィークエンドは何する？|"
                "ライブ最高だった|ねむい…|お昼なに食べる？|ラーメン行こう|雨ふってきた|傘もってない|了解！|それはちょっと|"
                "あとで電話するね|新しいスマホ買った|ゲームのイベント始まってる|ディズニー行きたい|課題おわらない|"
                "バイト終わった|がんばろ|おやすみー|ぁ、忘れてた|ほんとに？|いま起きた|電車とまってる|先に行ってて|"
                "誕生日おめでとう|ケーキ買ってくね|ｶﾞﾁで？|今週末あいてる？|映画のチケット取れた").split("|")
FULL_WIDTH = "！ ？ ！！ ？？ ！？ ～ 〜 ♪ ★ ☆ … ・・・ ※ → ＃ ＠ （ ） 【 】 「 」 ＼(^o^)／ ＡＢＣ １２３".split()
NAMES = ("ゆき", "たくや", "Mika", "けんじ", "あや", "Sora", "りな", "ハル", "kei_99")


def chat_line(rng: random.Random) -> str:
    """A chat message with a time stamp: phrases mixed with emoji, kaomoji and full-width symbols."""
    parts = []
    for _ in range(rng.randint(1, 4)):
        parts.append(rng.choice(CHAT_PHRASES))
        for _ in range(rng.randint(0, 2)):
            kind = rng.random()
            if kind < 0.45:
                parts.append(rng.choice(CHAT_EMOJI) * rng.choice([1, 1, 1, 2, 3]))
            elif kind < 0.75:
                parts.append(rng.choice(FULL_WIDTH))
            elif kind < 0.9:
                parts.append(rng.choice(CHAT_KAOMOJI))
            else:
                parts.append(rng.choice([" ", "　", "ー" * rng.randint(2, 5), "ｗ" * rng.randint(1, 6)]))
    return f"[{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}] {rng.choice(NAMES)}: " + "".join(parts)


TECH_JA = ("この関数は引数を受け取り、処理結果を返します。|設定ファイルを編集したあと、サービスを再起動してください。|"
           "詳しくは公式ドキュメントを参照してください。|次のコマンドでパッケージをインストールします。|"
           "エラーが発生した場合は、ログを確認してください。|バージョン2系では互換性のない変更があります。|"
           "メモリ使用量は入力サイズに比例して増加します。|タイムアウトの既定値は30秒です。|"
           "この設定はセキュリティ上の理由から無効になっています。|テストはすべて成功しました。|"
           "キャッシュを削除すると初回の読み込みが遅くなります。|環境変数で出力先のディレクトリを変更できます。").split("|")
WORDS = ("config server client request response buffer index value result token thread socket handler parser "
         "cache timeout retry payload session user_id offset length encoder decoder worker queue").split()
DOMAINS = ("example.com", "docs.example.jp", "api.example.org", "git.example.net", "cdn.example.co.jp")


def tech_line(rng: random.Random) -> str:
    """A line of a manual, a log, a table or code."""
    def n(low: int, high: int) -> int:
        return rng.randint(low, high)

    def w() -> str:
        return rng.choice(WORDS)

    domain = rng.choice(DOMAINS)
    code = (f"for (int i = 0; i < {w()}.size(); i++) {{",
            f"if ({w()} != NULL && {w()}->len > {n(0, 4096)}) return -{n(1, 9)};",
            f"{w()} = {w()}.get(\"{w()}\", {n(0, 100)})  # {rng.choice(['TODO', 'FIXME', 'NOTE'])}: {w()}",
            f"def {w()}_{w()}(self, {w()}: int = {n(0, 9)}) -> dict[str, {rng.choice(['int', 'str'])}]:",
            f"<div class=\"{w()}\"><a href=\"/{w()}/{n(1, 500)}\">{w()}</a></div>",
            f"let {w()} = await fetch(`https://{domain}/{w()}`).then(r => r.json());")
    return one_of(rng, [
        (0.22, lambda: f"{rng.choice(TECH_JA)}（詳細: https://{domain}/v{n(1, 3)}/{w()}?id={n(1, 99999)}&lang=ja）"),
        (0.18, lambda: "    " * n(0, 3) + rng.choice(code)),
        (0.15, lambda: f"{2019 + n(0, 6)}-{n(1, 12):02d}-{n(1, 28):02d} {n(0, 23):02d}:{n(0, 59):02d}:{n(0, 59):02d} "
                       f"{rng.choice(['INFO', 'WARN', 'ERROR', 'DEBUG'])} [{w()}] {n(10, 255)}.{n(0, 255)}.{n(0, 255)}."
                       f"{n(1, 254)}:{rng.choice([80, 443, 8080, 5432])} {w()}={n(0, 65535)} "
                       f"elapsed={n(1, 999)}.{n(0, 999):03d}ms"),
        (0.13, lambda: f"v{n(0, 4)}.{n(0, 20)}.{n(0, 9)}: {w()} の処理を{n(2, 9)}倍高速化しました（メモリ {n(1, 64)}GB → "
                       f"{n(1, 16)}GB、#{n(100, 9999)}）。"),
        (0.1, lambda: f"お問い合わせ: support{n(1, 9)}@{domain} / TEL 0{n(3, 9)}-{n(1000, 9999)}-{n(1000, 9999)}"
                      f"（平日{n(9, 10)}:00〜{n(17, 18)}:00）"),
        (0.1, lambda: f"| {w()} | {n(1, 9999):,} | {rng.random() * 100:.2f}% | 0x{n(0, 0xFFFF):04x} | {n(1, 99) * 100:,}円 |"),
        (0.12, lambda: f"$ {rng.choice(['pip install', 'git clone', 'curl -sSL', 'docker run --rm -p 8080:80'])} "
                       f"https://{domain}/{w()}/{w()}.git\t# {rng.choice(TECH_JA)}"),
    ])


GENERATORS: dict[str, Callable[[random.Random], str]] = {"news": news_line, "chat": chat_line, "tech": tech_line}


def make_text(kind: str, mib: float, seed: int = 1) -> str:
    """About `mib` MiB of UTF-8 from one generator; a blank line every 4-12 lines separates documents."""
    rng = random.Random(seed)
    lines, size, limit = [], 0, int(mib * 2 ** 20)
    while size < limit:
        line = GENERATORS[kind](rng)
        if lines and rng.random() < 0.12:
            line = "\n" + line
        lines.append(line)
        size += len(line.encode("utf-8")) + 1
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# Measurement
# ----------------------------------------------------------------------------------------------------------
def best_of(repeat: int, work: Callable[[], object]) -> tuple[float, object]:
    """Best wall time over `repeat` runs, and the last result."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - start)
    return min(times), result


def first_call(make: Callable[[], SWEEncoder], work: Callable[[SWEEncoder], object]) -> float:
    """Time of `work` on a freshly built encoder (empty caches)."""
    encoder = make()
    gc.collect()   # building allocates about a million objects: collect them now, not during the measurement
    start = time.perf_counter()
    work(encoder)
    return time.perf_counter() - start


def encode_rows(name: str, text: str, make: Callable[[], SWEEncoder], ours: SWEEncoder, ref: ReferenceSWE,
                repeat: int) -> list[dict]:
    """Whole text and line by line, clean off and on: chars/s of both, ratio, cold ratio; ids must agree."""
    lines = text.split("\n")
    chars = len(text)
    rows = []
    for clean in (False, True):
        cases = [
            ("whole", lambda e: e.encode(text, clean), lambda: ref.encode(text, clean)),
            ("lines (encode per line)", lambda e: [e.encode(line, clean) for line in lines],
             lambda: [ref.encode(line, clean) for line in lines]),
            ("lines (encode_batch)", lambda e: e.encode_batch(lines, clean), None),
        ]
        ref_time = expected = None
        for how, ours_work, ref_work in cases:
            if ref_work is not None:
                ref_time, expected = best_of(repeat, ref_work)
            cold = first_call(make, ours_work)
            ours_time, result = best_of(repeat, lambda: ours_work(ours))
            if result != expected:
                raise SystemExit(f"{name} {how} clean={clean}: ids differ from the reference")
            rows.append({"text": name, "how": how, "clean": clean, "ours": chars / ours_time, "reference":
                         chars / ref_time, "ratio": ref_time / ours_time, "cold_ratio": ref_time / cold})
    return rows


def decode_row(name: str, text: str, ours: SWEEncoder, ref: ReferenceSWE, repeat: int) -> dict:
    """Decoding the whole text's ids (identical text required)."""
    ids = ours.encode(text)
    ours_time, result = best_of(repeat, lambda: ours.decode(ids))
    ref_time, expected = best_of(repeat, lambda: ref.decode(ids))
    if result != expected:
        raise SystemExit(f"{name} decode: text differs from the reference")
    return {"text": name, "ours": len(text) / ours_time, "reference": len(text) / ref_time,
            "ratio": ref_time / ours_time}


def records_speed(texts: dict[str, str], vocabulary: Path, emoji: Path) -> dict:
    """`encode_swe.py records --mode lm --num_process 2` on the texts: wall time from process start to exit."""
    with tempfile.TemporaryDirectory() as folder:
        inputs = []
        for name, text in texts.items():
            path = Path(folder) / f"{name}.txt"
            path.write_text(text, encoding="utf-8")
            inputs.append(str(path))
        command = [sys.executable, str(REPO / "encode_swe.py"), "records", "--input", *inputs, "--output",
                   str(Path(folder) / "out"), "--mode", "lm", "--num_process", "2", "--vocabulary", str(vocabulary),
                   "--emoji", str(emoji)]
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        wall = time.perf_counter() - start
        summary = json.loads((Path(folder) / "out" / "records.json").read_text(encoding="utf-8"))
    inner = float(re.search(r"; ([\d.]+) s \(", result.stderr).group(1))
    chars = sum(map(len, texts.values()))
    return {"chars": chars, "tokens": summary["tokens"], "wall": wall, "inner": inner}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=float, default=1.0, help="size of each text in MiB (default: 1)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement, best counts (default: 3)")
    parser.add_argument("--texts", nargs="+", choices=list(GENERATORS), default=list(GENERATORS))
    parser.add_argument("--records", action="store_true", help="also time encode_swe.py records (2 processes)")
    parser.add_argument("--save", help="write the texts to this folder (to look at them)")
    args = parser.parse_args()

    vocabulary_lines, emoji = read_reference_files()   # the original ja-swe36k.txt and emoji.json
    load_time, ours = best_of(3, lambda: SWEEncoder(vocabulary_lines, emoji))
    ref = ReferenceSWE(vocabulary_lines, emoji)
    print(f"vocabulary: original ja-swe36k.txt; building our encoder from its lines: {load_time:.3f} s")
    texts = {name: make_text(name, args.mib) for name in args.texts}
    if args.save:
        for name, text in texts.items():
            Path(args.save, f"{name}.txt").write_text(text, encoding="utf-8")

    print(f"{'text':5} {'clean':5} {'how':24} {'ours chars/s':>13} {'ref chars/s':>12} {'ratio':>6} {'cold':>6}")
    for name, text in texts.items():
        print(f"# {name}: {len(text):,} characters, {text.count(chr(10)) + 1:,} lines, "
              f"{len(text.encode('utf-8')):,} bytes")
        for row in encode_rows(name, text, lambda: SWEEncoder(vocabulary_lines, emoji), ours, ref, args.repeat):
            print(f"{name:5} {'on' if row['clean'] else 'off':5} {row['how']:24} {row['ours']:13,.0f} "
                  f"{row['reference']:12,.0f} {row['ratio']:6.1f} {row['cold_ratio']:6.1f}")
        row = decode_row(name, text, ours, ref, args.repeat)
        print(f"{name:5} {'':5} {'decode whole':24} {row['ours']:13,.0f} {row['reference']:12,.0f} {row['ratio']:6.1f}")
    print("all ids identical to the reference")

    if args.records:
        from test_tokenizer_reference import REFERENCE_DIR

        speed = records_speed(texts, REFERENCE_DIR / "ja-swe36k.txt", REFERENCE_DIR / "emoji.json")
        print(f"encode_swe.py records --mode lm --num_process 2: {speed['chars']:,} characters, {speed['tokens']:,} "
              f"tokens; end to end {speed['wall']:.1f} s = {speed['chars'] / speed['wall']:,.0f} chars/s "
              f"(its own timer: {speed['inner']:.1f} s = {speed['chars'] / speed['inner']:,.0f} chars/s)")


if __name__ == "__main__":
    main()
