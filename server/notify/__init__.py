"""Notifiers for alert transitions: Alertmanager API v2, a generic webhook, and the dispatcher."""

from server.notify._alertmanager import AlertmanagerNotifier
from server.notify._dispatcher import Dispatcher, Notifier
from server.notify._webhook import WebhookNotifier

__all__ = ["AlertmanagerNotifier", "Dispatcher", "Notifier", "WebhookNotifier"]
