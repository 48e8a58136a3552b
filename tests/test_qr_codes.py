"""The QR helper returns an embeddable SVG whose modules encode the text given."""

import segno

from hub.qr_codes import qr_svg


def test_svg_is_embeddable_and_encodes_the_text():
    svg = qr_svg("GH-ENROL-7Q4K")
    assert svg.startswith("<svg") and "<?xml" not in svg
    assert "<path" in svg
    # Sized as the text's own symbol (a version-1 code for a short code: 21 modules plus
    # the 2-module border on each side, at 6 units a module), not a placeholder.
    expected = segno.make("GH-ENROL-7Q4K", error="m", micro=False)
    width, _ = expected.symbol_size(scale=6, border=2)
    assert f'width="{width}"' in svg and expected.version == 1
    assert qr_svg("GH-ENROL-7Q4K") == svg
    assert qr_svg("GH-ENROL-0000") != svg
