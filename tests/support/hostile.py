"""Hostile and awkward publisher files, written in code (no copies of real data).

Each generator returns the bytes a publisher server would send.  The activities are valid
against the IATI 2.03 schema unless the case is about invalid data, so whatever happens to a
file is caused by the hostile part alone.

Also here:

* :func:`write_big_file` streams a file of any size to disk by repeating one activity (the
  file is never held in memory);
* :class:`OpenWatch` notices any process opening or reading a file (Linux inotify), to prove
  that an external entity pointing at a local file was never resolved.
"""

from __future__ import annotations

import codecs
import ctypes
import ctypes.util
import os
import struct
from collections.abc import Iterable
from pathlib import Path
from xml.sax.saxutils import escape

DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>\n'
ROOT_OPEN = '<iati-activities version="2.03" generated-datetime="2026-03-02T09:15:00Z">\n'
ROOT_CLOSE = "</iati-activities>\n"
REPORTER = "XX-HOSTILE"


def activity(
    identifier: str,
    *,
    title: str = "Water points for district clinics",
    description: str = "Drills and equips water points at rural clinics.",
    inside_budget: str = "",
    transactions: int = 1,
    raw_identifier: str | None = None,
) -> str:
    """One schema-valid ``iati-activity``.

    :param identifier: the identifier (escaped); ``raw_identifier`` replaces it verbatim
        (comments, character references...).
    :param inside_budget: markup placed at the end of the activity's budget element.
    :param transactions: how many transactions to add (a big activity has many).
    """
    ident = raw_identifier if raw_identifier is not None else escape(identifier)
    rows = "".join(
        f"""  <transaction ref="{escape(identifier)}-T{n}">
   <transaction-type code="2"/>
   <transaction-date iso-date="2025-01-15"/>
   <value currency="EUR" value-date="2025-01-15">{1000 + n}</value>
   <description><narrative>Instalment {n} of the works contract</narrative></description>
  </transaction>
"""
        for n in range(transactions)
    )
    return f""" <iati-activity last-updated-datetime="2026-02-27T16:40:00Z" xml:lang="en" default-currency="EUR">
  <iati-identifier>{ident}</iati-identifier>
  <reporting-org ref="{REPORTER}" type="60"><narrative>Hostile Input Trust</narrative></reporting-org>
  <title><narrative>{title}</narrative></title>
  <description type="1"><narrative>{description}</narrative></description>
  <participating-org ref="{REPORTER}" role="1" type="60"><narrative>Hostile Input Trust</narrative></participating-org>
  <activity-status code="2"/>
  <activity-date iso-date="2025-01-01" type="1"/>
  <recipient-country code="KE" percentage="100"/>
  <sector code="14030" vocabulary="1" percentage="100"/>
  <budget type="1" status="2">
   <period-start iso-date="2025-01-01"/>
   <period-end iso-date="2025-12-31"/>
   <value currency="EUR" value-date="2025-01-01">250000</value>{inside_budget}
  </budget>
{rows} </iati-activity>
"""


def activities_file(*activities: str, declaration: str = DECLARATION, prolog: str = "") -> str:
    """An ``iati-activities`` document around ``activities`` (text, to be encoded by the caller)."""
    return declaration + prolog + ROOT_OPEN + "".join(activities) + ROOT_CLOSE


def utf8(*activities: str, **kwargs: str) -> bytes:
    return activities_file(*activities, **kwargs).encode("utf-8")


# --- what must never be resolved --------------------------------------------------------------


def external_file_entity(secret_path: str | os.PathLike[str]) -> bytes:
    """An external entity that would paste a local file into a narrative."""
    prolog = f'<!DOCTYPE iati-activities [\n <!ENTITY secret SYSTEM "file://{Path(secret_path).resolve()}">\n]>\n'
    return utf8(activity("XX-HOSTILE-XXE-FILE", title="&secret;"), prolog=prolog)


def external_network_entity(url: str) -> bytes:
    """An external entity fetched over HTTP."""
    prolog = f'<!DOCTYPE iati-activities [\n <!ENTITY remote SYSTEM "{url}">\n]>\n'
    return utf8(activity("XX-HOSTILE-XXE-HTTP", title="&remote;"), prolog=prolog)


def parameter_entity(url: str) -> bytes:
    """A parameter entity that loads a remote DTD inside the internal subset (blind XXE)."""
    prolog = f'<!DOCTYPE iati-activities [\n <!ENTITY % remote SYSTEM "{url}">\n %remote;\n]>\n'
    return utf8(activity("XX-HOSTILE-XXE-PARAM"), prolog=prolog)


def external_dtd(url: str) -> bytes:
    """A document type whose DTD lives on a server."""
    return utf8(activity("XX-HOSTILE-DTD"), prolog=f'<!DOCTYPE iati-activities SYSTEM "{url}">\n')


def billion_laughs(levels: int = 10) -> bytes:
    """Nested entities that expand to 10**levels copies of "lol"."""
    entities = ['<!ENTITY lol0 "lol">'] + [f'<!ENTITY lol{n} "{f"&lol{n - 1};" * 10}">' for n in range(1, levels)]
    prolog = "<!DOCTYPE iati-activities [\n " + "\n ".join(entities) + "\n]>\n"
    return utf8(activity("XX-HOSTILE-LAUGHS", title=f"&lol{levels - 1};"), prolog=prolog)


def xinclude(secret_path: str | os.PathLike[str]) -> bytes:
    """An XInclude element (foreign namespace, so schema-valid) pointing at a local file."""
    markup = (
        f'\n   <xi:include xmlns:xi="http://www.w3.org/2001/XInclude" parse="text" '
        f'href="file://{Path(secret_path).resolve()}"/>'
    )
    return utf8(activity("XX-HOSTILE-XINCLUDE", inside_budget=markup))


# --- broken or not IATI ---------------------------------------------------------------------------


def truncated() -> bytes:
    """A file cut off in the middle of its second activity."""
    data = utf8(activity("XX-HOSTILE-TRUNC-1"), activity("XX-HOSTILE-TRUNC-2"))
    cut = data.index(b"<iati-identifier>XX-HOSTILE-TRUNC-2") + 60
    return data[:cut]


def not_iati() -> bytes:
    return (
        DECLARATION + '<rss version="2.0"><channel><title>Publisher news</title>'
        "<item><title>New report</title></item></channel></rss>\n"
    ).encode()


def empty() -> bytes:
    return b""


def zero_activities() -> bytes:
    return utf8()


def binary(size: int = 64 * 1024) -> bytes:
    """Bytes that are no text in any encoding (NULs and every byte value)."""
    return (bytes(range(256)) * (size // 256 + 1))[:size]


# --- identifiers -------------------------------------------------------------------------------


def identifiers_with_comments_and_carriage_returns() -> bytes:
    """Identifiers split by a comment, ending in ``&#13;`` or broken by a literal CR LF.

    All three normalise to the identifier in their title (see ``iati.identifiers``).
    """
    return utf8(
        activity("", raw_identifier="XX-HOSTILE-<!-- old prefix: XX-H -->CMT-1", title="XX-HOSTILE-CMT-1"),
        activity("", raw_identifier="XX-HOSTILE-CR-2&#13;", title="XX-HOSTILE-CR-2"),
        activity("", raw_identifier="XX-HOSTILE-\r\nCRLF-3", title="XX-HOSTILE-CRLF-3"),
    )


def duplicate_identifiers() -> bytes:
    """Two different activities published under one identifier."""
    return utf8(
        activity("XX-HOSTILE-DUP", title="First activity with this identifier"),
        activity("XX-HOSTILE-DUP", title="Second activity with this identifier"),
    )


def namespace_below_activity() -> bytes:
    """A publisher extension whose namespace is declared on the element, not the root."""
    markup = '\n   <bo:fin xmlns:bo="http://bo.example.org/ns/1">42</bo:fin>'
    return utf8(activity("XX-HOSTILE-NS", inside_budget=markup))


# --- encodings ------------------------------------------------------------------------------------

LATIN1_TITLE = "Éducation des filles à Niñera"
CP1252_TITLE = "\u201cClean water\u201d \u2013 phase two, caf\u00e9"  # smart quotes, en dash: bytes 0x93 0x94 0x96


def latin1_declared() -> bytes:
    text = activities_file(
        activity("XX-HOSTILE-LATIN1", title=LATIN1_TITLE),
        declaration='<?xml version="1.0" encoding="ISO-8859-1"?>\n',
    )
    return text.encode("latin-1")


def cp1252_undeclared() -> bytes:
    """Windows-1252 bytes with no declaration at all (so UTF-8 is what XML assumes)."""
    return activities_file(activity("XX-HOSTILE-CP1252", title=CP1252_TITLE), declaration="").encode("cp1252")


def utf16_with_bom() -> bytes:
    text = activities_file(
        activity("XX-HOSTILE-UTF16", title="\u00dast\u00ed \u2013 \u6c34 water"),
        declaration='<?xml version="1.0" encoding="UTF-16"?>\n',
    )
    return text.encode("utf-16")  # little-endian here, with its byte-order mark


def utf8_with_bom() -> bytes:
    return codecs.BOM_UTF8 + utf8(activity("XX-HOSTILE-UTF8BOM", title="Sa\u00fade \u2013 \u00e1gua"))


# --- size -----------------------------------------------------------------------------------------


def huge_activity(transactions: int) -> bytes:
    """One activity made big by many transactions (memory is bounded by the largest activity)."""
    return utf8(activity("XX-HOSTILE-HUGE", transactions=transactions))


def write_big_file(path: str | os.PathLike[str], target_bytes: int, *, invalid_every: int = 0) -> int:
    """Stream an activities file of about ``target_bytes`` to ``path``; returns the activities written.

    The same activity is repeated under new identifiers; with ``invalid_every`` every n-th one
    is made schema-invalid (a text value), so cleaning has to rewrite the file.
    """
    count = 0
    with open(path, "wb") as out:
        for chunk in _big_file_chunks(target_bytes, invalid_every):
            if chunk is None:
                count += 1
            else:
                out.write(chunk)
    return count


def _big_file_chunks(target_bytes: int, invalid_every: int) -> Iterable[bytes | None]:
    yield (DECLARATION + ROOT_OPEN).encode()
    template = activity("XX-HOSTILE-BIG-{n}", transactions=20)
    broken = template.replace(">1000<", ">about a thousand<", 1)
    size = len(template.encode())
    written = 0
    n = 0
    buffer: list[str] = []
    while written < target_bytes:
        source = broken if invalid_every and n % invalid_every == invalid_every - 1 else template
        buffer.append(source.replace("{n}", str(n)))
        written += size
        n += 1
        yield None
        if len(buffer) >= 256:
            yield "".join(buffer).encode()
            buffer.clear()
    if buffer:
        yield "".join(buffer).encode()
    yield ROOT_CLOSE.encode()


# --- noticing file access -----------------------------------------------------------------------

IN_ACCESS = 0x001
IN_OPEN = 0x020
_EVENT = struct.Struct("iIII")


class OpenWatch:
    """Counts opens and reads of one file by any process, from now on (Linux inotify).

    Use as a context manager; :meth:`events` reads what happened so far.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self._libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self._fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        if self._libc.inotify_add_watch(self._fd, os.fsencode(self.path), IN_OPEN | IN_ACCESS) < 0:
            os.close(self._fd)
            raise OSError(ctypes.get_errno(), f"cannot watch {self.path}")
        self._count = 0

    def events(self) -> int:
        """How many open or read events the file has had since the watch started."""
        while self._fd >= 0:
            try:
                data = os.read(self._fd, 64 * 1024)
            except BlockingIOError:
                return self._count
            offset = 0
            while offset < len(data):
                _wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                if mask & (IN_OPEN | IN_ACCESS):
                    self._count += 1
                offset += _EVENT.size + length
        return self._count

    def close(self) -> None:
        """Stop watching; :meth:`events` still answers with what happened until now."""
        if self._fd >= 0:
            self.events()
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> OpenWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
