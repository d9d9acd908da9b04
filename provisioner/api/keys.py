"""Typed application state."""

from __future__ import annotations

from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from provisioner.clock import Clock
from provisioner.mail.compose import Composer
from provisioner.service.unit import Policy
from provisioner.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", AsyncConnectionPool)
CLOCK: web.AppKey[Clock] = web.AppKey("clock")
COMPOSER = web.AppKey("composer", Composer)
POLICY = web.AppKey("policy", Policy)
