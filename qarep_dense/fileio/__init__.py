"""Small file utilities of the bottom layer (standard library only): atomic writes, and the one ownership
rule every writer follows (:mod:`.ownership`: claim a path, seal what was written)."""
from .atomic import sha256_file, write_json_atomic, write_text_atomic
from .ownership import RECORD, Claim, ClaimError, claim, claim_file, sealed

__all__ = ["RECORD", "Claim", "ClaimError", "claim", "claim_file", "sealed", "sha256_file", "write_json_atomic",
           "write_text_atomic"]
