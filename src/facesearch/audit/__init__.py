"""The append-only, hash-chained audit trail and its verifier (see ``audit.log``)."""
from facesearch.audit.chain import GENESIS_HASH
from facesearch.audit.log import (AuditAction, AuditLog, AuditOutcome, AuditRecord, ChainHead,
                                  VerifyReport)

__all__ = ["AuditAction", "AuditLog", "AuditOutcome", "AuditRecord", "ChainHead", "GENESIS_HASH",
           "VerifyReport"]
