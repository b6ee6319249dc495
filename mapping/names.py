"""What a name may be, checked at every edge (config files, CLI flags, gRPC requests). Pure.

Names become etcd key segments and log fields, so they are short and plain: a letter or digit,
then letters, digits, '.', '_' or '-', at most MAX_NAME_LEN characters. No '/', which separates
key segments, and nothing a terminal or a log parser would read as structure.
"""

from __future__ import annotations

import re

MAX_NAME_LEN = 63  # a DNS label's limit: host ids often are host names
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_name(what: str, value: str) -> str:
    """`value` if it is a valid name, else ValueError with a sentence naming `what` (e.g. "host id")."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} is empty")
    if len(value) > MAX_NAME_LEN:
        raise ValueError(f"{what} is {len(value)} characters long; the limit is {MAX_NAME_LEN}")
    if not _NAME.fullmatch(value):
        raise ValueError(f"{what} {value[:MAX_NAME_LEN]!r} may hold only letters, digits, '.', '_' and '-', "
                         "starting with a letter or digit")
    return value
