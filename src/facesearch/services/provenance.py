"""The provenance guard at ingest: no images from social networks or general web pages unless
a court order or warrant covers them.

Untargeted scraping of faces from the web is what this product refuses to be (the EU AI Act
bans building face databases that way). A row whose source URI points at a social network,
video platform or similar host is refused, unless its legal basis names a court order or a
warrant, whose reference is then recorded with the image.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

# Hosts of social networks, video and photo platforms and people-search sites, matched on the
# registered domain and every sub-domain. Maintained here; extend it as platforms appear.
SOCIAL_HOSTS: frozenset[str] = frozenset({
    "facebook.com", "fb.com", "fbcdn.net", "instagram.com", "cdninstagram.com", "threads.net",
    "linkedin.com", "licdn.com", "venmo.com", "youtube.com", "youtu.be", "ytimg.com",
    "x.com", "twitter.com", "twimg.com", "t.co", "tiktok.com", "tiktokcdn.com", "vk.com", "vk.ru",
    "userapi.com", "ok.ru", "snapchat.com", "pinterest.com", "pinimg.com", "reddit.com", "redd.it",
    "tumblr.com", "flickr.com", "staticflickr.com", "weibo.com", "weibo.cn", "douyin.com",
    "bilibili.com", "telegram.org", "t.me", "whatsapp.com", "discord.com", "discordapp.com",
    "mastodon.social", "bsky.app", "onlyfans.com", "patreon.com", "twitch.tv", "vimeo.com",
    "dailymotion.com", "tinder.com", "bumble.com", "badoo.com", "myspace.com", "quora.com",
    "medium.com", "imgur.com", "500px.com", "deviantart.com", "classmates.com", "peoplefinders.com",
    "spokeo.com", "pimeyes.com",
})

# A court order or warrant reference in the legal basis, e.g. "warrant 2026-W-0042",
# "court order no. 12/345", "search warrant #A-17".
_WARRANT = re.compile(
    r"\b(?:search\s+)?(?:warrant|court\s+order|judicial\s+order|subpoena)\b"
    r"[\s:#.]*(?:no\.?|number|nr\.?|ref\.?)?[\s:#.]*([A-Za-z0-9][A-Za-z0-9/_.\-]{1,60})",
    re.IGNORECASE,
)

SOCIAL_SOURCE = "social_network_source"


@dataclass(frozen=True)
class ProvenanceDecision:
    allowed: bool
    host: str | None = None
    warrant_ref: str | None = None
    reason: str | None = None


def source_host(source_uri: str | None) -> str | None:
    if not source_uri:
        return None
    uri = source_uri.strip()
    parts = urlsplit(uri if "://" in uri else f"//{uri}")
    host = (parts.hostname or "").strip(".").lower()
    return host or None


def is_social_host(host: str | None) -> bool:
    if not host:
        return False
    labels = host.split(".")
    return any(".".join(labels[i:]) in SOCIAL_HOSTS for i in range(len(labels) - 1))


def warrant_reference(legal_basis: str | None) -> str | None:
    m = _WARRANT.search(legal_basis or "")
    return m.group(0).strip() if m else None


def check_source(source_uri: str | None, legal_basis: str | None) -> ProvenanceDecision:
    host = source_host(source_uri)
    if not is_social_host(host):
        return ProvenanceDecision(True, host)
    ref = warrant_reference(legal_basis)
    if ref:
        return ProvenanceDecision(True, host, ref)
    return ProvenanceDecision(
        False, host, None,
        f"source {host} is a social network or web platform: refused unless the legal basis names a "
        "court order or warrant (e.g. 'warrant 2026-W-0042')")
