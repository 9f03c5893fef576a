"""Office notifications: alarms to people by e-mail and to systems by signed webhook.

- :mod:`headoffice.notify.model`: what a notification is (:class:`Notification`) and the
  ``[notify]`` section of office.toml (:class:`NotifyConfig`);
- :mod:`headoffice.notify.outbox`: the durable queue in the office index (tables
  ``notifications`` and ``deliveries``); :meth:`Outbox.enqueue_in` joins the caller's
  transaction, so an alarm and its notification commit together or not at all;
- :mod:`headoffice.notify.email` and :mod:`headoffice.notify.webhook`: the two senders;
- :mod:`headoffice.notify.dispatcher`: batching, the rate limit, the daily digest and
  retries with back-off (:func:`start_dispatcher` runs it in a thread of ``serve``);
- :mod:`headoffice.notify.cli`: ``linetap-office notify status|test``.

Nothing is imported here, so that :mod:`headoffice.config` can import the model alone.
"""
