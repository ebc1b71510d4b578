"""Notifiers for alert transitions: Alertmanager API v2, a generic webhook, and the dispatcher."""

from spikewatch.server.notify._alertmanager import AlertmanagerNotifier
from spikewatch.server.notify._dispatcher import Dispatcher, Notifier, Retry
from spikewatch.server.notify._webhook import WebhookNotifier

__all__ = ["AlertmanagerNotifier", "Dispatcher", "Notifier", "Retry", "WebhookNotifier"]
