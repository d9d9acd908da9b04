"""Every route of the service, in one place (the OpenAPI document lists the same)."""

from __future__ import annotations

from aiohttp import web

from provisioner.api import confirm, handlers, middleware, system

# Bodies announced with Expect: 100-continue are measured before they are sent.
_EXPECT = middleware.expect_continue


def add_routes(app: web.Application) -> None:
    app.router.add_routes(
        [
            web.get("/healthz", system.healthz),
            web.get("/readyz", system.readyz),
            web.get("/metrics", system.metrics),
            web.get("/openapi.json", system.openapi),
            web.put("/v1/accounts/{customer}", handlers.put_account, expect_handler=_EXPECT),
            web.get("/v1/accounts/{customer}", handlers.get_account),
            web.put("/v1/accounts/{customer}/pbx", handlers.put_pbx, expect_handler=_EXPECT),
            web.get("/v1/accounts/{customer}/pbx", handlers.get_pbx),
            web.delete("/v1/accounts/{customer}/pbx", handlers.delete_pbx),
            web.put(
                "/v1/accounts/{customer}/blocks/{block_id}",
                handlers.put_block,
                expect_handler=_EXPECT,
            ),
            web.get("/v1/accounts/{customer}/blocks", handlers.list_blocks),
            web.get("/v1/accounts/{customer}/usage", handlers.account_usage),
            web.get("/v1/accounts/{customer}/calls", handlers.account_calls),
            web.post("/v1/blocks/{block_id}/mode", handlers.set_block_mode, expect_handler=_EXPECT),
            web.post(
                "/v1/blocks/{block_id}/assignment",
                handlers.create_assignment,
                expect_handler=_EXPECT,
            ),
            web.get("/v1/blocks/{block_id}/assignment", handlers.get_assignment),
            web.delete("/v1/blocks/{block_id}/assignment", handlers.reset_assignment),
            web.get("/v1/assignments/{assignment_id}/events", handlers.assignment_events),
            web.put(
                "/v1/accounts/{customer}/pbx/extensions/{ext}",
                handlers.put_extension,
                expect_handler=_EXPECT,
            ),
            web.delete("/v1/accounts/{customer}/pbx/extensions/{ext}", handlers.delete_extension),
            web.get("/v1/accounts/{customer}/pbx/extensions", handlers.list_extensions),
            web.put(
                "/v1/accounts/{customer}/pbx/blocks/{block_id}",
                handlers.put_used_block,
                expect_handler=_EXPECT,
            ),
            web.put(
                "/v1/accounts/{customer}/pbx/ring-groups/{ext}",
                handlers.put_ring_group,
                expect_handler=_EXPECT,
            ),
            web.delete("/v1/accounts/{customer}/pbx/ring-groups/{ext}", handlers.delete_ring_group),
            web.get("/v1/accounts/{customer}/pbx/ring-groups", handlers.list_ring_groups),
            web.get("/v1/accounts/{customer}/pbx/config", handlers.get_config),
            web.get("/v1/accounts/{customer}/pbx/config/diff", handlers.get_config_diff),
            web.get("/v1/nodes/{node}/check", handlers.check_node),
            web.get("/v1/events", handlers.event_feed),
            web.get("/confirm/{token}", confirm.show),
            web.post("/confirm/{token}", confirm.confirm, expect_handler=_EXPECT),
        ]
    )
