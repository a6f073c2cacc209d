# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled hot paths: tree walks for flatten and lakify (libxml2's nodes read through lxml's
public C API), JSON string literals for the lake bundle, and the jsonb key order for index.

The pure-Python code in :mod:`iati_refresher.stages.flatten`, :mod:`~iati_refresher.stages.lakify`
and :mod:`~iati_refresher.stages.index` defines the rules; these functions give the same results
without creating a Python proxy object for every element (most of those stages' time).
``tests/unit/test_compiled.py`` holds the two implementations equal on every fixture.

No libxml2 function is called: only node fields are read, so the module works with the
libxml2 that lxml links statically.  It is built against the installed lxml's headers
(``setup.py``) and refuses to load under another lxml or libxml2 version.
"""

from cpython.unicode cimport (
    Py_UCS1,
    PyUnicode_DATA,
    PyUnicode_DecodeUTF8,
    PyUnicode_GET_LENGTH,
    PyUnicode_KIND,
    PyUnicode_READ,
)
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy, strcmp, strlen

cimport lxml.includes.etreepublic as cetree
from lxml.includes cimport tree
from lxml.includes.tree cimport xmlAttr, xmlNode, xmlNs

from lxml import etree

cetree.import_lxml__etree()

# The versions this module was compiled against (setup.py writes them into _compiled_build.pxi).
include "_compiled_build.pxi"

if etree.LXML_VERSION != BUILT_LXML_VERSION or etree.LIBXML_VERSION != BUILT_LIBXML_VERSION:
    raise ImportError(
        f"_compiled was built for lxml {BUILT_LXML_VERSION} / libxml2 {BUILT_LIBXML_VERSION}, "
        f"found lxml {etree.LXML_VERSION} / libxml2 {etree.LIBXML_VERSION}: rebuild it (make deps)"
    )

cdef int ELEMENT = tree.XML_ELEMENT_NODE
cdef int TEXT = tree.XML_TEXT_NODE
cdef int CDATA = tree.XML_CDATA_SECTION_NODE
cdef int XINCLUDE_START = tree.XML_XINCLUDE_START
cdef int XINCLUDE_END = tree.XML_XINCLUDE_END
cdef const char* XML_NS = b"http://www.w3.org/XML/1998/namespace"
cdef const char* NARRATIVE = b"narrative"
# Beyond this many distinct child tags under one element, the Python walk (a dict) is used.
cdef int MAX_DISTINCT_TAGS = 64
cdef int MAX_DEPTH = 256
# libxml2 itself stops at 2048 levels (XML_PARSE_HUGE); this only keeps the C stack safe.
cdef int MAX_FLAT_DEPTH = 4096


cdef inline str _utf8(const unsigned char* s):
    return PyUnicode_DecodeUTF8(<const char*>s, strlen(<const char*>s), NULL)


cdef inline const unsigned char* _href(xmlNs* ns):
    if ns is NULL:
        return NULL
    return ns.href


cdef str _clark(const unsigned char* name, xmlNs* ns):
    """lxml's tag form: ``{uri}local``, or ``local`` without a namespace."""
    cdef const unsigned char* href = _href(ns)
    if href is NULL:
        return _utf8(name)
    return "{" + _utf8(href) + "}" + _utf8(name)


cdef inline xmlNode* _text_or_skip(xmlNode* c_node):
    while c_node is not NULL:
        if c_node.type == TEXT or c_node.type == CDATA:
            return c_node
        if c_node.type == XINCLUDE_START or c_node.type == XINCLUDE_END:
            c_node = c_node.next
            continue
        return NULL
    return NULL


cdef object _element_text(xmlNode* c_node):
    """``element.text`` as lxml computes it: the first run of text/CDATA children (``None``: none)."""
    cdef xmlNode* first = _text_or_skip(c_node.children)
    cdef xmlNode* cur
    if first is NULL:
        return None
    if _text_or_skip(first.next) is NULL:
        return _utf8(first.content) if first.content is not NULL else ""
    parts = []
    cur = first
    while cur is not NULL:
        if cur.content is not NULL:
            parts.append(_utf8(cur.content))
        cur = _text_or_skip(cur.next)
    return "".join(parts)


cdef object _attribute_value(xmlAttr* attr):
    """The value of an attribute made only of text nodes; ``None`` otherwise (ask lxml)."""
    cdef xmlNode* child = attr.children
    if child is NULL:
        return ""
    if child.next is NULL and child.type == TEXT:
        return _utf8(child.content) if child.content is not NULL else ""
    parts = []
    while child is not NULL:
        if child.type != TEXT:
            return None
        if child.content is not NULL:
            parts.append(_utf8(child.content))
        child = child.next
    return "".join(parts)


# ---------------------------------------------------------------------------------------
# flatten
# ---------------------------------------------------------------------------------------


cdef inline void _add(dict out, str key, str value):
    current = out.get(key)
    if current is None:
        out[key] = value
    elif type(current) is list:
        (<list>current).append(value)
    else:
        out[key] = [current, value]


cdef object _proxy(cetree._Element owner, xmlNode* c_node):
    return cetree.elementFactory(owner._doc, c_node)


cdef _flat_attributes(cetree._Element owner, xmlNode* c_node, list node, dict out, object naming,
                      object normalise_date):
    """An element's attributes as fields (``_walk``'s first step): names from ``node``'s table,
    dates normalised (an unusable date is dropped), values stripped."""
    cdef dict attributes = node[2]
    cdef xmlAttr* attr = c_node.properties
    element = None
    while attr is not NULL:
        name = _clark(attr.name, attr.ns)
        entry = attributes.get(name)
        if entry is None:
            if element is None:
                element = _proxy(owner, c_node)
            entry = naming.attribute(node, name, element)
        key, is_date = entry
        value = _attribute_value(attr)
        if value is None:
            if element is None:
                element = _proxy(owner, c_node)
            value = element.get(name)
        value = value.strip()
        attr = attr.next
        if is_date:
            value = normalise_date(value)
            if value is None:
                continue
        _add(out, key, value)


cdef _flat_walk(cetree._Element owner, xmlNode* c_node, list node, dict out, object naming,
                object normalise_date, int depth):
    cdef str prefix = node[0]
    text_is_date = node[1]
    cdef dict children = node[3]
    cdef xmlNode* child
    if depth > MAX_FLAT_DEPTH:
        raise RecursionError("elements nested too deep to flatten")
    _flat_attributes(owner, c_node, node, out, naming, normalise_date)
    if text_is_date is not None:
        text = _element_text(c_node)
        if text is not None:
            text = text.strip()
            if text:
                if text_is_date:
                    text = normalise_date(text)
                if text is not None:
                    _add(out, prefix, text)
    child = c_node.children
    while child is not NULL:
        if child.type == ELEMENT:
            tag = _clark(child.name, child.ns)
            child_node = children.get(tag)
            if child_node is None:
                child_node = naming.child(node, tag, _proxy(owner, child))
            _flat_walk(owner, child, child_node, out, naming, normalise_date, depth + 1)
        child = child.next


def flat_walk(cetree._Element element, list node, dict out, naming, normalise_date):
    """``flatten._walk`` (attributes, own text, then children, recursively) on libxml2's nodes."""
    _flat_walk(element, element._c_node, node, out, naming, normalise_date, 0)


# ---------------------------------------------------------------------------------------
# lakify: the recursive_json_nest form written straight to JSON
# ---------------------------------------------------------------------------------------


cdef struct Buffer:
    char* data
    size_t length
    size_t capacity


cdef int _grow(Buffer* b, size_t extra) except -1:
    cdef size_t wanted = b.length + extra
    cdef size_t capacity
    cdef char* data
    if wanted <= b.capacity:
        return 0
    capacity = b.capacity * 2 if b.capacity else 65536
    while capacity < wanted:
        capacity *= 2
    data = <char*>realloc(b.data, capacity)
    if data is NULL:
        raise MemoryError()
    b.data = data
    b.capacity = capacity
    return 0


cdef inline int _put(Buffer* b, const char* s, size_t n) except -1:
    if b.length + n > b.capacity:
        _grow(b, n)
    memcpy(b.data + b.length, s, n)
    b.length += n
    return 0


cdef const char* HEX = b"0123456789abcdef"


cdef int _put_ascii_escape(Buffer* b, unsigned char c) except -1:
    """The JSON escape of ``"``, ``\\`` or an ASCII control character, as ``json.dumps`` writes
    it; 1 when it is one ``solr_client.needs_cleaning`` looks for (a control character other
    than tab, newline and carriage return), else 0."""
    if c == 0x22:
        _put(b, b'\\"', 2)
    elif c == 0x5c:
        _put(b, b"\\\\", 2)
    elif c == 0x0a:
        _put(b, b"\\n", 2)
    elif c == 0x0d:
        _put(b, b"\\r", 2)
    elif c == 0x09:
        _put(b, b"\\t", 2)
    elif c == 0x08:
        _put(b, b"\\b", 2)
        return 1
    elif c == 0x0c:
        _put(b, b"\\f", 2)
        return 1
    else:
        _put_u(b, c)
        return 1 if c < 0x20 else 0
    return 0


cdef int _put_string_body(Buffer* b, const unsigned char* s) except -1:
    """The characters of a JSON string as ``json.dumps(..., ensure_ascii=False)`` writes them."""
    cdef size_t start = 0
    cdef size_t i = 0
    cdef unsigned char c
    if s is NULL:
        return 0
    while True:
        c = s[i]
        if c == 0:
            break
        if c >= 0x20 and c != 0x22 and c != 0x5c:
            i += 1
            continue
        if i > start:
            _put(b, <const char*>s + start, i - start)
        _put_ascii_escape(b, c)
        i += 1
        start = i
    if i > start:
        _put(b, <const char*>s + start, i - start)
    return 0


cdef int _put_key(Buffer* b, const char* lead, const unsigned char* href, const unsigned char* name) except -1:
    """``"<lead>{href}name": `` (``lead`` is ``@`` for attributes)."""
    _put(b, b'"', 1)
    _put(b, lead, strlen(lead))
    if href is not NULL:
        _put(b, b"{", 1)
        _put_string_body(b, href)
        _put(b, b"}", 1)
    _put_string_body(b, name)
    _put(b, b'": ', 3)
    return 0


cdef bint _same_name(xmlNode* a, xmlNode* b):
    cdef const unsigned char* ha
    cdef const unsigned char* hb
    if a.name != b.name and strcmp(<const char*>a.name, <const char*>b.name) != 0:
        return False
    ha = _href(a.ns)
    hb = _href(b.ns)
    if ha is NULL or hb is NULL:
        return ha is NULL and hb is NULL
    return ha == hb or strcmp(<const char*>ha, <const char*>hb) == 0


cdef bint _is_blank_ascii(const unsigned char* s, bint* decided):
    """Whether ASCII-only text is all whitespace as ``str.isspace`` says; ``decided`` is False
    when a non-ASCII byte leaves the answer to Python."""
    cdef size_t i = 0
    cdef unsigned char c
    decided[0] = True
    while True:
        c = s[i]
        if c == 0:
            return True
        if c >= 0x80:
            decided[0] = False
            return False
        if not (c == 0x20 or (0x09 <= c <= 0x0d) or (0x1c <= c <= 0x1f)):
            return False
        i += 1


cdef bint _has_text(xmlNode* c_node) except -1:
    """Whether lxml's ``element.text`` is non-empty and not all whitespace."""
    cdef xmlNode* first = _text_or_skip(c_node.children)
    cdef bint decided
    cdef bint blank
    if first is NULL:
        return False
    if _text_or_skip(first.next) is NULL:
        if first.content is NULL or first.content[0] == 0:
            return False
        blank = _is_blank_ascii(first.content, &decided)
        if decided:
            return not blank
    text = _element_text(c_node)
    return bool(text) and not text.isspace()


cdef int _put_text(Buffer* b, xmlNode* c_node) except -1:
    cdef xmlNode* cur = _text_or_skip(c_node.children)
    _put(b, b'"', 1)
    while cur is not NULL:
        _put_string_body(b, cur.content)
        cur = _text_or_skip(cur.next)
    _put(b, b'"', 1)
    return 0


class _ExactPath(Exception):
    """Raised inside the nest when the element needs the exact (Python) rules."""


cdef int _nest(Buffer* b, xmlNode* c_node, xmlNode** path, int depth) except -1:
    """One element's nest dict as JSON; -1 with _ExactPath when the fast rules do not apply."""
    cdef xmlAttr* attr = c_node.properties
    cdef xmlNode* child
    cdef xmlNode* other
    cdef xmlNode* tags[64]
    cdef int distinct = 0
    cdef int i
    cdef bint first_member = True
    cdef bint first_item
    cdef const unsigned char* href
    if depth >= MAX_DEPTH:
        raise _ExactPath()
    _put(b, b"{", 1)
    while attr is not NULL:
        if not first_member:
            _put(b, b", ", 2)
        first_member = False
        href = _href(attr.ns)
        if href is not NULL and strcmp(<const char*>href, XML_NS) == 0:
            _put_key(b, b"@xml:", NULL, attr.name)
        else:
            _put_key(b, b"@", href, attr.name)
        child = attr.children
        _put(b, b'"', 1)
        while child is not NULL:
            if child.type != TEXT:
                raise _ExactPath()
            _put_string_body(b, child.content)
            child = child.next
        _put(b, b'"', 1)
        attr = attr.next
    if _has_text(c_node):
        if not first_member:
            _put(b, b", ", 2)
        first_member = False
        _put(b, b'"text()": ', 10)
        _put_text(b, c_node)
    elif c_node.ns is NULL and strcmp(<const char*>c_node.name, NARRATIVE) == 0:
        if not first_member:
            _put(b, b", ", 2)
        first_member = False
        _put(b, b'"text()": ""', 12)
    # Distinct child tags in first-occurrence order; same-tag nesting, comments, PIs and
    # entity references take the exact path.
    child = c_node.children
    while child is not NULL:
        if child.type == ELEMENT:
            for i in range(depth + 1):
                if _same_name(path[i], child):
                    raise _ExactPath()
            for i in range(distinct):
                if _same_name(tags[i], child):
                    break
            else:
                if distinct >= MAX_DISTINCT_TAGS:
                    raise _ExactPath()
                tags[distinct] = child
                distinct += 1
        elif child.type != TEXT and child.type != CDATA:
            raise _ExactPath()
        child = child.next
    path[depth + 1] = NULL
    for i in range(distinct):
        if not first_member:
            _put(b, b", ", 2)
        first_member = False
        _put_key(b, b"", _href(tags[i].ns), tags[i].name)
        _put(b, b"[", 1)
        first_item = True
        other = tags[i]
        while other is not NULL:
            if other.type == ELEMENT and _same_name(other, tags[i]):
                if not first_item:
                    _put(b, b", ", 2)
                first_item = False
                path[depth + 1] = other
                _nest(b, other, path, depth + 1)
            other = other.next
        _put(b, b"]", 1)
    _put(b, b"}", 1)
    return 0


def nest_json(cetree._Element activity):
    """``json.dumps(nest_activity(activity), ensure_ascii=False)``, or ``None`` when the
    activity has comments, PIs, entity references or an element inside one of the same tag
    (the exact rules, in Python, apply then)."""
    cdef Buffer b
    cdef xmlNode* c_node = activity._c_node
    cdef xmlNode** path = <xmlNode**>malloc((MAX_DEPTH + 2) * sizeof(xmlNode*))
    if path is NULL:
        raise MemoryError()
    b.data = NULL
    b.length = 0
    b.capacity = 0
    path[0] = c_node
    try:
        _put(&b, b"{", 1)
        _put_key(&b, b"", _href(c_node.ns), c_node.name)
        _put(&b, b"[", 1)
        try:
            _nest(&b, c_node, path, 0)
        except _ExactPath:
            return None
        _put(&b, b"]}", 2)
        try:
            return PyUnicode_DecodeUTF8(b.data, b.length, NULL)
        except UnicodeDecodeError:
            return None
    finally:
        free(path)
        free(b.data)


def flatten_activity(cetree._Element activity, dict dataset_fields, naming, normalise_date, identifier_of):
    """``flatten._flatten_activity`` on libxml2's nodes: the activity's own attributes, then
    each child; ``transaction`` / ``budget`` children also become items of ``@transaction`` /
    ``@budget`` and their fields are added to the activity's too, in document order."""
    cdef dict out = dict(dataset_fields)
    cdef list top = naming.activity
    cdef dict top_children = top[3]
    cdef dict exploded = {}
    cdef dict item
    cdef xmlNode* c_node = activity._c_node
    cdef xmlNode* child
    cdef bint identifier_done = False
    _flat_attributes(activity, c_node, top, out, naming, normalise_date)
    child = c_node.children
    while child is not NULL:
        if child.type != ELEMENT:
            child = child.next
            continue
        tag = _clark(child.name, child.ns)
        if tag == "iati-identifier":
            if not identifier_done:
                identifier_done = True
                identifier = identifier_of(activity)
                if identifier:
                    _add(out, naming.identifier[0], identifier)
            _flat_walk(activity, child, naming.identifier, out, naming, normalise_date, 1)
            child = child.next
            continue
        node = top_children.get(tag)
        if node is None:
            node = naming.child(top, tag, _proxy(activity, child))
        if tag == "transaction" or tag == "budget":
            item = {}
            _flat_walk(activity, child, node, item, naming, normalise_date, 1)
            items = exploded.get("@" + tag)
            if items is None:
                exploded["@" + tag] = [item]
            else:
                (<list>items).append(item)
            for key, value in item.items():
                if type(value) is list:
                    for v in <list>value:
                        _add(out, key, v)
                else:
                    _add(out, key, value)
        else:
            _flat_walk(activity, child, node, out, naming, normalise_date, 1)
        child = child.next
    out.update(exploded)
    return out


cdef inline int _put_u(Buffer* b, unsigned int unit) except -1:
    cdef char escape[6]
    escape[0] = 0x5c
    escape[1] = 0x75  # u
    escape[2] = HEX[(unit >> 12) & 15]
    escape[3] = HEX[(unit >> 8) & 15]
    escape[4] = HEX[(unit >> 4) & 15]
    escape[5] = HEX[unit & 15]
    return _put(b, escape, 6)


cdef int _put_ascii_body(Buffer* b, const unsigned char* s, Py_ssize_t n, bint* suspect) except -2:
    """The characters of a JSON string as ``json.dumps(...)`` (ASCII) writes them, from UTF-8;
    -1 when the bytes are not valid UTF-8.  ``suspect`` is set when the text has what
    ``solr_client.needs_cleaning`` looks for: a control character other than tab, newline and
    carriage return, or a character above U+FFFF (written as a surrogate pair)."""
    cdef Py_ssize_t start = 0
    cdef Py_ssize_t i = 0
    cdef unsigned char c
    cdef unsigned int code
    cdef int extra
    cdef int k
    while i < n:
        c = s[i]
        if 0x20 <= c < 0x7f and c != 0x22 and c != 0x5c:
            i += 1
            continue
        if i > start:
            _put(b, <const char*>s + start, i - start)
        if c < 0x80:
            if _put_ascii_escape(b, c):
                suspect[0] = True
        else:
            if 0xc2 <= c <= 0xdf:
                code = c & 0x1f
                extra = 1
            elif 0xe0 <= c <= 0xef:
                code = c & 0x0f
                extra = 2
            elif 0xf0 <= c <= 0xf4:
                code = c & 0x07
                extra = 3
            else:
                return -1
            if i + extra >= n:
                return -1
            for k in range(1, extra + 1):
                if (s[i + k] & 0xc0) != 0x80:
                    return -1
                code = (code << 6) | (s[i + k] & 0x3f)
            if (extra == 2 and (code < 0x800 or 0xd800 <= code <= 0xdfff)) or (extra == 3 and not 0x10000 <= code <= 0x10ffff):
                return -1
            if code >= 0x10000:
                suspect[0] = True
                code -= 0x10000
                _put_u(b, 0xd800 | (code >> 10))
                _put_u(b, 0xdc00 | (code & 0x3ff))
            else:
                _put_u(b, code)
            i += extra
        i += 1
        start = i
    if i > start:
        _put(b, <const char*>s + start, i - start)
    return 0


def json_literal(bytes text, bint ascii=False):
    """``json.dumps(text.decode("utf-8"), ensure_ascii=ascii).encode("utf-8")`` for UTF-8
    ``text``, in one pass over the bytes (``None``: not valid UTF-8, or a NUL byte)."""
    result = _literal(text, ascii)
    return None if result is None else result[0]


def ascii_literal_checked(bytes text):
    """(``json.dumps(text.decode("utf-8")).encode()``, whether ``needs_cleaning`` would say
    yes of it), or ``None`` when ``text`` is not valid UTF-8."""
    return _literal(text, True)


cdef object _literal(bytes text, bint ascii):
    cdef Buffer b
    cdef const unsigned char* data = text
    cdef Py_ssize_t n = len(text)
    cdef Py_ssize_t i
    cdef bint suspect = False
    b.data = NULL
    b.length = 0
    b.capacity = 0
    if not ascii:
        for i in range(n):
            if data[i] == 0:
                # an embedded NUL would end the C string early: json's own escaping handles it
                return None
    try:
        _grow(&b, n + n // 4 + 16)
        _put(&b, b'"', 1)
        if ascii:
            if _put_ascii_body(&b, data, n, &suspect) < 0:
                return None
        else:
            _put_string_body(&b, data)
        _put(&b, b'"', 1)
        return b.data[:b.length], suspect
    finally:
        free(b.data)


# ---------------------------------------------------------------------------------------
# index: PostgreSQL jsonb key order
# ---------------------------------------------------------------------------------------

cdef dict _JSONB_ORDERS = {}
cdef Py_ssize_t _JSONB_ORDERS_MAX = 50000


def _jsonb_key(str key):
    raw = key.encode("utf-8")
    return len(raw), raw


cdef object _ordered(object value):
    cdef dict source
    cdef dict out
    cdef list items
    if type(value) is dict:
        source = <dict>value
        keys = tuple(source)
        order = _JSONB_ORDERS.get(keys)
        if order is None:
            order = sorted(keys, key=_jsonb_key)
            if len(_JSONB_ORDERS) < _JSONB_ORDERS_MAX:
                _JSONB_ORDERS[keys] = order
        out = {}
        for key in order:
            item = source[key]
            out[key] = item if type(item) is str else _ordered(item)
        return out
    if type(value) is list:
        items = []
        for item in <list>value:
            items.append(item if type(item) is str else _ordered(item))
        return items
    if isinstance(value, dict) or isinstance(value, list):
        return _ordered(dict(value) if isinstance(value, dict) else list(value))
    return value


def jsonb_order(value):
    """``index.jsonb_order``: every dict's keys in PostgreSQL jsonb order (length in UTF-8
    bytes, then bytewise), recursively."""
    return _ordered(value)


# ---------------------------------------------------------------------------------------
# index: the exact text of json.dumps (default separators, ASCII escapes)
# ---------------------------------------------------------------------------------------

# Deeper values are left to json (the flattened shape is at most three levels deep).
cdef int MAX_JSON_DEPTH = 64


cdef int _put_wide_escape(Buffer* b, unsigned int c) except -1:
    """A character above ASCII as ``json.dumps`` escapes it; 1 when ``needs_cleaning`` would
    say yes of it (a surrogate, or a character above U+FFFF written as a pair)."""
    if c >= 0x10000:
        c -= 0x10000
        _put_u(b, 0xd800 | (c >> 10))
        _put_u(b, 0xdc00 | (c & 0x3ff))
        return 1
    _put_u(b, c)
    return 1 if 0xd800 <= c <= 0xdfff else 0


cdef int _put_str(Buffer* b, str text) except -1:
    """``json.dumps(text)``; 1 when ``needs_cleaning`` would say yes of it, else 0."""
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(text)
    cdef unsigned int kind = PyUnicode_KIND(text)
    cdef void* data = PyUnicode_DATA(text)
    cdef const Py_UCS1* narrow = <const Py_UCS1*>data
    cdef Py_ssize_t i
    cdef Py_ssize_t start = 0
    cdef unsigned int c
    cdef int suspect = 0
    cdef char plain
    _put(b, b'"', 1)
    if kind == 1:
        for i in range(n):
            c = narrow[i]
            if 0x20 <= c < 0x7f and c != 0x22 and c != 0x5c:
                continue
            if i > start:
                _put(b, <const char*>narrow + start, i - start)
            suspect |= _put_ascii_escape(b, <unsigned char>c) if c < 0x80 else _put_wide_escape(b, c)
            start = i + 1
        if n > start:
            _put(b, <const char*>narrow + start, n - start)
    else:
        for i in range(n):
            c = <unsigned int>PyUnicode_READ(kind, data, i)
            if 0x20 <= c < 0x7f and c != 0x22 and c != 0x5c:
                plain = <char>c
                _put(b, &plain, 1)
            elif c < 0x80:
                suspect |= _put_ascii_escape(b, <unsigned char>c)
            else:
                suspect |= _put_wide_escape(b, c)
    _put(b, b'"', 1)
    return suspect


cdef int _put_json(Buffer* b, object value, int depth) except -2:
    """``json.dumps(value)`` for str / list / dict-with-str-keys values; the ``needs_cleaning``
    flag (0/1), or -1 for anything else (the caller uses json itself then)."""
    cdef int suspect = 0
    cdef int found
    cdef bint first = True
    if type(value) is str:
        return _put_str(b, <str>value)
    if depth >= MAX_JSON_DEPTH:
        return -1
    if type(value) is list:
        _put(b, b"[", 1)
        for item in <list>value:
            if not first:
                _put(b, b", ", 2)
            first = False
            found = _put_json(b, item, depth + 1)
            if found < 0:
                return -1
            suspect |= found
        _put(b, b"]", 1)
        return suspect
    if type(value) is dict:
        _put(b, b"{", 1)
        for key, item in (<dict>value).items():
            if type(key) is not str:
                return -1
            if not first:
                _put(b, b", ", 2)
            first = False
            suspect |= _put_str(b, <str>key)
            _put(b, b": ", 2)
            found = _put_json(b, item, depth + 1)
            if found < 0:
                return -1
            suspect |= found
        _put(b, b"}", 1)
        return suspect
    return -1


def json_members(dict obj):
    """Each member of ``obj`` as ``json.dumps(obj)`` writes it (``b'"key": value'``, ASCII),
    and the keys whose member ``needs_cleaning`` would flag: ``(members, suspect keys)``, or
    ``None`` when a key or value is not a str, list or dict (json must write it then)."""
    cdef Buffer b
    cdef dict members = {}
    cdef list suspects = []
    cdef int key_suspect
    cdef int value_suspect
    b.data = NULL
    b.length = 0
    b.capacity = 0
    try:
        for key, value in obj.items():
            if type(key) is not str:
                return None
            b.length = 0
            key_suspect = _put_str(&b, <str>key)
            _put(&b, b": ", 2)
            value_suspect = _put_json(&b, value, 0)
            if value_suspect < 0:
                return None
            members[key] = b.data[:b.length]
            if key_suspect or value_suspect:
                suspects.append(key)
        return members, suspects
    finally:
        free(b.data)


def json_text(value):
    """``(json.dumps(value).encode("ascii"), whether needs_cleaning would flag it)``, or
    ``None`` when it holds something other than str, list and dict-with-str-keys."""
    cdef Buffer b
    cdef int suspect
    b.data = NULL
    b.length = 0
    b.capacity = 0
    try:
        suspect = _put_json(&b, value, 0)
        if suspect < 0:
            return None
        return b.data[:b.length], suspect == 1
    finally:
        free(b.data)
