"""Where webhooks may go (pixmill.destinations) and how they are signed (pixmill.signature)."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress

import pytest

from pixmill.destinations import Destinations, WebhookRefused
from pixmill.signature import sign, verify

OPEN = Destinations.allowing(())


@pytest.mark.parametrize("url", ["https://hooks.example.com/pixmill", "http://hooks.example.com:8080/a?b=c",
                                 "https://93.184.215.14/hook", "https://[2606:4700::6810:85e5]/hook",
                                 "https://bücher.example/hook"])
def test_public_urls_and_names_pass_the_url_check(url: str):
    assert OPEN.check_url(f"  {url} ") == url


@pytest.mark.parametrize(("url", "words"), [
    ("http://127.0.0.1:9000/hook", "127.0.0.1 is a loopback address"),
    ("http://[::1]/hook", "::1 is a loopback address"),
    ("http://localhost:8000/hook", "localhost is this machine"),
    ("http://api.localhost/hook", "api.localhost is this machine"),
    ("http://10.0.0.7/hook", "10.0.0.7 is a private address"),
    ("http://192.168.1.20/hook", "192.168.1.20 is a private address"),
    ("http://172.16.4.4/hook", "172.16.4.4 is a private address"),
    ("http://[fd12:3456::1]/hook", "is a private address"),
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a cloud metadata address"),
    ("http://169.254.10.10/", "169.254.10.10 is a link-local address"),
    ("http://[fe80::1]/", "fe80::1 is a link-local address"),
    ("http://[::ffff:127.0.0.1]/", "127.0.0.1 is a loopback address"),
    ("http://0.0.0.0/", "0.0.0.0 is"),
    ("http://224.0.0.1/", "224.0.0.1 is a multicast address"),
    ("ftp://hooks.example.com/", "must be an http or https URL"),
    ("file:///etc/passwd", "must be an http or https URL"),
    ("hooks.example.com/hook", "must be an http or https URL"),
    ("http://user:secret@hooks.example.com/", "may not hold a user name or password"),
    ("http://hooks.example.com:99999/", "is not a URL"),
    ("https://hooks.example.com/" + "a" * 2100, "over 2048 characters"),
])
def test_refused_urls_say_why(url: str, words: str):
    with pytest.raises(WebhookRefused, match="webhook_url") as refused:
        OPEN.check_url(url)
    assert refused.value.status == 400 and refused.value.code == "webhook_refused"
    assert words in refused.value.message
    if "address" in words or "machine" in words:
        assert "PIXMILL_WEBHOOK_ALLOW" in refused.value.message


def test_the_allow_list_takes_hosts_addresses_and_networks():
    allow = Destinations.allowing(["127.0.0.1", "10.20.0.0/16", "Hooks.Internal.", "fd00::/8", " "])
    assert allow.check_url("http://127.0.0.1:8000/h") and allow.check_url("http://10.20.3.4/h")
    assert allow.check_url("http://hooks.internal/h") and allow.check_url("http://[fd00::5]/h")
    with pytest.raises(WebhookRefused, match="10.21.0.1 is a private address"):
        allow.check_url("http://10.21.0.1/h")
    # The connected address decides for a name: allowed names pass whatever they resolve to, others only
    # to public or allowed addresses.
    assert allow.refusal("hooks.internal", ipaddress.ip_address("192.168.0.9")) is None
    assert allow.refusal("other.example", ipaddress.ip_address("10.20.9.9")) is None
    assert "192.168.0.9 is a private address" in allow.refusal("other.example", ipaddress.ip_address("192.168.0.9"))
    assert allow.refusal("other.example", ipaddress.ip_address("::ffff:10.20.1.1")) is None


@pytest.mark.parametrize("entry", ["10.0.0.0/33", "fe80::/129", "a b/c", "('127.0.0.1',)", "*.example.com"])
def test_a_malformed_allow_list_entry_is_an_error_at_start(entry: str):
    with pytest.raises(ValueError, match="PIXMILL_WEBHOOK_ALLOW"):
        Destinations.allowing([entry])


def test_the_signature_is_stripes_scheme_over_the_time_and_the_body():
    body = b'{"event":"job.finished","job":{"id":"abc"}}'
    header = sign("s3cret", body, now=1_800_000_000)
    expected = hmac.new(b"s3cret", b"1800000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1800000000,v1={expected}"
    assert verify("s3cret", body, header, now=1_800_000_100)
    assert not verify("s3cret", body + b" ", header, now=1_800_000_100)           # another body
    assert not verify("other", body, header, now=1_800_000_100)                   # another secret
    assert not verify("s3cret", body, header, now=1_800_000_301)                  # too old: a replay
    assert not verify("s3cret", body, header.replace("t=1800000000", "t=1800000200"), now=1_800_000_200)
    assert not verify("s3cret", body, None) and not verify("s3cret", body, "v1=abc") and not verify("s", body, "t=x")
    assert verify("s3cret", body, f"t=1800000000,v1=00ff,v1={expected}", now=1_800_000_000)   # rolled secrets
