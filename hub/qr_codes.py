"""QR codes as inline SVG, for one-time reveals shown on an admin screen.

Used where a person scans a secret from the screen with a phone: a field app's enrolment
code, a device's MQTT credentials for an installer. The SVG is returned as text so a page
can embed it without a second request (the secret never sits behind a cacheable URL).
"""

from __future__ import annotations

import io

import segno

# Error correction "M" (15 %): survives a glare spot or a smudge on a screen photographed
# in daylight, and keeps the symbol small enough for short codes and URLs.
ERROR_LEVEL = "m"
# Module size in SVG user units; the page scales the SVG, this only sets its intrinsic size.
SCALE = 6


def qr_svg(text: str) -> str:
    """Return an SVG document (UTF-8 text, no XML declaration) encoding ``text``."""
    out = io.BytesIO()
    segno.make(text, error=ERROR_LEVEL, micro=False).save(
        out, kind="svg", scale=SCALE, xmldecl=False, svgns=True, border=2)
    return out.getvalue().decode("utf-8")
