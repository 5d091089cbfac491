"""Rebuild NotoSansSC-Bold-GB2312.otf from a Noto Sans CJK collection (needs fonttools).

    python worker/assets/fonts/make_subset.py /usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc
"""

import contextlib
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
SC_FACE = 2  # in Noto Sans CJK collections: JP, KR, SC, TC, HK, then the Mono faces
EXTRA_UNICODES = (
    "U+0020-007E,U+00A0-017F,U+00B0,U+00D7,U+00F7,U+2000-206F,U+20AC,U+2190-21FF,U+2212,"
    "U+3000-303F,U+FF00-FFEF"
)


def gb2312_characters() -> str:
    """Every character GB2312 encodes: symbol rows and the 6,763 hanzi."""
    found = []
    for high in range(0xA1, 0xF8):
        for low in range(0xA1, 0xFF):
            with contextlib.suppress(UnicodeDecodeError):  # unassigned code points
                found.append(bytes([high, low]).decode("gb2312"))
    return "".join(found)


def main(collection: str) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".txt", encoding="utf-8") as text_file:
        text_file.write(gb2312_characters())
        text_file.flush()
        subprocess.run([
            sys.executable, "-m", "fontTools.subset", collection, f"--font-number={SC_FACE}",
            f"--text-file={text_file.name}", f"--unicodes={EXTRA_UNICODES}",
            "--layout-features=kern,liga,palt,locl", "--no-hinting",
            f"--output-file={HERE / 'NotoSansSC-Bold-GB2312.otf'}",
        ], check=True)


if __name__ == "__main__":
    main(sys.argv[1])
