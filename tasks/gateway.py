"""What a flow that posts to the gateway does about the gateway's outages: one call.

Every post to `/log` goes through `observer.upstream.Upstreams.post_log`, which keeps the outage
record (`GatewayOutage`). A scheduled run of such a flow calls `gateway_outage()` as its first step
(after its nothing-new check) and again with the error when a post failed; runs made by hand
always try and fail as before, so an operator sees what the gateway says.
"""

from __future__ import annotations

from typing import Protocol

from prefect.context import FlowRunContext
from prefect.states import Completed, State

from observer.errors import NotDelivered
from observer.settings import load_settings
from observer.upstream import GatewayOutage, gateway_is_down


def gateway_outage(failed: BaseException | None = None) -> State | None:
    """The state a scheduled run ends in while the gateway is down, or None to go on (or, after
    a failure, to fail as usual).

    Before posting (`failed` None): the gateway known down and its back-off not over; the worker
    settles most such runs before they start, this covers the others. After a post failed (its
    error): a failure that says the gateway is down. Either way the run ends Completed with a
    message starting `gateway down:`, nothing delivered and nothing marked, so the first run
    after the gateway is back delivers it all; a refused entry (a 4xx) still fails the run.
    """
    context = FlowRunContext.get()
    if context is None or context.flow_run is None or not context.flow_run.auto_scheduled:
        return None
    if failed is not None and not gateway_is_down(failed):
        return None
    reason = GatewayOutage.read(load_settings()).wait_reason()
    if reason is None:
        return None
    delivered = "" if failed is None else "; this run delivered nothing, the next one will"
    return Completed(message=f"{reason}{delivered}")


class Delivering(Protocol):
    """A run's report that knows whether its posts reached the gateway."""

    def raise_for_delivery(self) -> None: ...


def settle_delivery(report: Delivering) -> State | None:
    """After the artifacts: None when every post reached the gateway; for a scheduled run whose
    posts found the gateway down, the `gateway down:` state to end in; else the `NotDelivered`
    is raised, and the run fails visibly."""
    try:
        report.raise_for_delivery()
    except NotDelivered as failed:
        if settled := gateway_outage(failed):
            return settled
        raise
    return None
