"""The dashboard's texts in one language, from the message catalogs (cizo/locale)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request

from cizo.i18n import LOCALES, texts
from control.api.errors import request_locale

router = APIRouter(tags=["dashboard"])


@router.get("/i18n/{page}", include_in_schema=False)
def page_texts(request: Request, page: Literal["dashboard"],
               lang: str | None = None) -> dict[str, Any]:
    """The page's msgid -> text in ``lang`` (the page's FR/EN switch), else in the language
    the caller's Accept-Language gets; public like the page itself: no data, only wording."""
    locale = lang if lang in LOCALES else request_locale(request)
    return {"locale": locale, "locales": list(LOCALES), "messages": texts(locale, page)}
