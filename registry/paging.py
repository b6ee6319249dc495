"""Pages of the inspection lists (pure), as AIP-158 has them: `page_size` is a maximum (0: the
default, above the maximum: the maximum), a page also ends before its messages outgrow a byte
budget, and `next_page_token` is opaque: the sort key of the last item sent and a digest of the
filters it belongs to, so a token used with other filters, or made up, is refused with a sentence.

Items are sorted by a unique string key and a page continues after the last key sent: items that
come or go between two pages never make another item appear twice or go missing."""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from operator import itemgetter
from typing import TypeVar

from wire.errors import InvalidRequest

DEFAULT_PAGE_SIZE = 500
MAX_PAGE_SIZE = 1000

T = TypeVar("T")
M = TypeVar("M")


@dataclass(frozen=True, slots=True)
class PageRequest:
    size: int
    after: str | None  # the sort key to continue after; None: from the start
    query: str  # digest of the filters


def query_digest(filters: bytes) -> str:
    return hashlib.sha256(filters).hexdigest()[:16]


def page_request(page_size: int, page_token: str, filters: bytes, what: str) -> PageRequest:
    """The page a List call asks for; InvalidRequest for a negative size or a token that is not ours
    or was made for other filters."""
    if page_size < 0:
        raise InvalidRequest(f"page_size of {what} must not be negative, got {page_size}")
    size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    query = query_digest(filters)
    if not page_token:
        return PageRequest(size, None, query)
    try:
        token = json.loads(base64.urlsafe_b64decode(page_token.encode()))
        after, made_for = token["after"], token["query"]
    except (ValueError, binascii.Error, KeyError, TypeError):
        raise InvalidRequest(f"page_token of {what} is not one this registry gave out") from None
    if not isinstance(after, str) or made_for != query:
        raise InvalidRequest(f"page_token of {what} belongs to a list with other filters: ask again without a token")
    return PageRequest(size, after, query)


def page_token(after: str, query: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": after, "query": query}).encode()).decode()


def take_page(keyed: Iterable[tuple[str, T]], convert: Callable[[T], M], cost: Callable[[M], int],
              request: PageRequest, budget: int) -> tuple[list[M], str]:
    """The items after the request's cursor in key order (`keyed`: (unique sort key, item) in any
    order), converted, at most `request.size` of them and, past the first, no more than `budget` in
    total `cost`; and the token of the next page ("" if this is the last). Only a page's worth is
    sorted: a page costs one pass over the items, not a sort of them all."""
    after = request.after
    remaining = keyed if after is None else ((k, item) for k, item in keyed if k > after)
    candidates = heapq.nsmallest(request.size + 1, remaining, key=itemgetter(0))
    page: list[M] = []
    used = 0
    for index, (k, item) in enumerate(candidates[:request.size]):
        message = convert(item)
        used += cost(message)
        if page and used > budget:
            return page, page_token(candidates[index - 1][0], request.query)
        page.append(message)
    more = len(candidates) > request.size
    return page, page_token(candidates[len(page) - 1][0], request.query) if more else ""
