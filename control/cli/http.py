"""The staff CLI's HTTP client: the API URL and the staff member's own key from the
command line or the settings (``CIZO_SUPPORT_API_URL``, ``CIZO_SUPPORT_API_KEY``)."""

from __future__ import annotations

import argparse

import httpx

from cizo.settings import load_settings
from control.cli.words import cli_locale
from control.fleet.messages import text


def api_client(args: argparse.Namespace, command: str, *,
               timeout_s: float | None = 30) -> httpx.Client:
    st = load_settings()
    key = args.api_key or (st.support_api_key.get_secret_value() if st.support_api_key
                           else None)
    if not key:
        raise SystemExit(text("no_api_key", cli_locale(), command=command))
    url = args.url or st.support_api_url or st.api_base_url
    # the API's error messages come back in the CLI's language
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}",
                                               "Accept-Language": cli_locale()},
                        timeout=timeout_s)


def add_api_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=None, help="API base URL (default: settings)")
    p.add_argument("--api-key", default=None, help="your API key (default: "
                   "CIZO_SUPPORT_API_KEY)")
