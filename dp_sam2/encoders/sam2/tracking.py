"""Tracking logic of SAM2Base (memory conditioning, memory encoding, track_step)."""


class SAM2TrackingMixin:
    """Placeholder until the video work lands."""
