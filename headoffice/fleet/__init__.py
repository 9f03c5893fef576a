"""Fleet health at the head office (issue 18): device telemetry in, alarms with a
lifecycle, the ``linetap-office fleet`` command, the web's Fleet page and Prometheus
metrics.

- :mod:`headoffice.fleet.config`: ``[fleet]`` in office.toml (every threshold);
- :mod:`headoffice.fleet.telemetry`: the status document a device publishes, parsed
  within bounds (a hostile device's bytes);
- :mod:`headoffice.fleet.state`: the index tables (latest state, hourly rollups, alarms);
- :mod:`headoffice.fleet.rules`: pure rules, facts in, the conditions that hold now out;
- :mod:`headoffice.fleet.alarms`: the lifecycle raised → acknowledged → cleared, damped,
  deduplicated, each step a ledger leaf (and a notification);
- :mod:`headoffice.fleet.ingest`: one status message in (no MQTT in it), and the
  periodic tick;
- :mod:`headoffice.fleet.runner`: the ingest, its ticker and the notification
  dispatcher inside ``linetap-office serve``;
- :mod:`headoffice.fleet.view`: what the command line and the web show;
- :mod:`headoffice.fleet.metrics`: the Prometheus collector.
"""
