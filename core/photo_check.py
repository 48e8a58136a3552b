"""Evidence photos, checked and prepared (pure: bytes in, bytes and facts out).

``check(data, limits, tz)`` proves the bytes are an image of an allowed type by decoding
them (the file name and the declared content type are not trusted), reads the capture
time and position from EXIF, and makes the copies that are shown: a display copy and a
thumbnail, turned upright, re-encoded as JPEG with no metadata at all (EXIF carries the
phone's model, serial numbers and the exact position, which a viewer of a case photo does
not need; the position that matters is stored apart). Raises ``PhotoError`` with a stable
code:

- ``photo.empty``: no bytes;
- ``photo.too_large``: more bytes than ``limits.max_bytes``;
- ``photo.not_an_image``: nothing Pillow recognises (a text file named ``.jpg``);
- ``photo.unsupported_type``: an image, but not JPEG, PNG or WebP (GIF, TIFF, ...);
- ``photo.too_many_pixels``: a canvas above ``limits.max_pixels`` (a decompression bomb);
- ``photo.truncated``: the header is fine but the pixel data is cut short or corrupt.
"""

from __future__ import annotations

import hashlib
import io
import math
import warnings
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

from core.errors import InvalidInput

# Decoded format -> the content type it is stored and reported as.
ALLOWED: dict[str, str] = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
# The display copy's longest side: sharp on a 1080p console panel and a phone held up
# close, about 200-400 KB as JPEG.
DISPLAY_MAX_PX = 1600
# Thumbnails in a case's photo strip and the phone's pending list.
THUMB_MAX_PX = 320
# JPEG quality of the copies: 85 keeps text on signs and licence plates readable.
JPEG_QUALITY = 85

# EXIF tags (CIPA DC-008): the Exif and GPS sub-IFDs and the fields read from them.
_EXIF_IFD = 0x8769
_GPS_IFD = 0x8825
_DATETIME_ORIGINAL = 36867
_OFFSET_TIME_ORIGINAL = 36881
_DATETIME = 306
_GPS_LAT_REF, _GPS_LAT, _GPS_LON_REF, _GPS_LON = 1, 2, 3, 4


class PhotoError(InvalidInput):
    """A refused upload; ``code`` is one of the module doc's codes."""


@dataclass(frozen=True, slots=True)
class Limits:
    max_bytes: int
    max_pixels: int


@dataclass(frozen=True, slots=True)
class Checked:
    """A photo that passed: its identity, facts, and the copies to show."""

    sha256: str
    mime: str
    size: int
    width: int
    height: int
    taken_at: float | None  # UNIX seconds, from EXIF (the phone's clock)
    lon: float | None
    lat: float | None
    display: bytes  # JPEG, upright, no metadata
    thumb: bytes  # JPEG, upright, no metadata


def check(data: bytes, limits: Limits, tz: tzinfo) -> Checked:
    """Check one upload (see the module doc). ``tz``: the zone an EXIF time without an
    offset is read in (phones write local time; the town's zone is the best guess)."""
    if not data:
        raise PhotoError("the photo is empty", code="photo.empty")
    if len(data) > limits.max_bytes:
        raise PhotoError(f"the photo is {len(data)} bytes; the limit is {limits.max_bytes}",
                         code="photo.too_large")
    with warnings.catch_warnings():
        # Pillow warns (and above twice the limit raises) on huge canvases; the limit here
        # is ours, checked before any pixel is decoded.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except (UnidentifiedImageError, Image.DecompressionBombError) as e:
            raise PhotoError("this is not an image", code="photo.not_an_image") from e
        except (OSError, SyntaxError, ValueError) as e:  # a known format, cut in its header
            raise PhotoError("the image data is incomplete or corrupt",
                             code="photo.truncated") from e
        if img.format not in ALLOWED:
            raise PhotoError(f"{img.format} images are not accepted; send JPEG, PNG or WebP",
                             code="photo.unsupported_type")
        width, height = img.size
        if width * height > limits.max_pixels:
            raise PhotoError(f"{width}x{height} is more than {limits.max_pixels} pixels",
                             code="photo.too_many_pixels")
        try:
            img.load()  # the whole image: a cut-off file fails here, not later
        except (OSError, SyntaxError, ValueError) as e:
            raise PhotoError("the image data is incomplete or corrupt",
                             code="photo.truncated") from e
    try:
        exif = img.getexif()
        taken_at = _taken_at(exif, tz)
        lon, lat = _gps(exif)
    except (OSError, SyntaxError, ValueError, TypeError, KeyError):
        # Broken EXIF in a good image: the photo is still evidence, without those facts.
        taken_at, lon, lat = None, None, None
    upright = ImageOps.exif_transpose(img) or img
    return Checked(
        sha256=hashlib.sha256(data).hexdigest(), mime=ALLOWED[img.format], size=len(data),
        width=width, height=height, taken_at=taken_at, lon=lon, lat=lat,
        display=_jpeg(upright, DISPLAY_MAX_PX), thumb=_jpeg(upright, THUMB_MAX_PX))


def _jpeg(img: Image.Image, max_px: int) -> bytes:
    """A JPEG copy no larger than ``max_px`` on its longest side, without any metadata
    (a new image gets only the pixels: no EXIF, ICC, XMP or comments travel along)."""
    copy = img.convert("RGB")
    copy.thumbnail((max_px, max_px))
    clean = Image.new("RGB", copy.size)
    clean.paste(copy)
    out = io.BytesIO()
    clean.save(out, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return out.getvalue()


def _taken_at(exif: Image.Exif, tz: tzinfo) -> float | None:
    sub = exif.get_ifd(_EXIF_IFD)
    text = sub.get(_DATETIME_ORIGINAL) or exif.get(_DATETIME)
    if not isinstance(text, str):
        return None
    try:
        naive = datetime.strptime(text.strip("\x00 "), "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None
    zone: tzinfo = tz
    offset = sub.get(_OFFSET_TIME_ORIGINAL)
    if isinstance(offset, str) and len(offset) >= 6 and offset[0] in "+-":
        try:
            sign = 1 if offset[0] == "+" else -1
            zone = timezone(sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6])))
        except ValueError:
            zone = tz
    return naive.replace(tzinfo=zone).timestamp()


def _degrees(value: Any) -> float | None:
    """EXIF GPS degrees, minutes, seconds (three rationals) as decimal degrees."""
    try:
        d, m, s = (float(v) for v in value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    out = d + m / 60.0 + s / 3600.0
    return out if math.isfinite(out) else None


def _gps(exif: Image.Exif) -> tuple[float | None, float | None]:
    gps = exif.get_ifd(_GPS_IFD)
    lat, lon = _degrees(gps.get(_GPS_LAT)), _degrees(gps.get(_GPS_LON))
    if lat is None or lon is None:
        return None, None
    if str(gps.get(_GPS_LAT_REF, "N")).upper().startswith("S"):
        lat = -lat
    if str(gps.get(_GPS_LON_REF, "E")).upper().startswith("W"):
        lon = -lon
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0) or (lat == 0.0 and lon == 0.0):
        return None, None
    return round(lon, 7), round(lat, 7)
