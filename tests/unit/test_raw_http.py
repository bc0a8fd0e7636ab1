"""The raw HTTP parser the protocol tests and the fuzzer count answers with."""

from tests.support.raw_http import chunked, parse_responses, request


def test_sized_and_chunked_answers_are_read_and_the_rest_left():
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 404 N\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nHTTP/1.1 5"
    answers, rest = parse_responses(data)
    assert [(a.status, a.body) for a in answers] == [(200, b"ok"), (404, b"abc")]
    assert rest == b"HTTP/1.1 5"


def test_an_answer_to_head_has_no_body_whatever_its_length_says():
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nHTTP/1.1 204 No\r\n\r\n"
    answers, rest = parse_responses(data, head_requests=1)
    assert [(a.status, a.body) for a in answers] == [(200, b""), (204, b"")] and rest == b""


def test_requests_are_written_as_given():
    assert request("GET", "/x", [("A", "1"), ("A", "2")], b"b") == b"GET /x HTTP/1.1\r\nA: 1\r\nA: 2\r\n\r\nb"
    assert chunked(b"ab", b"", b"c") == b"2\r\nab\r\n1\r\nc\r\n0\r\n\r\n"
