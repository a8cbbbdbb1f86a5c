"""Tests of deploy/: the shipped systemd unit and nginx site, run by the real programs."""
