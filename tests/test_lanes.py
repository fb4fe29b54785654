"""The test lanes are what they claim to be (tox.ini, tools/i386-root).

The i386 lane exists to catch 32-bit and Debian-stable problems; if it silently ran on a
64-bit interpreter or on PyPI's newest libraries it would catch nothing. These tests pin
what each lane runs on.
"""

from __future__ import annotations

import os
import struct
import sys
import time

import pytest

I386 = os.environ.get("META1_LANE") == "i386"


@pytest.mark.skipif(not I386, reason="i386 lane only")
def test_i386_lane_is_32_bit_cpython_with_debian_stable_libraries() -> None:
    import cryptography
    import dns.version
    import pyparsing

    assert struct.calcsize("P") == 4
    assert sys.version_info[:2] == (3, 11)
    assert pyparsing.__version__.startswith("3.0.")
    assert cryptography.__version__.startswith("38.")
    assert dns.version.version.startswith("2.3.")


@pytest.mark.skipif(not I386, reason="i386 lane only")
def test_i386_lane_has_the_2038_hazard_the_code_must_avoid() -> None:
    # bookworm i386 has a 32-bit time_t: the platform's time conversions fail after
    # 2038-01-19. Code that keeps times as 64-bit integers must not call them.
    with pytest.raises(OverflowError):
        time.gmtime(2**31)


def test_every_lane_is_python_3_11_or_newer() -> None:
    assert sys.version_info >= (3, 11)
