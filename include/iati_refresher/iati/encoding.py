"""Find a file's real text encoding and give lxml bytes it reads correctly.

The reference re-encoded text to UTF-8 but kept a non-UTF-8 declaration, so lxml decoded
it a second time and every text field came out as mojibake.  Here the source bytes are
never changed: :func:`sniff_encoding` works out what they really are (BOM, declaration,
a full streaming check that the bytes decode, and a bounded chardet sample when they do
not), and :func:`utf8_view` hands a parser either the original file (when lxml will read it
right by itself) or a transcoded UTF-8 copy whose declaration says UTF-8.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import chardet

CHUNK = 1024 * 1024
DECODE_SLICE = 16 * 1024
_DECL = re.compile(rb"""^\s*<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._:-]+)["']""")
_DECL_ANY = re.compile(rb"^\s*<\?xml[^>]*\?>")

BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


@dataclass(frozen=True)
class EncodingInfo:
    """What the bytes of a file are.

    :param encoding: Python codec that decodes the whole file, or ``None`` when undetectable.
    :param declared: the XML declaration's encoding, if any.
    :param bom: the codec implied by a byte-order mark, if any.
    :param needs_transcoding: True when lxml, trusting BOM/declaration/UTF-8 default,
        would misread the bytes, so parsers must get :func:`utf8_view`'s copy.
    :param reason: one line saying how the encoding was decided (for the status page).
    """

    encoding: str | None
    declared: str | None
    bom: str | None
    needs_transcoding: bool
    reason: str


def _normalise(name: str) -> str | None:
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


def _declared_encoding(head: bytes, bom: str | None) -> str | None:
    if bom in ("utf-16", "utf-32"):
        text = head.decode(bom, errors="ignore").encode("ascii", errors="ignore")
    else:
        text = head[3:] if head.startswith(codecs.BOM_UTF8) else head
    m = _DECL.match(text[:512])
    return m.group(1).decode("ascii") if m else None


SINGLE_BYTE = {"iso8859-1", "cp1252", "latin-1", "iso8859-15"}


def _decodes(path: str | os.PathLike[str], encoding: str) -> tuple[bool, int, bool]:
    """Stream the file through an incremental decoder.

    :return: (decodes, offset of the first undecodable chunk, any byte >= 0x80 seen)
    """
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    offset = 0
    non_ascii = False
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            non_ascii = non_ascii or not chunk.isascii()
            view = memoryview(chunk)
            # Decode in small slices: megabyte-sized decoded strings fragment the heap, so
            # peak memory would otherwise grow with the file size.
            for start in range(0, len(chunk), DECODE_SLICE):
                try:
                    decoder.decode(view[start : start + DECODE_SLICE])
                except UnicodeDecodeError as exc:
                    return False, offset + start + max(0, exc.start), non_ascii
            offset += len(chunk)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return False, offset, non_ascii
    return True, offset, non_ascii


def _looks_binary(sample: bytes) -> bool:
    return b"\x00" in sample


def sniff_encoding(path: str | os.PathLike[str], sample_bytes: int = 256 * 1024) -> EncodingInfo:
    with open(path, "rb") as f:
        head = f.read(sample_bytes)
    bom = next((codec for mark, codec in BOMS if head.startswith(mark)), None)
    declared = _declared_encoding(head, bom)
    if bom:
        ok, _, _ = _decodes(path, bom)
        if ok:
            return EncodingInfo(bom, declared, bom, False, f"byte-order mark ({bom})")
    elif _looks_binary(head):
        return EncodingInfo(None, declared, None, False, "binary content (NUL bytes), not a text file")
    candidate = _normalise(declared) if declared else "utf-8"
    bad_at = 0
    if candidate in SINGLE_BYTE:
        # Latin-1 decodes any bytes, so test the common mistake first: UTF-8 text under a
        # single-byte declaration (multi-byte sequences that are valid UTF-8 are no accident).
        ok, _, non_ascii = _decodes(path, "utf-8")
        if ok and non_ascii:
            return EncodingInfo("utf-8", declared, bom, True, f"declared {declared} but the bytes are UTF-8")
    if candidate:
        ok, bad_at, _ = _decodes(path, candidate)
        if ok:
            how = f"declared {declared}" if declared else "no declaration, valid UTF-8"
            return EncodingInfo(candidate, declared, bom, False, how)
    # The declaration (or the UTF-8 default) is wrong: detect on a bounded sample taken
    # where the trouble starts, plus the head for context.
    with open(path, "rb") as f:
        f.seek(max(0, bad_at - sample_bytes // 2))
        sample = head[: sample_bytes // 4] + f.read(sample_bytes // 2)
    guess = chardet.detect(sample)
    guessed = _normalise(guess.get("encoding") or "") if guess.get("encoding") else None
    # chardet is unsure on short samples of Western text; Windows-1252 is then by far the
    # likeliest publisher mistake, so a confident guess wins and cp1252 comes next.
    order = [guessed] if guessed and (guess.get("confidence") or 0) >= 0.9 else []
    order += ["cp1252"] + ([guessed] if guessed else [])
    said = f"declared {declared}" if declared else "undeclared"
    for detected in dict.fromkeys(e for e in order if e and e not in ("ascii", candidate)):
        ok, _, _ = _decodes(path, detected)
        if ok:
            return EncodingInfo(detected, declared, bom, True, f"{said} but the bytes are {detected}")
    return EncodingInfo(None, declared, bom, False, "no character encoding decodes this file")


@contextlib.contextmanager
def utf8_view(path: str | os.PathLike[str], info: EncodingInfo) -> Iterator[str]:
    """A path lxml parses correctly: the file itself, or a UTF-8 transcoded temporary copy."""
    if not info.needs_transcoding or not info.encoding:
        yield str(path)
        return
    decoder = codecs.getincrementaldecoder(info.encoding)(errors="replace")
    with tempfile.NamedTemporaryFile(prefix="utf8-view-", suffix=".xml", delete=False) as out:
        try:
            first = True
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK):
                    view = memoryview(chunk)
                    for start in range(0, len(chunk), DECODE_SLICE):
                        text = decoder.decode(view[start : start + DECODE_SLICE])
                        if first:
                            text = _rewrite_declaration(text)
                            first = False
                        out.write(text.encode("utf-8"))
                out.write(decoder.decode(b"", final=True).encode("utf-8"))
            out.close()
            yield out.name
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(out.name)


def _rewrite_declaration(text: str) -> str:
    text = text.lstrip("\ufeff")
    m = re.match(r"""^\s*<\?xml[^>]*\?>""", text)
    if not m:
        return text
    decl = re.sub(r"""encoding\s*=\s*["'][^"']*["']""", 'encoding="UTF-8"', m.group(0))
    return decl + text[m.end() :]
