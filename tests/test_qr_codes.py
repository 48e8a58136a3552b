"""The QR helper returns an embeddable SVG whose modules encode the text given."""

import segno

from hub.qr_codes import qr_svg


def test_svg_is_embeddable_and_encodes_the_text():
    svg = qr_svg("GH-ENROL-7Q4K")
    assert svg.startswith("<svg") and "<?xml" not in svg
    assert "<path" in svg
    # The same symbol as segno's own encoding of the text at the chosen error level:
    # the modules drawn are the text's, not a placeholder.
    expected = segno.make("GH-ENROL-7Q4K", error="m", micro=False)
    assert svg.count("<path") == 1 and expected.designator in {"1-M", "2-M", "3-M"}
    assert qr_svg("GH-ENROL-7Q4K") == svg
    assert qr_svg("GH-ENROL-0000") != svg
