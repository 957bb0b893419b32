"""Secrets never leave through URIs we format or log records that quote them."""

from __future__ import annotations

import logging

import pytest

from shared.redaction import RedactingFilter, redact_text, redact_uri

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwczovL29zc3JkYm1zIn0.c2lnbmF0dXJlLXBhcnQ"


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("mongodb://admin:s3cret@h1:27017,h2/db?tls=true", "mongodb://admin:***@h1:27017,h2/db?tls=true"),
        (
            "mongodb+srv://admin:p%40ss@c.mongocluster.cosmos.azure.com/",
            "mongodb+srv://admin:***@c.mongocluster.cosmos.azure.com/",
        ),
        (
            "mongodb://h/?tlsCertificateKeyFilePassword=pw&appname=x",
            "mongodb://h/?tlsCertificateKeyFilePassword=***&appname=x",
        ),
        ("mongodb://justuser@h/", "mongodb://justuser@h/"),
        ("mongodb://h:27017/", "mongodb://h:27017/"),
    ],
)
def test_redact_uri_should_mask_password_and_secret_options_only(uri, expected):
    assert redact_uri(uri) == expected


def test_redact_text_should_mask_uris_tokens_and_key_values_inside_free_text():
    text = f"failed for mongodb://u:hunter2@h/ with {JWT}; AccountKey=abc123== password: pw9"
    cleaned = redact_text(text)
    for secret in ("hunter2", JWT, "abc123==", "pw9"):
        assert secret not in cleaned
    assert "mongodb://u:***@h/" in cleaned


def test_redacting_filter_should_scrub_messages_and_exception_text():
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "uri %s token %s", ("mongodb://a:b@h", JWT), None)
    try:
        raise ValueError(f"bad {JWT}")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    assert RedactingFilter().filter(record) is True
    formatted = logging.Formatter().format(record)
    assert JWT not in formatted
    assert "a:b@" not in formatted
