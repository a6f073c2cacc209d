#!/usr/bin/env python3
"""Generate the Solr configsets (activity, transaction, budget) from the IATI 2.03 schema.

Every field name the flatten stage can produce from schema-valid 2.03 activities gets an
explicit, typed Solr field, so that a type mistake shows up as a rejected document instead
of silently landing in the stored-only catch-all.  The generated files are committed; run
this again only when the rules below or the IATI schema change::

    python solr/generate_configsets.py --xsd-dir path/to/iati-schemas/2.03

Rules (they mirror the flattener, see ``docs`` of the flatten stage):

* a field name is the element path below ``iati-activity`` joined with ``_`` (attributes
  and text of an element alike), ``-`` becomes ``_`` and ``xml:lang`` becomes ``xml_lang``;
  the activity's own attributes have no prefix;
* a field is single-valued only when its path can occur at most once per activity
  (every element on the path has ``maxOccurs`` 1 and no other path gives the same name);
  transaction and budget documents share the activity's field list, so the activity-level
  multiplicity is the one that counts;
* names the flattener normalises as dates (containing ``iso_date``, ``value_date``,
  ``extraction_date`` or ``_datetime``) are ``pdate`` — unparseable dates are dropped by the
  flattener, so these never reject a document; ``xsd:decimal`` is ``pdouble``, the integer
  types are ``pint``, ``xsd:boolean`` is ``boolean``;
* every other value is text: ``*_narrative`` free text and ``xsd:anyURI`` values are
  ``text_general``, codes, references and the like are ``text_gen_sort`` (a
  SortableTextField, so consumers can sort and facet on them);
* where IATI's production configsets type a field differently (:data:`PRODUCTION_TYPES`),
  production wins: datastore-search is written against it.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree

XSD = "http://www.w3.org/2001/XMLSchema"
Q = f"{{{XSD}}}"
HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
COLLECTIONS = ("activity", "transaction", "budget")
LUCENE_MATCH_VERSION = "9.3"

#: The flattener turns values of these names into ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (or drops them).
DATE_NAME = re.compile(r"iso_date|value_date|extraction_date|_datetime")
DECIMAL_TYPES = {"decimal", "double", "float"}
INTEGER_TYPES = {
    "int",
    "integer",
    "long",
    "short",
    "byte",
    "positiveInteger",
    "nonNegativeInteger",
    "negativeInteger",
    "nonPositiveInteger",
    "unsignedInt",
    "unsignedShort",
    "unsignedByte",
}
MANY = 2  # "can occur more than once" (multiplicities are capped here)


# ---------------------------------------------------------------------------------------
# reading the XSD
# ---------------------------------------------------------------------------------------


@dataclass
class FieldSpec:
    """One flattened field name: its value kinds and how often it can occur per activity."""

    name: str
    kinds: set[str] = field(default_factory=set)  # "text", "decimal", "integer", "boolean", "date"
    occurs: int = 0  # 1 or MANY
    paths: int = 0

    def add(self, kind: str, occurs: int) -> None:
        self.kinds.add(kind)
        self.paths += 1
        self.occurs = min(MANY, self.occurs + occurs) if self.paths > 1 else occurs


class SchemaIndex:
    """Top-level declarations of a set of XSD files (include/import resolved by the caller)."""

    def __init__(self, paths: list[Path]):
        parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
        self.elements: dict[str, etree._Element] = {}
        self.complex_types: dict[str, etree._Element] = {}
        self.simple_types: dict[str, etree._Element] = {}
        self.attributes: dict[str, etree._Element] = {}
        self.attribute_groups: dict[str, etree._Element] = {}
        self.groups: dict[str, etree._Element] = {}
        for path in paths:
            root = etree.parse(str(path), parser).getroot()
            for node in root:
                name = node.get("name")
                if not name:
                    continue
                table = {
                    "element": self.elements,
                    "complexType": self.complex_types,
                    "simpleType": self.simple_types,
                    "attribute": self.attributes,
                    "attributeGroup": self.attribute_groups,
                    "group": self.groups,
                }.get(etree.QName(node).localname)
                if table is not None:
                    table[name] = node

    def builtin_of(self, type_name: str | None) -> str:
        """The XSD built-in type a (possibly user-defined simple) type name derives from."""
        if not type_name:
            return "string"
        local = type_name.split(":", 1)[-1]
        if ":" in type_name and type_name.split(":", 1)[0] in ("xsd", "xs"):
            return local
        simple = self.simple_types.get(local)
        if simple is not None:
            return self.simple_base(simple)
        complex_ = self.complex_types.get(local)
        if complex_ is not None:
            content = complex_.find(f"{Q}simpleContent")
            if content is not None:
                return self.builtin_of(content[0].get("base"))
        return local

    def simple_base(self, simple: etree._Element) -> str:
        restriction = simple.find(f"{Q}restriction")
        if restriction is not None:
            return self.builtin_of(restriction.get("base"))
        return "string"  # list/union: text


def _kind(builtin: str) -> str:
    if builtin in DECIMAL_TYPES:
        return "decimal"
    if builtin in INTEGER_TYPES:
        return "integer"
    if builtin == "boolean":
        return "boolean"
    if builtin in ("date", "dateTime"):
        return "date"
    if builtin == "anyURI":
        return "uri"
    return "text"


def _max_occurs(node: etree._Element) -> int:
    raw = node.get("maxOccurs", "1")
    return MANY if raw == "unbounded" or int(raw) > 1 else int(raw)


def _part(name: str) -> str:
    return name.replace("-", "_").replace(":", "_")


class FieldCollector:
    """Walk ``iati-activity`` and record every (flattened name, kind, multiplicity)."""

    def __init__(self, index: SchemaIndex):
        self.index = index
        self.fields: dict[str, FieldSpec] = {}

    def record(self, name: str, kind: str, occurs: int) -> None:
        self.fields.setdefault(name, FieldSpec(name)).add(kind, occurs)

    def collect(self, root_element: str = "iati-activity") -> dict[str, FieldSpec]:
        activity = self.index.elements[root_element]
        self._element_body(activity, path="", occurs=1, stack=(root_element,), is_activity=True)
        return self.fields

    # -- elements ------------------------------------------------------------------------

    def _element(self, node: etree._Element, prefix: str, occurs: int, stack: tuple[str, ...]) -> None:
        ref = node.get("ref")
        declared = self.index.elements[ref] if ref else node
        name = declared.get("name")
        if name in stack:  # IATI has no recursion; guard anyway
            return
        occurs = min(MANY, occurs * _max_occurs(node))
        path = f"{prefix}_{_part(name)}" if prefix else _part(name)
        self._element_body(declared, path, occurs, (*stack, name))

    def _element_body(
        self, declared: etree._Element, path: str, occurs: int, stack: tuple[str, ...], is_activity: bool = False
    ) -> None:
        type_name = declared.get("type")
        if type_name:
            local = type_name.split(":", 1)[-1]
            complex_ = self.index.complex_types.get(local) if not type_name.startswith(("xsd:", "xs:")) else None
            if complex_ is not None:
                self._complex(complex_, path, occurs, stack, is_activity)
            elif not is_activity:
                self.record(path, _kind(self.index.builtin_of(type_name)), occurs)
            return
        inline = declared.find(f"{Q}complexType")
        if inline is not None:
            self._complex(inline, path, occurs, stack, is_activity)
            return
        simple = declared.find(f"{Q}simpleType")
        if simple is not None and not is_activity:
            self.record(path, _kind(self.index.simple_base(simple)), occurs)

    def _complex(self, node: etree._Element, path: str, occurs: int, stack: tuple[str, ...], is_activity: bool) -> None:
        # The flattener ignores the activity element's own text; other elements' text counts.
        if node.get("mixed") == "true" and not is_activity:
            self.record(path, "text", occurs)
        for child in node:
            tag = etree.QName(child).localname
            if tag in ("sequence", "choice", "all", "group"):
                self._particle(child, path, occurs, stack)
            elif tag in ("attribute", "attributeGroup"):
                self._attribute(child, path, occurs)
            elif tag == "simpleContent":
                derivation = child[0]
                if not is_activity:
                    self.record(path, _kind(self.index.builtin_of(derivation.get("base"))), occurs)
                base = self.index.complex_types.get((derivation.get("base") or "").split(":", 1)[-1])
                if base is not None:
                    for attr in base.iter(f"{Q}attribute", f"{Q}attributeGroup"):
                        self._attribute(attr, path, occurs)
                for attr in derivation:
                    if etree.QName(attr).localname in ("attribute", "attributeGroup"):
                        self._attribute(attr, path, occurs)
            elif tag == "complexContent":
                derivation = child[0]
                base = self.index.complex_types.get((derivation.get("base") or "").split(":", 1)[-1])
                if base is not None:
                    self._complex(base, path, occurs, stack, is_activity)
                self._complex(derivation, path, occurs, stack, is_activity)

    def _particle(self, node: etree._Element, path: str, occurs: int, stack: tuple[str, ...]) -> None:
        tag = etree.QName(node).localname
        occurs = min(MANY, occurs * _max_occurs(node))
        if tag == "group" and node.get("ref"):
            target = self.index.groups[node.get("ref")]
            for child in target:
                self._particle(child, path, occurs, stack)
            return
        for child in node:
            child_tag = etree.QName(child).localname
            if child_tag == "element":
                self._element(child, path, occurs, stack)
            elif child_tag in ("sequence", "choice", "all", "group"):
                self._particle(child, path, occurs, stack)
            # xsd:any: extension elements are namespaced, they land in the catch-all field

    def _attribute(self, node: etree._Element, path: str, occurs: int) -> None:
        tag = etree.QName(node).localname
        if tag == "attributeGroup":
            group = self.index.attribute_groups.get(node.get("ref", ""))
            if group is not None:
                for attr in group:
                    if etree.QName(attr).localname in ("attribute", "attributeGroup"):
                        self._attribute(attr, path, occurs)
            return
        ref = node.get("ref")
        if ref and ref.startswith("xml:"):
            name, kind = f"xml_{ref[4:]}", "text"
        elif ref:
            declared = self.index.attributes[ref]
            name = _part(ref)
            kind = self._attribute_kind(declared)
        else:
            name = _part(node.get("name"))
            kind = self._attribute_kind(node)
        self.record(f"{path}_{name}" if path else name, kind, occurs)

    def _attribute_kind(self, node: etree._Element) -> str:
        simple = node.find(f"{Q}simpleType")
        if simple is not None:
            return _kind(self.index.simple_base(simple))
        return _kind(self.index.builtin_of(node.get("type")))


def activity_fields(xsd_dir: Path) -> dict[str, FieldSpec]:
    """Every flattened field name of a schema-valid activity, with kinds and multiplicity."""
    index = SchemaIndex([xsd_dir / "iati-activities-schema.xsd", xsd_dir / "iati-common.xsd"])
    fields_ = FieldCollector(index).collect()
    # Copied from the iati-activities root into every activity by the flattener.
    for name, kind in (
        ("dataset_version", "text"),
        ("dataset_generated_datetime", "date"),
        ("dataset_linked_data_default", "text"),
    ):
        fields_.setdefault(name, FieldSpec(name)).add(kind, 1)
    return fields_


# ---------------------------------------------------------------------------------------
# Solr types
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SolrField:
    name: str
    type: str
    multi: bool
    indexed: bool = True
    stored: bool = True
    required: bool = False
    default: str | None = None
    doc_values: bool | None = None

    def xml(self) -> str:
        attrs = [
            f'name="{self.name}"',
            f'type="{self.type}"',
            f'indexed="{str(self.indexed).lower()}"',
            f'stored="{str(self.stored).lower()}"',
            f'multiValued="{str(self.multi).lower()}"',
        ]
        if self.doc_values is not None:
            attrs.append(f'docValues="{str(self.doc_values).lower()}"')
        if self.required:
            attrs.append('required="true"')
        if self.default is not None:
            attrs.append(f'default="{self.default}"')
        return f"  <field {' '.join(attrs)}/>"


#: Fields IATI's production configsets (IATI/datastore-solr-configs) type otherwise than the
#: rules above would (numbers indexed as text, a URL as sortable text, an attribute URI as
#: words); datastore-search queries them as production has them, so here too (solr/README.md,
#: "Compared with production").
PRODUCTION_TYPES = {
    "fss_forecast": "text_gen_sort",
    "location_administrative_level": "text_gen_sort",
    "contact_info_website": "text_gen_sort",
    "dataset_linked_data_default": "text_general",
}


def solr_type(spec: FieldSpec) -> str:
    """The Solr field type for one flattened field (rules in the module docstring)."""
    if DATE_NAME.search(spec.name):
        return "pdate"
    if spec.name in PRODUCTION_TYPES:
        return PRODUCTION_TYPES[spec.name]
    if spec.kinds == {"uri"}:
        return "text_general"  # as production: URIs are searched by their words, not sorted
    if len(spec.kinds) == 1:
        kind = next(iter(spec.kinds))
        if kind == "decimal":
            return "pdouble"
        if kind == "integer":
            return "pint"
        if kind == "boolean":
            return "boolean"
    if spec.name.endswith("_narrative"):
        return "text_general"
    return "text_gen_sort"


#: Fields the index stage adds to every document (plus the activity-only lake fields).
def stage_fields(collection: str) -> list[SolrField]:
    out = [
        SolrField("id", "string", multi=False, required=True),
        SolrField("iati_activities_document_id", "string", multi=False, required=True),
        SolrField("iati_activities_document_hash", "string", multi=False, required=True),
        SolrField("location_point_latlon", "location_point", multi=True),
        SolrField("indexed_datetime", "pdate", multi=False, default="NOW"),
        SolrField("iati_text", "text_general", multi=True, stored=False),
        SolrField("iati_identifier_exact", "string", multi=False),
        SolrField("_version_", "plong", multi=False, indexed=False, stored=False),
        SolrField("_root_", "string", multi=False, stored=False, doc_values=False),
    ]
    if collection == "activity":
        out += [
            SolrField("iati_xml", "string_large", multi=False, indexed=False, doc_values=False),
            SolrField("iati_json", "string_large", multi=False, indexed=False, doc_values=False),
        ]
    return out


def schema_fields(collection: str, specs: dict[str, FieldSpec]) -> list[SolrField]:
    fixed = stage_fields(collection)
    taken = {f.name for f in fixed}
    flattened = [
        SolrField(spec.name, solr_type(spec), multi=spec.occurs > 1)
        for spec in sorted(specs.values(), key=lambda s: s.name)
        if spec.name not in taken
    ]
    return fixed + flattened


FIELD_TYPES = """\
  <fieldType name="string" class="solr.StrField" sortMissingLast="true" docValues="true"/>
  <fieldType name="string_large" class="solr.StrField" indexed="false" stored="true" docValues="false" large="true"/>
  <fieldType name="boolean" class="solr.BoolField" sortMissingLast="true"/>
  <fieldType name="pint" class="solr.IntPointField" docValues="true"/>
  <fieldType name="plong" class="solr.LongPointField" docValues="true"/>
  <fieldType name="pdouble" class="solr.DoublePointField" docValues="true"/>
  <fieldType name="pdate" class="solr.DatePointField" docValues="true"/>
  <fieldType name="location_point" class="solr.LatLonPointSpatialField" docValues="true"/>

  <!-- Free text: tokenised, lower-cased; stop words at index and query time, synonyms at query time. -->
  <fieldType name="text_general" class="solr.TextField" positionIncrementGap="100">
    <analyzer type="index">
      <tokenizer class="solr.StandardTokenizerFactory"/>
      <filter class="solr.StopFilterFactory" ignoreCase="true" words="stopwords.txt"/>
      <filter class="solr.LowerCaseFilterFactory"/>
    </analyzer>
    <analyzer type="query">
      <tokenizer class="solr.StandardTokenizerFactory"/>
      <filter class="solr.StopFilterFactory" ignoreCase="true" words="stopwords.txt"/>
      <filter class="solr.SynonymGraphFilterFactory" synonyms="synonyms.txt" ignoreCase="true" expand="true"/>
      <filter class="solr.LowerCaseFilterFactory"/>
    </analyzer>
  </fieldType>

  <!-- The same analysis, plus docValues of the raw value so codes and names can be sorted and faceted. -->
  <fieldType name="text_gen_sort" class="solr.SortableTextField" positionIncrementGap="100">
    <analyzer type="index">
      <tokenizer class="solr.StandardTokenizerFactory"/>
      <filter class="solr.StopFilterFactory" ignoreCase="true" words="stopwords.txt"/>
      <filter class="solr.LowerCaseFilterFactory"/>
    </analyzer>
    <analyzer type="query">
      <tokenizer class="solr.StandardTokenizerFactory"/>
      <filter class="solr.StopFilterFactory" ignoreCase="true" words="stopwords.txt"/>
      <filter class="solr.SynonymGraphFilterFactory" synonyms="synonyms.txt" ignoreCase="true" expand="true"/>
      <filter class="solr.LowerCaseFilterFactory"/>
    </analyzer>
  </fieldType>
"""


def managed_schema(collection: str, fields_: list[SolrField]) -> str:
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        "<!-- GENERATED by solr/generate_configsets.py from the IATI 2.03 activity schema: do not edit by hand. -->",
        f'<schema name="iati-{collection}" version="1.6">',
        "  <uniqueKey>id</uniqueKey>",
        "",
        FIELD_TYPES,
        "  <!-- Index-stage fields -->",
    ]
    fixed = {f.name for f in stage_fields(collection)}
    lines += [f.xml() for f in fields_ if f.name in fixed]
    lines.append("")
    lines.append("  <!-- Flattened IATI fields (one per name the flattener produces from valid 2.03 data) -->")
    lines += [f.xml() for f in fields_ if f.name not in fixed]
    lines += [
        "",
        "  <!-- Extension and unknown fields are kept (stored) but not searchable. -->",
        '  <dynamicField name="*" type="text_general" indexed="false" stored="true" multiValued="true"/>',
        "",
        '  <copyField source="*_narrative" dest="iati_text"/>',
        '  <copyField source="iati_identifier" dest="iati_identifier_exact"/>',
        "</schema>",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# solrconfig.xml and the small files
# ---------------------------------------------------------------------------------------


def _default_fl(fields_: list[SolrField]) -> str:
    hidden = {"iati_xml", "iati_json", "_version_", "_root_"}
    return ",".join(f.name for f in fields_ if f.stored and f.name not in hidden)


def solrconfig(collection: str, fields_: list[SolrField]) -> str:
    fl = _default_fl(fields_)
    activity_handlers = ""
    writer = ""
    if collection == "activity":
        activity_handlers = """
  <!-- Raw activity XML wrapped in an <iati-activities> root (needs the scripting module). -->
  <requestHandler name="/iati" class="solr.SearchHandler">
    <lst name="defaults">
      <str name="echoParams">none</str>
      <int name="rows">10</int>
    </lst>
    <lst name="invariants">
      <str name="fl">iati_xml,datetime:[value v=NOW t=date]</str>
      <str name="wt">xslt</str>
      <str name="tr">iati_xml.xsl</str>
    </lst>
  </requestHandler>

  <!-- The lake JSON of each activity, embedded as JSON rather than as a string. -->
  <requestHandler name="/iati_json" class="solr.SearchHandler">
    <lst name="defaults">
      <str name="echoParams">none</str>
      <int name="rows">10</int>
    </lst>
    <lst name="invariants">
      <str name="fl">iati_json:[json]</str>
      <str name="wt">json</str>
    </lst>
  </requestHandler>
"""
        writer = """
  <queryResponseWriter name="xslt" class="solr.scripting.xslt.XSLTResponseWriter">
    <int name="xsltCacheLifetimeSeconds">3600</int>
  </queryResponseWriter>
"""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- GENERATED by solr/generate_configsets.py: do not edit by hand. Solr 9.x, configset "{collection}". -->
<config>
  <luceneMatchVersion>{LUCENE_MATCH_VERSION}</luceneMatchVersion>
  <dataDir>${{solr.data.dir:}}</dataDir>
  <directoryFactory name="DirectoryFactory" class="${{solr.directoryFactory:solr.NRTCachingDirectoryFactory}}"/>
  <codecFactory class="solr.SchemaCodecFactory"/>

  <!-- The schema is generated and committed: nothing may change it at run time. -->
  <schemaFactory class="ManagedIndexSchemaFactory">
    <bool name="mutable">false</bool>
    <str name="managedSchemaResourceName">managed-schema.xml</str>
  </schemaFactory>

  <indexConfig>
    <lockType>${{solr.lock.type:native}}</lockType>
  </indexConfig>

  <!-- The refresher never commits: a hard commit every 15 s opens a new searcher.
       Writers may also pass commitWithin. -->
  <updateHandler class="solr.DirectUpdateHandler2">
    <updateLog>
      <str name="dir">${{solr.ulog.dir:}}</str>
    </updateLog>
    <autoCommit>
      <maxTime>${{solr.autoCommit.maxTime:15000}}</maxTime>
      <openSearcher>true</openSearcher>
    </autoCommit>
    <autoSoftCommit>
      <maxTime>${{solr.autoSoftCommit.maxTime:-1}}</maxTime>
    </autoSoftCommit>
  </updateHandler>

  <query>
    <maxBooleanClauses>${{solr.max.booleanClauses:1024}}</maxBooleanClauses>
    <filterCache class="solr.CaffeineCache" size="512" initialSize="512" autowarmCount="0"/>
    <queryResultCache class="solr.CaffeineCache" size="512" initialSize="512" autowarmCount="0"/>
    <documentCache class="solr.CaffeineCache" size="512" initialSize="512" autowarmCount="0"/>
    <enableLazyFieldLoading>true</enableLazyFieldLoading>
    <queryResultWindowSize>20</queryResultWindowSize>
    <queryResultMaxDocsCached>200</queryResultMaxDocsCached>
    <useColdSearcher>false</useColdSearcher>
  </query>

  <requestDispatcher>
    <httpCaching never304="true"/>
  </requestDispatcher>

  <!-- Plain queries; by default every IATI field except the large lake fields. -->
  <requestHandler name="/select" class="solr.SearchHandler">
    <lst name="defaults">
      <str name="echoParams">explicit</str>
      <int name="rows">10</int>
      <str name="fl">{fl}</str>
    </lst>
  </requestHandler>

  <!-- Free-text search over every narrative (iati_text). -->
  <requestHandler name="/search" class="solr.SearchHandler">
    <lst name="defaults">
      <str name="echoParams">explicit</str>
      <int name="rows">10</int>
      <str name="defType">edismax</str>
      <str name="df">iati_text</str>
      <str name="qf">iati_text</str>
      <str name="q.alt">*:*</str>
      <str name="fl">{fl}</str>
    </lst>
  </requestHandler>

  <requestHandler name="/query" class="solr.SearchHandler">
    <lst name="defaults">
      <str name="echoParams">explicit</str>
      <str name="wt">json</str>
      <str name="indent">true</str>
    </lst>
  </requestHandler>
{activity_handlers}{writer}</config>
"""


STOPWORDS = """\
# Stop words for text_general and text_gen_sort, one per line.
# Deliberately empty: IATI text is multilingual and short codes ("a", "on") are meaningful.
"""

SYNONYMS = """\
# Query-time synonyms for text_general and text_gen_sort (Solr synonyms format).
# Empty by default; add lines such as "ngo, non-governmental organisation".
"""

IATI_XML_XSL = """\
<?xml version="1.0" encoding="UTF-8"?>
<!-- Used by the /iati handler: the stored iati_xml strings (each one <iati-activity> element,
     no XML declaration) are written out unescaped inside an <iati-activities> root. -->
<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
  <xsl:output method="xml" encoding="UTF-8" media-type="application/xml" indent="no"/>

  <xsl:template match="/">
    <iati-activities version="2.03">
      <xsl:for-each select="(/response/result/doc/date[@name='datetime'])[1]">
        <xsl:attribute name="generated-datetime"><xsl:value-of select="."/></xsl:attribute>
      </xsl:for-each>
      <xsl:text>&#10;</xsl:text>
      <xsl:for-each select="/response/result/doc/str[@name='iati_xml']">
        <xsl:value-of select="." disable-output-escaping="yes"/>
      </xsl:for-each>
    </iati-activities>
  </xsl:template>
</xsl:stylesheet>
"""


def configset_files(collection: str, specs: dict[str, FieldSpec]) -> dict[str, str]:
    """Relative path under ``<collection>/conf/`` → file text."""
    fields_ = schema_fields(collection, specs)
    files = {
        "managed-schema.xml": managed_schema(collection, fields_),
        "solrconfig.xml": solrconfig(collection, fields_),
        "stopwords.txt": STOPWORDS,
        "synonyms.txt": SYNONYMS,
    }
    if collection == "activity":
        files["xslt/iati_xml.xsl"] = IATI_XML_XSL
    return files


def write_configsets(xsd_dir: Path, out_dir: Path) -> Iterator[Path]:
    specs = activity_fields(xsd_dir)
    for collection in COLLECTIONS:
        for rel, text in configset_files(collection, specs).items():
            target = out_dir / collection / "conf" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
            yield target


def default_xsd_dir() -> Path | None:
    candidates = [
        PROJECT / "include" / "iati_refresher" / "validation" / "schemas" / "2.03",
        PROJECT.parent / "shared" / "iati-schemas" / "2.03",
        Path("/work/shared/iati-schemas/2.03"),
    ]
    return next((c for c in candidates if (c / "iati-activities-schema.xsd").is_file()), None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--xsd-dir", type=Path, default=None, help="folder holding iati-activities-schema.xsd (2.03)")
    parser.add_argument("--out", type=Path, default=HERE / "configsets", help="configsets folder to (over)write")
    args = parser.parse_args(argv)
    xsd_dir = args.xsd_dir or default_xsd_dir()
    if xsd_dir is None:
        parser.error("IATI 2.03 schema not found; pass --xsd-dir")
    for path in write_configsets(xsd_dir, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
