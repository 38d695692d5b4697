"""Time parse + serialize of a typical INVITE and 200 OK: the proxy's per-message hot path.

Run: ``python bench/sip_parse.py``. Prints the median of several timeit repeats, in µs per
operation. Budget (DESIGN.md): >1,500 calls/s with about 12 messages per call, so the INVITE
should parse in <= 25 µs and serialise in <= 10 µs.
"""

from __future__ import annotations

import statistics
import timeit

from overlay.sip import parse_message_untrusted, serialize

_SDP = (
    b"v=0\r\n"
    b"o=alice 2890844526 2890844526 IN IP4 198.51.100.10\r\n"
    b"s=-\r\n"
    b"c=IN IP4 198.51.100.10\r\n"
    b"t=0 0\r\n"
    b"m=audio 49170 RTP/AVP 0 8 97 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:97 iLBC/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-15\r\n"
    b"a=ptime:20\r\n"
    b"a=sendrecv\r\n"
)

INVITE = (
    b"INVITE sip:+15551230001@pbx.example.com;user=phone SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 198.51.100.10:5060;branch=z9hG4bK776asdhds;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b'From: "Alice Liddell" <sip:+15559870002@carrier.example.net>;tag=1928301774\r\n'
    b"To: <sip:+15551230001@pbx.example.com;user=phone>\r\n"
    b"Call-ID: a84b4c76e66710@pc33.carrier.example.net\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:+15559870002@198.51.100.10:5060;transport=udp>\r\n"
    b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, PRACK, UPDATE, REFER, NOTIFY\r\n"
    b"Supported: replaces, timer, 100rel\r\n"
    b"User-Agent: ExampleGateway/4.2\r\n"
    b"Session-Expires: 1800;refresher=uac\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(_SDP)).encode() + b"\r\n"
    b"\r\n" + _SDP
)

OK_200 = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bK-overlay-1a2b3c;received=203.0.113.5\r\n"
    b"Via: SIP/2.0/UDP 198.51.100.10:5060;branch=z9hG4bK776asdhds;rport=5060\r\n"
    b'From: "Alice Liddell" <sip:+15559870002@carrier.example.net>;tag=1928301774\r\n'
    b"To: <sip:+15551230001@pbx.example.com;user=phone>;tag=a6c85cf\r\n"
    b"Call-ID: a84b4c76e66710@pc33.carrier.example.net\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:+15551230001@192.0.2.4:5060>\r\n"
    b"Record-Route: <sip:us-east-1.overlay.example.com;lr>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(_SDP)).encode() + b"\r\n"
    b"\r\n" + _SDP
)


def _median_us(stmt: object, number: int, repeat: int = 7) -> float:
    times = timeit.repeat(stmt, number=number, repeat=repeat)  # type: ignore[arg-type]
    return statistics.median(times) / number * 1e6


def main() -> None:
    number = 20_000
    print(f"INVITE: {len(INVITE)} bytes; 200 OK: {len(OK_200)} bytes")
    for name, data in (("INVITE", INVITE), ("200 OK", OK_200)):
        message = parse_message_untrusted(data)
        assert serialize(parse_message_untrusted(serialize(message))) == serialize(message)
        parse_us = _median_us(lambda data=data: parse_message_untrusted(data), number)
        serialize_us = _median_us(lambda message=message: serialize(message), number)
        print(f"{name:7} parse {parse_us:6.2f} µs/op   serialize {serialize_us:6.2f} µs/op")


if __name__ == "__main__":
    main()
