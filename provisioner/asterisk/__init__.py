"""Asterisk: the output folder, AMI (the only place that imports panoramisk), and apply."""
