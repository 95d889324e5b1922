"""The transport-free data plane between the gRPC face and scheduling.

:mod:`.plane` answers each computing RPC with one call (version, checks,
limits, reply plan, batching hand-off), :mod:`.reply_plan` holds the one
reply-size check, and :mod:`.shared_memory` reads and writes callers'
registered regions. Nothing here imports gRPC (``tests/test_layout.py``).
"""

from .plane import Answer, DataPlane
from .reply_plan import Encoding, ReplyPlan

__all__ = ["Answer", "DataPlane", "Encoding", "ReplyPlan"]
