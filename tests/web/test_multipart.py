"""The streaming multipart parser: parts, names and data in order, whatever the reads; limits; malformed bodies."""

from __future__ import annotations

import os

import pytest

from pixmill.errors import InvalidRequest
from pixmill.web.multipart import MAX_HEADER_BYTES, MAX_PART_HEADERS, Data, End, Part, events

BOUNDARY = b"pixmill-test-boundary"
# Bytes that look like the start of a delimiter, to catch a parser that cuts a part at a near miss.
TRICKY = b"\r\n--pixmill-test-boundar\r\n--\r\n\r\n" + bytes(range(256)) + b"--pixmill-test-boundary-not\r"


def body(parts: list[tuple[str, str | None, bytes]], boundary: bytes = BOUNDARY, extra_headers: bytes = b"") -> bytes:
    """A multipart/form-data body as browsers write it."""
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += (b"--" + boundary + b"\r\nContent-Disposition: " + disposition.encode() + b"\r\n" + extra_headers
                + b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n")
    return out + b"--" + boundary + b"--\r\n"


def reader(chunks: list[bytes]):
    """A read() that hands out the chunks, then b"" for ever; it counts its calls."""
    remaining = list(chunks)

    def read() -> bytes:
        read.calls += 1
        return remaining.pop(0) if remaining else b""

    read.calls = 0
    return read


def pieces(raw: bytes, size: int) -> list[bytes]:
    return [raw[i:i + size] for i in range(0, len(raw), size)]


def parse(chunks: list[bytes], boundary: bytes = BOUNDARY) -> list[tuple[str, str | None, bytes]]:
    """(name, filename, data) of each part, checking the order of the events on the way."""
    parts: list[tuple[str, str | None, bytes]] = []
    current: bytearray | None = None
    seen_end = False
    for event in events(reader(chunks), boundary):
        assert not seen_end, "an event after End"
        if isinstance(event, Part):
            assert current is None, "a part began inside another"
            parts.append((event.name, event.filename, b""))
            current = bytearray()
        elif isinstance(event, Data):
            assert current is not None, "data outside a part"
            current += event.data
            if not event.more_data:
                assert event.data == b""
                parts[-1] = parts[-1][:2] + (bytes(current),)
                current = None
        else:
            assert isinstance(event, End) and current is None
            seen_end = True
    assert seen_end
    return parts


def refused(chunks: list[bytes], boundary: bytes = BOUNDARY) -> str:
    with pytest.raises(InvalidRequest) as caught:
        list(events(reader(chunks), boundary))
    assert caught.value.status == 400
    return caught.value.message


PARTS = [("files", "a.png", b"\x89PNG" + os.urandom(3000)), ("files", "b c.jpg", TRICKY),
         ("pipeline", None, b"grayscale | blur"), ("files", "empty.png", b""), ("quality", None, b"85")]


def test_parts_come_with_their_names_filenames_and_data_in_order():
    assert parse([body(PARTS)]) == PARTS


def test_each_part_begins_then_its_data_then_its_end():
    kinds = [type(e).__name__ for e in events(reader([body(PARTS[2:3])]), BOUNDARY)]
    assert kinds == ["Part", "Data", "Data", "End"]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 4096])
def test_reads_of_any_size_give_the_same_parts(size):
    assert parse(pieces(body(PARTS), size)) == PARTS


def test_a_body_split_in_two_at_every_offset_gives_the_same_parts():
    raw = body([("files", "x.bin", TRICKY), ("pipeline", None, b"blur")])
    expected = [("files", "x.bin", TRICKY), ("pipeline", None, b"blur")]
    for cut in range(1, len(raw)):
        assert parse([raw[:cut], raw[cut:]]) == expected, cut


@pytest.mark.parametrize(("disposition", "name", "filename"), [
    (b'form-data; name="files"; filename="photo.png"', "files", "photo.png"),
    (b"form-data; name=files; filename=photo.png", "files", "photo.png"),
    (b'form-data; name="files"; filename="caf\xc3\xa9 \xe5\x90\x8d.png"', "files", "caf\u00e9 \u540d.png"),
    (b'form-data; name="files"; filename="../../etc/passwd"', "files", "../../etc/passwd"),
    (b'form-data; name="files"; filename=""', "files", ""),
    (b'form-data; name="pipeline"', "pipeline", None),
    (b"form-data", "", None),
    (b'FORM-DATA; NAME="files"', "files", None),
])
def test_names_and_filenames_are_read_from_the_content_disposition(disposition, name, filename):
    raw = b"--" + BOUNDARY + b"\r\ncontent-disposition: " + disposition + b"\r\n\r\ndata\r\n--" + BOUNDARY + b"--\r\n"
    [part] = parse([raw])
    assert part == (name, filename, b"data")


def test_nothing_is_read_after_the_closing_boundary():
    read = reader([body(PARTS[:1]), b"ignored: more than the body", b"and more"])
    assert isinstance(list(events(read, BOUNDARY))[-1], End)
    assert read.calls == 1


def test_an_epilogue_in_the_same_read_is_ignored():
    assert parse([body(PARTS[:2]) + b"trailing junk, not a part\r\n--" + BOUNDARY + b"--\r\n"]) == PARTS[:2]


def test_a_long_boundary_and_one_of_the_allowed_characters_work():
    boundary = b"'()+_,-./:=?" + b"b" * 58
    assert parse(pieces(body(PARTS, boundary), 5), boundary) == PARTS


# ---- limits

def test_a_part_may_have_up_to_the_maximum_number_of_headers():
    extra = b"".join(b"X-Extra-%d: %d\r\n" % (i, i) for i in range(MAX_PART_HEADERS - 2))
    assert parse([body(PARTS[:1], extra_headers=extra)]) == PARTS[:1]


def test_too_many_headers_in_a_part_are_refused():
    extra = b"".join(b"X-Extra-%d: %d\r\n" % (i, i) for i in range(MAX_PART_HEADERS + 1))
    message = refused([body(PARTS[:1], extra_headers=extra)])
    assert "malformed" in message and "header" in message.lower()


def test_a_header_up_to_the_size_limit_is_read_and_a_longer_one_refused():
    name = "n" * (MAX_HEADER_BYTES // 2) + ".png"
    assert parse([body([("files", name, b"x")])]) == [("files", name, b"x")]
    message = refused(pieces(body([("files", "n" * MAX_HEADER_BYTES + ".png", b"x")]), 1000))
    assert "malformed" in message and "header" in message.lower() and "size" in message.lower()


def test_a_boundary_over_the_parser_limit_is_refused():
    message = refused([body(PARTS, b"b" * 300)], b"b" * 300)
    assert "malformed" in message and "300" in message


def test_a_field_over_its_limit_is_refused_naming_the_field(client):
    raw = body([("pipeline", None, b"blur | " * 4000), ("files", "a.png", b"x")])
    response = client.post("/api/v1/jobs", data=raw, content_type=f"multipart/form-data; boundary={BOUNDARY.decode()}")
    assert response.status_code == 400
    message = response.get_json()["message"]
    assert "'pipeline'" in message and "16" in message and "limit" in message


# ---- malformed bodies

@pytest.mark.parametrize(("raw", "words"), [
    (b"", "ends before its closing boundary"),
    (body(PARTS)[:-len(BOUNDARY) - 6], "ends before its closing boundary"),
    (body(PARTS)[:40], "ends before its closing boundary"),
    (b"--" + BOUNDARY + b"\r\nContent-Disposition: form-data; name=a\r\n\r\nno end", "ends before"),
    (b"this is not multipart at all", "malformed"),
    (b"--other-boundary\r\nContent-Disposition: form-data; name=a\r\n\r\nx\r\n--other-boundary--\r\n", "malformed"),
    (b"--" + BOUNDARY + b"\r\nX-Only: 1\r\n\r\nx\r\n--" + BOUNDARY + b"--\r\n", "no Content-Disposition"),
    (b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="a"; filename="\xff\xfe.png"\r\n\r\nx\r\n--'
     + BOUNDARY + b"--\r\n", "not UTF-8"),
    (b"--" + BOUNDARY + b"\r\nContent-Disposition form-data\r\n\r\nx\r\n--" + BOUNDARY + b"--\r\n", "malformed"),
])
def test_a_malformed_body_is_an_invalid_request_that_says_so(raw, words):
    message = refused([raw])
    assert message.startswith("the multipart body is malformed") and words in message, message


def test_a_malformed_body_is_refused_whatever_the_reads():
    raw = b"--" + BOUNDARY + b"\r\nX-Only: 1\r\n\r\nx\r\n--" + BOUNDARY + b"--\r\n"
    for size in (1, 3, 16):
        assert "no Content-Disposition" in refused(pieces(raw, size))
