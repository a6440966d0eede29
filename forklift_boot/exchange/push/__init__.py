"""Pushing cached images to a registry, so that a fleet shares one copy: `cache push`."""

from forklift_boot.exchange.push.plan import PushPlan, cached_as_wanted, plan_push
from forklift_boot.exchange.push.pusher import push_images
from forklift_boot.exchange.push.report import PUSHED, PushCounts, PushReport

__all__ = [
    "PUSHED",
    "PushCounts",
    "PushPlan",
    "PushReport",
    "cached_as_wanted",
    "plan_push",
    "push_images",
]
