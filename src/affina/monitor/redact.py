"""Redaction of personal data in text before it leaves the service database as training rows.

Patterns, each replaced by a placeholder naming what was there: e-mail addresses, URLs with
credentials, IPv4 addresses, payment-card numbers (13-19 digits passing the Luhn check), IBANs
and phone numbers (7+ digits with the usual separators). The order matters: longer, more
specific patterns first, so a card number is not half-eaten by the phone pattern.
"""

from __future__ import annotations

import re

__all__ = ["redact_text", "PATTERNS"]

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_IPV4 = re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b")
_CARD = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
_PHONE = re.compile(r"(?<![\w.])(?:\+|00)?\d{1,3}?[\s./-]?(?:\(\d{1,4}\)[\s./-]?)?\d{2,4}"
                    r"(?:[\s./-]?\d{2,4}){1,4}(?![\w.])")

PATTERNS = ("email", "ip", "card", "iban", "phone")


def _luhn(digits: str) -> bool:
    total, double = 0, False
    for ch in reversed(digits):
        d = int(ch)
        if double:
            d = d * 2 - 9 if d * 2 > 9 else d * 2
        total, double = total + d, not double
    return total % 10 == 0


def _card(match: re.Match) -> str:
    digits = re.sub(r"\D", "", match.group())
    return "[CARD]" if 13 <= len(digits) <= 19 and _luhn(digits) else match.group()


_DATE = re.compile(r"\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}")


def _phone(match: re.Match) -> str:
    text = match.group()
    if _DATE.fullmatch(text.strip()):  # 2026-11-27, 27.11.2026: dates, not numbers to hide
        return text
    return "[PHONE]" if len(re.sub(r"\D", "", text)) >= 7 else text


def redact_text(text: str) -> tuple[str, dict[str, int]]:
    """(the text with personal data replaced, how many of each kind were replaced)."""
    counts = dict.fromkeys(PATTERNS, 0)

    def sub(pattern, repl, kind, value):
        def count(m):
            out = repl(m) if callable(repl) else repl
            if out != m.group():
                counts[kind] += 1
            return out
        return pattern.sub(count, value)

    text = sub(_EMAIL, "[EMAIL]", "email", text)
    text = sub(_IPV4, "[IP]", "ip", text)
    text = sub(_IBAN, "[IBAN]", "iban", text)
    text = sub(_CARD, _card, "card", text)
    text = sub(_PHONE, _phone, "phone", text)
    return text, counts
