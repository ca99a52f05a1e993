"""Monitoring (issue #10): drift of logged inputs against the training data, and realised
performance once actual charges come in. :mod:`~chargecast.monitor.drift` and
:mod:`~chargecast.monitor.performance` are numpy only, so serving may import them for its
gauges; the reports (matplotlib) and the command line are for operators' machines.
"""
