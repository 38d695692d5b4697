"""Routing: the dialplan now; route tables computed from the link-state DB later."""

from overlay.config import DialplanRule, DnsTarget, StaticTarget

from ._dialplan import Dialplan, DialplanMatch

__all__ = ["Dialplan", "DialplanMatch", "DialplanRule", "DnsTarget", "StaticTarget"]
