"""GeoReport v2 documents in JSON and XML, and the specification's error shape.

Every Open311 route builds plain values (dicts, lists, str, numbers, bools, None) and hands
them to ``render(fmt, root, value, status)``. JSON is the value as it is. XML follows the
specification's examples: a root element (``services``, ``service_definition``,
``service_requests``, ``discovery``, ``errors``), a list as repeated elements named by the
singular of its key (``<services><service>..</service></services>``), None as an empty
element, booleans as ``true``/``false``. Errors are ``[{"code": status, "description":
...}]`` in JSON and ``<errors><error><code/><description/></error></errors>`` in XML.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from typing import Any

from fastapi.responses import Response

FORMATS = {"json": "application/json; charset=utf-8", "xml": "text/xml; charset=utf-8"}

# The element each list item is written as, by the list's own element name.
ITEM_NAMES = {
    "services": "service",
    "attributes": "attribute",
    "values": "value",
    "service_requests": "request",
    "errors": "error",
    "endpoints": "endpoint",
    "formats": "format",
}
# Characters XML 1.0 cannot carry at all (C0 controls but tab, CR, LF; surrogates; FFFE/F).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def fmt_of(value: str) -> str | None:
    """``json`` or ``xml`` from a path's extension, or None for anything else."""
    return value if value in FORMATS else None


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return _NOT_XML.sub("\ufffd", str(value))


def _fill(elem: ET.Element, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, dict):
        for k, v in value.items():
            _child(elem, k, v)
    elif isinstance(value, list):
        item = ITEM_NAMES.get(elem.tag, "item")
        for v in value:
            _fill(ET.SubElement(elem, item), v)
    else:
        elem.text = _text(value)


def _child(parent: ET.Element, name: str, value: Any) -> None:
    _fill(ET.SubElement(parent, name), value)


def to_xml(root: str, value: Any) -> bytes:
    elem = ET.Element(root)
    _fill(elem, value)
    body: bytes = ET.tostring(elem, encoding="utf-8", xml_declaration=False)
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + body


def render(fmt: str, root: str, value: Any, status: int = 200,
           headers: dict[str, str] | None = None) -> Response:
    if fmt == "xml":
        body = to_xml(root, value)
    else:
        body = json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    return Response(body, status_code=status, media_type=FORMATS.get(fmt, FORMATS["json"]),
                    headers=headers)


def error(fmt: str | None, status: int, description: str,
          headers: dict[str, str] | None = None) -> Response:
    """The specification's error document (JSON when the format itself is unknown)."""
    return render(fmt or "json", "errors", [{"code": status, "description": description}],
                  status, headers)
