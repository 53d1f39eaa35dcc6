"""The shop app; loading it loads a big application's worth of memory (the ballast)."""

from __future__ import annotations

import os

from django.apps import AppConfig

# What a big Django project holds once loaded (code, tables, caches), simulated by a few large
# buffers: every pool worker forked from the zygote shares them copy-on-write.
BALLAST: list[bytes] = []
BALLAST_CHUNK_BYTES = 16 * 1024 * 1024


class ShopConfig(AppConfig):
    name = "shop"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        size = int(os.environ.get("SHOP_BALLAST_MB", "80")) * 1024 * 1024
        while size > 0:
            # Each byte written (not calloc's untouched zero pages), so each page is resident.
            BALLAST.append(bytes([len(BALLAST) + 1]) * min(size, BALLAST_CHUNK_BYTES))
            size -= BALLAST_CHUNK_BYTES
