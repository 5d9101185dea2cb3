"""The shipped Noto fonts: the very bytes thumbnails were drawn with, their licence, the wheel."""

from __future__ import annotations

import configparser
import hashlib
from pathlib import Path

from preview_worker.render import fonts

from .conftest import ROOT

# Changing a font changes thumbnails: a new file here goes with a new RENDERER_VERSION.
PINNED = {
    "NotoSans[wght].ttf": "fb53504de62e767a54695416123d68d67f71c9b69722175184ad56e7dd13547b",
    "NotoSansSymbols[wght].ttf": "63724daeff6755a45933b9a5e3a3b41df5df8fe925c0f4c991f2f68c08a4182d",
    "NotoEmoji[wght].ttf": "de6c18832938afc99caf132b39d6a30a19bac7f2e812e28db2535b4608d27551",
    "NotoSansCJK-VF.otf.ttc": "d3d8256cdec8dbcb3552284bc6b20c734dd60c2ee9df83b5758e34807c4bac32",
    "NotoSansArabic[wght].ttf": "3fae4d7239d1faa55b234bda8091019a5251ff79df40d5e29367d84bed2a8138",
    "NotoSansHebrew[wght].ttf": "9d81d81ad592644487b03843da73a87b99cd28a2c4da4a096e1db8fbd14fda61",
    "NotoSansDevanagari[wght].ttf": (
        "bf99bf762743ff3259e73196852520ab0ffe8d384238bff3e4806a84b981e972"
    ),
    "NotoSansThai[wght].ttf": "13f52f79b04f01f2751a81052a5dee2df639fd4e13f4ac30821ab45c8dd5f7e7",
}


def test_every_shipped_font_has_its_pinned_bytes() -> None:
    """The font folder holds exactly the pinned files, byte for byte, and their licence."""
    shipped = {path.name for path in fonts.FONT_DIR.iterdir() if path.suffix in (".ttf", ".ttc")}
    assert shipped == set(PINNED)
    for name, digest in PINNED.items():
        assert hashlib.sha256((fonts.FONT_DIR / name).read_bytes()).hexdigest() == digest, name


def test_the_licence_names_every_shipped_font() -> None:
    """OFL.txt carries the Open Font License and names each file with its copyright."""
    licence = (fonts.FONT_DIR / "OFL.txt").read_text("utf-8")
    assert "SIL OPEN FONT LICENSE Version 1.1" in licence
    assert all(name in licence for name in PINNED)


def test_every_face_the_renderer_uses_is_shipped() -> None:
    """Each face of every fallback chain resolves to a shipped file."""
    used = {source.filename for language in ("en", "ja", "zh-TW", "ko")
            for source in fonts.fallback_chain(language).sources}
    assert used <= set(PINNED)
    assert all(fonts.font_path(source).is_file() for source in fonts.fallback_chain("ja").sources)


def test_the_wheel_takes_every_shipped_file() -> None:
    """setup.cfg's package data patterns cover each file of the font folder."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    patterns = [
        pattern.strip()
        for pattern in config["options.package_data"]["preview_worker.render"].split(",")
    ]
    render_dir = Path(fonts.__file__).parent
    for path in fonts.FONT_DIR.iterdir():
        if path.is_file():
            relative = path.relative_to(render_dir)
            assert any(relative.match(pattern) for pattern in patterns), relative
