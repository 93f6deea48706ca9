"""Devices and recordings: every source yields time-major ``(n_times, n_channels)``
chunks in microvolts, with timestamps, channel names, the sampling rate and counters
of what went wrong.
"""
