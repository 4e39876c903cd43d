"""Wiegand card readers on GPIO (issue 23): 26/34-bit frames with parity, driven through gpiozero's
mock pins as a reader would pulse D0/D1."""

from __future__ import annotations

import time

import pytest

from edge_agent.config import EdgeConfig
from edge_agent.factor_input import make_factor_readers
from edge_agent.wiegand import WiegandDecoder, wiegand_decode


def frame(data: int, n: int) -> list[int]:
    """A valid ``n``-bit Wiegand frame carrying ``data`` (``n - 2`` bits)."""
    bits = [(data >> i) & 1 for i in reversed(range(n - 2))]
    half = (n - 2) // 2
    even = sum(bits[:half]) % 2  # makes the first half (with it) even
    odd = 1 - sum(bits[half:]) % 2  # makes the second half (with it) odd
    return [even, *bits, odd]


def test_26_and_34_bit_frames_decode_to_the_data_bits_decimal() -> None:
    facility, card = 123, 45678
    assert wiegand_decode(frame(facility << 16 | card, 26)) == str(facility << 16 | card)
    assert wiegand_decode(frame(0xDEADBEEF, 34)) == str(0xDEADBEEF)
    assert wiegand_decode(frame(0, 26)) == "0"


def test_bad_parity_or_length_is_rejected() -> None:
    good = frame(123 << 16 | 45678, 26)
    for n in range(26):
        flipped = list(good)
        flipped[n] ^= 1  # any single-bit error breaks one of the two parities
        assert wiegand_decode(flipped) is None
    assert wiegand_decode(good[:-1]) is None and wiegand_decode([*good, 1]) is None
    assert wiegand_decode(frame(5, 32)) is None  # 32 bits: not a format we read


def test_decoder_ends_a_frame_on_the_inter_bit_gap() -> None:
    decoder = WiegandDecoder(gap_s=0.025)
    t = 10.0
    first, second = frame(0xC0FFEE, 26), frame(0x12345678, 34)
    for bit in first:
        assert decoder.bit(bit, t) is None
        t += 0.002
    assert decoder.poll(t + 0.01) is None  # not quiet long enough yet
    assert decoder.poll(t + 0.03) == str(0xC0FFEE)
    assert decoder.poll(t + 1) is None  # once
    t += 1
    for bit in second[:10]:
        decoder.bit(bit, t)
        t += 0.002
    # the reader stalls mid-frame: the half frame is rejected, not glued onto the next
    t += 0.1
    ended = [decoder.bit(bit, t + n * 0.002) for n, bit in enumerate(second)]
    assert ended[0] is None and decoder.rejected == 1
    assert decoder.poll(t + 1) == str(0x12345678)
    for n in range(200):  # line noise: an endless burst is rejected, memory bounded
        decoder.bit(n % 2, t + 2 + n * 0.001)
    assert decoder.poll(t + 5) is None and decoder.rejected == 2


def test_wiegand_reader_on_gpiozero_mock_pins_calls_factor_enter_with_the_card() -> None:
    gpiozero = pytest.importorskip("gpiozero")
    from gpiozero.pins.mock import MockFactory

    from edge_agent.wiegand import WiegandReader

    previous = gpiozero.Device.pin_factory
    gpiozero.Device.pin_factory = MockFactory()
    got: list[tuple[str, str]] = []
    try:
        inputs = EdgeConfig().inputs
        inputs.wiegand_d0_pin, inputs.wiegand_d1_pin = 5, 6  # as [inputs] configures it for the agent
        (reader,) = make_factor_readers(inputs, lambda kind, value: got.append((kind, value)))
        assert isinstance(reader, WiegandReader) and reader.decoder.gap_s == 0.025
        d0, d1 = gpiozero.Device.pin_factory.pin(5), gpiozero.Device.pin_factory.pin(6)
        reader.start()
        good = frame(77 << 16 | 4242, 26)
        for bits in (good, [*good[:-1], 1 - good[-1]], frame(0xCAFEF00D, 34)):
            for bit in bits:
                line = d1 if bit else d0
                line.drive_low()  # the pulse
                line.drive_high()
                time.sleep(0.001)
            time.sleep(0.1)  # the gap ends the frame
        reader.close()
    finally:
        gpiozero.Device.pin_factory = previous
    assert got == [("card", str(77 << 16 | 4242)), ("card", str(0xCAFEF00D))]  # the bad-parity one dropped
    assert reader.decoder.rejected == 1
